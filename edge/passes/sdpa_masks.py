"""Boolean attention masks that a forward builds from constants, resolved before ExecuTorch lowers SDPA.

Why. transformers' DETR builds its key-padding mask from ``torch.ones`` of the image's feature map (no pixel
mask given) and hands ``scaled_dot_product_attention`` a boolean mask. PyTorch's SDPA gives a fully masked
row zeros (its "safe" softmax), so ExecuTorch keeps SDPA with a boolean mask in its own decomposition
(``any``/``eq``/``where``/``logical_not`` on portable kernels between XNNPACK calls: DETR lowered to 5 delegate
calls). Once its constants are folded, such a mask is a constant, and a constant can be read:

* every element True: the mask masks nothing and is dropped (exact);
* otherwise it is left as it is, with its reason in the delegation summary (a float mask would differ from
  PyTorch on fully masked rows, and a partial constant mask was not seen in a model yet).
"""
from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten


def _mask_arg(node) -> tuple[Any, str | int | None]:
    """(the mask argument of an SDPA call, where it is: positional index or keyword)."""
    if len(node.args) > 3:
        return node.args[3], 3
    return node.kwargs.get("attn_mask"), "attn_mask" if "attn_mask" in node.kwargs else None


def _constant(program: Any, node) -> torch.Tensor | None:
    """The value of ``node`` when it is a lifted constant or buffer of ``program``, else None."""
    if getattr(node, "op", None) != "placeholder":
        return None
    sig = program.graph_signature
    name = {**sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}.get(node.name)
    known = {**program.constants, **program.state_dict}
    value = known.get(name) if name is not None else None
    return value if isinstance(value, torch.Tensor) else None


def bool_mask_calls(program: Any) -> list:
    """The SDPA calls of ``program`` with a boolean mask."""
    out = []
    for n in program.graph.nodes:
        if n.op == "call_function" and n.target is aten.scaled_dot_product_attention.default:
            mask, _ = _mask_arg(n)
            val = getattr(mask, "meta", {}).get("val")
            if isinstance(val, torch.Tensor) and val.dtype == torch.bool:
                out.append(n)
    return out


def drop_true_masks(program: Any) -> int:
    """Drop the boolean SDPA masks of ``program`` (in place) that are constants with every element True;
    returns how many. Call after folding the constants of a functional program (the masks are then
    placeholders of lifted constants): ExecuTorch's constant propagation does not see the in-place ops of
    the training IR (``keep[:, -1] = False`` is a ``fill_`` nothing reads), and would fold such a mask to
    all True."""
    dropped = 0
    for n in bool_mask_calls(program):
        mask, where = _mask_arg(n)
        value = _constant(program, mask)
        if value is None or not bool(value.all()):
            continue
        if where == 3:
            n.args = (*n.args[:3], None, *n.args[4:])
        else:
            n.kwargs = {**n.kwargs, "attn_mask": None}
        dropped += 1
    if dropped:
        program.graph.eliminate_dead_code()
        program.graph_module.recompile()
    return dropped
