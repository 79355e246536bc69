"""Lowering speed-ups: ExecuTorch and XNNPACK passes skipped where they provably have nothing to rewrite, one
decomposition instead of three, cached type hints in the serializer.

They patch private ExecuTorch symbols while a lowering runs (:func:`lowering_speedups`), so they are used only on
the ExecuTorch releases they were written and tested against (``TESTED``) and only while every patched symbol
exists (``PATCHED``; ``tests/test_executorch.py`` checks them). Otherwise lowering runs ExecuTorch's stock path
and the manifest says why (``details["speedups"]``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

# ExecuTorch releases (major.minor) these speed-ups were written and tested against.
TESTED = ("1.5",)
# (module, attribute path) of each private ExecuTorch symbol the speed-ups patch or read.
PATCHED = (("executorch.exir.program._program", "_get_aten_to_edge_passes"),
           ("executorch.exir._serialize._dataclass", "get_type_hints"),
           ("executorch.backends.xnnpack._passes", "XNNPACKPassManager.transform"))


def speedups_unavailable() -> str | None:
    """Why the speed-ups are off with the installed ExecuTorch (None: they apply)."""
    import importlib
    from importlib.metadata import version
    installed = version("executorch")
    if ".".join(installed.split(".")[:2]) not in TESTED:
        return f"ExecuTorch {installed} is not a release they were tested on ({', '.join(TESTED)})"
    for module, path in PATCHED:
        obj: Any = importlib.import_module(module)
        for part in path.split("."):
            if not hasattr(obj, part):
                return f"ExecuTorch {installed} has no {module}.{path}"
            obj = getattr(obj, part)
    return None


@contextlib.contextmanager
def lowering_speedups(details: dict[str, Any] | None) -> Iterator[tuple[list, list]]:
    """While lowering: the speed-ups, if they apply; yields (XNNPACK passes skipped, edge passes skipped)."""
    skipped: list[str] = []
    edge_skipped: list[str] = []
    reason = speedups_unavailable()
    if reason is not None:
        if details is not None:
            details["speedups"] = f"off: {reason}"
        yield skipped, edge_skipped
        return
    with _lean_xnnpack_passes(skipped), _lean_edge_passes(edge_skipped), _cached_type_hints():
        yield skipped, edge_skipped


def _xnnpack_pass_can_act(pass_cls, graph_module) -> bool:
    """False only when an XNNPACK preprocess pass provably has nothing to rewrite in ``graph_module``.

    These passes re-trace the whole graph (about 4 s for a 12-block int8 ViT) even when nothing
    matches. A pattern pass cannot match when some op of every pattern graph is absent (the
    matcher pairs nodes by op); the others look for one kind of op. Passes not listed always run.
    """
    import torch
    nodes = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    targets = {n.target for n in nodes}
    names = {_op_name(t) for t in targets}

    def some_pattern_fits(graphs) -> bool:
        return any({n.target for n in g.graph.nodes if n.op == "call_function"} <= targets for g in graphs)

    def has(*parts: str) -> bool:
        return all(any(p in t for t in names) for p in parts)

    # building the pattern graphs costs ~1-2 s each: first a cheap gate on ops every pattern holds
    name = pass_cls.__name__
    if name == "ConvertToSDPAPass":   # ExecuTorch 1.5.1's patterns: SDPA with a mask (bmm, softmax, any, ...)
        from executorch.backends.xnnpack.partition.graphs import sdpa
        return has("aten.bmm", "aten._softmax", "aten.any") and some_pattern_fits(sdpa.get_graphs())
    if name == "ConvertToUpsampleBilinear2d":
        from executorch.backends.xnnpack.partition.graphs import bilinear_2d
        return has("upsample_bilinear2d") and some_pattern_fits(bilinear_2d.get_graphs())
    if name == "PReLUReshapePass":
        return has("prelu")
    if name in ("FuseBatchNormPass", "DecomposeBatchNorm"):
        return has("batch_norm")
    if name == "Conv1dUnsqueezePass":   # a 1-D convolution's output is [N, C, L]
        return any("convolution" in str(n.target) and isinstance(n.meta.get("val"), torch.Tensor)
                   and n.meta["val"].dim() == 3 for n in nodes)
    if name == "DecomposeConcatenate":  # it splits cats of more than 5 inputs
        return any("aten.cat" in str(n.target) and len(n.args[0]) > 5 for n in nodes)
    # passes that look for one set of ops, read from the pass itself where it names them
    if name == "XNNPACKRemoveCloneOpsTransform":
        return any(_op_name(op) in names for op in pass_cls.clone_ops)
    if name == "DimOrderOpsRevertPass":
        from executorch.exir.passes.dim_order_ops_registry import MemoryFormatOpsMap
        return any(_op_name(op) in names for op in MemoryFormatOpsMap)
    if name == "ConvertToLinearPass":   # [add]mm / bmm left by a decomposed linear
        return any(_op_name(op) in names for op in pass_cls.targets)
    if name == "PropagateCustomMetaPass":   # copies meta onto quantize / dequantize nodes
        from executorch.backends.xnnpack.utils.quant_utils import is_dequant, is_quant
        return any(is_quant(n) or is_dequant(n) for n in nodes)
    if name == "FuseActivationPass":   # relu / hardtanh that is the only user of a conv, linear or add/sub/mul
        acts = {_op_name(op) for op in pass_cls.FUSEABLE_ACTIVATIONS}
        ops = {_op_name(op) for op in pass_cls.FUSEABLE_OPS}
        return any(_op_name(n.target) in acts and isinstance(n.args[0], torch.fx.Node)
                   and n.args[0].op == "call_function" and _op_name(n.args[0].target) in ops
                   and len(n.args[0].users) == 1 for n in nodes)
    if name == "ConstPropPass":   # folds ops whose inputs are all constants of the graph (get_attr) or none
        return any(all(i.op == "get_attr" for i in n.all_input_nodes) for n in nodes)
    if name == "RemoveGetItemPass":
        return bool(names & {"aten.max_pool2d_with_indices.default", "aten.max.dim"})
    if name == "InsertPadQDQPass":
        return "aten.constant_pad_nd.default" in names
    if name == "RemoveRedundantCopyPass":   # a _to_copy after a copy, a dequantize or a node of its own layout
        from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import (
            ChannelsLastTaggedReshapePass as tags)
        from executorch.backends.xnnpack.utils.quant_utils import is_dequant
        copies = [n for n in nodes if _op_name(n.target) == "aten._to_copy.default" and n.all_input_nodes]
        return any(_op_name(getattr(x, "target", "")) == "aten._to_copy.default" or is_dequant(x)
                   or (tags.is_nhwc_node(x) and tags.is_nhwc_node(n)) or (tags.is_nchw_node(x) and tags.is_nchw_node(n))
                   for n in copies for x in [n.args[0]])
    return True


def _edge_pass_can_act(pass_obj, graph_module) -> bool:
    """False only when one of ExecuTorch's ATen-to-edge passes provably has nothing to rewrite.

    Five of them re-trace the whole program to look for things that edge's programs rarely hold
    (together about a quarter of lowering a VisionGRU block). Passes not listed here always run.
    """
    import torch
    from torch._prims_common import elementwise_dtypes
    # the passes also rewrite control-flow bodies (a torch.scan's step): look at every graph
    graphs = [m.graph for m in graph_module.modules() if isinstance(m, torch.fx.GraphModule)]
    every = [n for g in graphs for n in g.nodes]
    nodes = [n for n in every if n.op == "call_function"]
    name = _pass_name(pass_obj)
    if name == "NormalizeTransposePass":   # aten.t -> aten.t_copy
        return any(n.target == torch.ops.aten.t.default for n in nodes)
    if name == "ReplaceBrokenOpsWithFunctionalOpsPass":   # view ops left after the view_copy pass
        return any(getattr(n.target, "is_view", False) for n in nodes)
    if name == "ScalarToTensorPass":   # a Python number where the op's schema takes a tensor (x * 0.5)
        return any(_scalar_for_tensor(n) for n in nodes)
    if name == "SymToTensorPass":   # SymInt/SymFloat/SymBool values passed to ops
        sym = (torch.SymInt, torch.SymFloat, torch.SymBool)
        return any(isinstance(n.meta.get("val"), sym) for n in every)
    if name == "RemoveMixedTypeOperators":   # add/mul/sub/div/minimum whose inputs promote to another dtype
        from executorch.exir.passes.remove_mixed_type_operators import ELEMENTWISE_TYPE_PROMOTION_KIND as kind
        ops = {torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor, torch.ops.aten.sub.Tensor,
               torch.ops.aten.div.Tensor, torch.ops.aten.div.Tensor_mode, torch.ops.aten.minimum.default}
        for n in nodes:
            if n.target not in ops or len(n.args) <= 1:
                continue
            vals = [a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in n.args]
            if any(v is None for v in vals):
                return True
            tensors = [v for v in vals if isinstance(v, torch.Tensor)]
            mode = kind.INT_TO_FLOAT if n.target == torch.ops.aten.div.Tensor else kind.DEFAULT
            if n.target == torch.ops.aten.div.Tensor_mode and n.kwargs.get("rounding_mode") is None:
                mode = kind.INT_TO_FLOAT
            promoted = elementwise_dtypes(*vals, type_promotion_kind=mode)[1]
            if len(tensors) != len(vals) or any(t.dtype != promoted for t in tensors):
                return True
        return False
    return True


def _scalar_for_tensor(node) -> bool:
    """Does ``node`` pass a Python number to a Tensor argument of its op's schema?"""
    import torch
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return True   # not an ATen overload: let the pass look
    by_name = {a.name: a for a in schema.arguments}
    given = list(zip(schema.arguments, node.args)) + [(by_name[k], v) for k, v in node.kwargs.items() if k in by_name]
    return any(isinstance(v, (bool, int, float)) and isinstance(a.type, torch.TensorType) for a, v in given)


@contextlib.contextmanager
def _lean_edge_passes(skipped: list):
    """While lowering, ExecuTorch's ATen-to-edge passes run only where :func:`_edge_pass_can_act`.

    Each skipped pass name is appended to ``skipped``. On a VisionGRU-Ti stage-1 block (495 nodes) the
    five passes it skips took 1.2 s of a 4.5 s lowering, each changing nothing.
    """
    from executorch.exir.program import _program
    from torch.fx.passes.infra.pass_base import PassResult
    original = _program._get_aten_to_edge_passes

    def gated(pass_obj):
        def run(graph_module):
            if _edge_pass_can_act(pass_obj, graph_module):
                return pass_obj(graph_module)
            skipped.append(_pass_name(pass_obj))
            return PassResult(graph_module, False)
        return run

    def passes(config):
        pre, post = original(config)
        return [gated(p) for p in pre], post

    with _patched(_program, "_get_aten_to_edge_passes", passes):
        yield


@contextlib.contextmanager
def _cached_type_hints():
    """ExecuTorch's JSON encoder of the XNNPACK graph looks up a dataclass's type hints once per field of
    every serialized object (a few seconds for a 5000-node graph); a class's hints do not change, so
    they are looked up once per class while the block runs."""
    import functools
    import typing
    from executorch.exir._serialize import _dataclass
    with _patched(_dataclass, "get_type_hints", functools.lru_cache(maxsize=None)(typing.get_type_hints)):
        yield


@contextlib.contextmanager
def _patched(owner, name: str, value):
    """``owner.name`` is ``value`` while the block runs, then what it was."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _pass_name(pass_obj) -> str:
    """A pass's class name (ExecuTorch's pass lists hold instances and wrapper functions named after them)."""
    return getattr(pass_obj, "__name__", None) or type(pass_obj).__name__


def _op_name(op) -> str:
    return str(getattr(op, "__name__", op))


@contextlib.contextmanager
def _lean_xnnpack_passes(skipped: list):
    """While lowering, XNNPACK's preprocess runs only the passes that can change the delegated graph.

    Decided pass by pass on the graph as the earlier passes left it; each skipped pass name is
    appended to ``skipped``. Measured on vit_tiny int8: lowering 84 s -> 56 s (7 passes skipped).
    """
    from executorch.backends.xnnpack import _passes as xnn_passes
    manager = xnn_passes.XNNPACKPassManager
    original = manager.transform

    def transform(self):
        ep = self.exported_program
        for pass_cls in self.passes:
            if _xnnpack_pass_can_act(pass_cls, ep.graph_module):
                ep = original(manager(ep, passes=[pass_cls]))
            else:
                skipped.append(pass_cls.__name__)
        return ep

    with _patched(manager, "transform", transform):
        yield


def _core_convolutions(program) -> int:
    """Rewrite ``aten.conv1d/conv2d`` as the ``aten.convolution`` their decomposition makes, in place.

    ``to_edge_transform_and_lower`` decomposes the whole program a second time when any op of the
    decomposition table is left after its first pass; in a convolutional model with edge's forms the
    convolutions are often the only such ops (VisionGRU-Ti: 9 s of its lowering). Returns the count.
    """
    import torch
    aten = torch.ops.aten
    dims = {aten.conv1d.default: 1, aten.conv2d.default: 2}
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}

    def per_dim(v, k: int) -> list:
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v * k if len(v) == 1 else v

    n = 0
    for node in program.graph_module.graph.nodes:
        k = dims.get(node.target)
        if k is None:
            continue
        a = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
        node.target = aten.convolution.default
        node.args = (a["input"], a["weight"], a["bias"], per_dim(a["stride"], k), per_dim(a["padding"], k),
                     per_dim(a["dilation"], k), False, [0] * k, a["groups"])
        node.kwargs = {}
        n += 1
    if n:
        program.graph_module.recompile()
    return n


