"""Boolean attention masks that a forward builds from constants, resolved before ExecuTorch lowers SDPA.

Why. transformers' DETR builds its key-padding mask from ``torch.ones`` of the image's feature map (no pixel
mask given) and hands ``scaled_dot_product_attention`` a boolean mask. PyTorch's SDPA gives a fully masked
row zeros (its "safe" softmax), so ExecuTorch keeps SDPA with a boolean mask in its own decomposition
(``any``/``eq``/``where``/``logical_not`` on portable kernels between XNNPACK calls: DETR lowered to 5 delegate
calls). Once its constants are folded, such a mask is a constant, and a constant can be read:

* every element True: the mask masks nothing and is dropped (exact);
* every query row keeps a key: the additive float mask PyTorch's SDPA adds for it (0 / -inf; exact);
* otherwise (a fully masked row: PyTorch gives it zeros, an additive mask NaN) it is left as it is, and the
  delegation summary says why.
"""
from __future__ import annotations

from typing import Any

import torch

from edge.passes.graph import constant_values

aten = torch.ops.aten


def _mask_arg(node) -> tuple[Any, str | int | None]:
    """(the mask argument of an SDPA call, where it is: positional index or keyword)."""
    if len(node.args) > 3:
        return node.args[3], 3
    return node.kwargs.get("attn_mask"), "attn_mask" if "attn_mask" in node.kwargs else None


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


def resolve_constant_masks(program: Any) -> tuple[int, int]:
    """Resolve the boolean SDPA masks of ``program`` (in place) that are constants; returns (dropped, made
    additive).

    * every element True: the mask masks nothing and is dropped;
    * every query row keeps at least one key: the mask becomes the additive float mask PyTorch's own SDPA
      adds for it (0 where True, -inf where False), which ExecuTorch lowers like any float mask. The same
      numbers: PyTorch's boolean path differs from the additive one only on a fully masked row (zeros instead
      of NaN), and there is none;
    * otherwise (a fully masked row, a mask another op reads too) it is left as it is.

    Call after folding the constants of a functional program (the masks are then placeholders of lifted
    constants): ExecuTorch's constant propagation does not see the in-place ops of the training IR
    (``keep[:, -1] = False`` is a ``fill_`` nothing reads), and would fold such a mask to all True."""
    sig = program.graph_signature
    names = {**sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    values, dropped, additive, made = constant_values(program), 0, 0, set()
    calls = bool_mask_calls(program)
    for n in calls:
        mask, where = _mask_arg(n)
        value = values.get(mask.name) if getattr(mask, "op", None) == "placeholder" else None
        if value is None or mask in made:   # made: one mask every layer reads, converted once for all of them
            continue
        if bool(value.all()):
            if where == 3:
                n.args = (*n.args[:3], None, *n.args[4:])
            else:
                n.kwargs = {**n.kwargs, "attn_mask": None}
            dropped += 1
            continue
        readers = [u for u in mask.users if u in calls and _mask_arg(u)[0] is mask]
        dtypes = {u.args[0].meta["val"].dtype for u in readers}
        if len(readers) != len(mask.users) or len(dtypes) != 1 or not bool(value.any(dim=-1).all()):
            continue
        table = program.constants if names[mask.name] in program.constants else program.state_dict
        table[names[mask.name]] = torch.zeros(value.shape, dtype=dtypes.pop()).masked_fill_(~value, float("-inf"))
        mask.meta["val"] = mask.meta["val"].to(table[names[mask.name]].dtype)
        made.add(mask)
        additive += len(readers)
    if dropped:
        program.graph.eliminate_dead_code()
        program.graph_module.recompile()
    return dropped, additive
