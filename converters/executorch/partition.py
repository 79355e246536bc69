"""XNNPACK partitioning for ExecuTorch: the edge-dialect rewrites that make ops delegable, and partitioners that
delegate a whole graph in one call and ``torch.scan`` bodies as one delegate per iteration."""
from __future__ import annotations

import contextlib
from typing import Iterator

from edge.converters.executorch.speedups import _patched


def _delegable_forms_pass():
    """An edge-dialect pass writing ops XNNPACK has no kernel for in forms it delegates.

    ``select_copy(x, d, i)`` (e.g. a ViT's class token ``x[:, 0]``) becomes ``slice_copy`` + ``view_copy``;
    ``unsqueeze_copy`` / ``squeeze_copy`` / ``alias_copy`` (a slice that takes everything, e.g. one token of
    one) become the ``view_copy`` to their output shape; an
    ``expand_copy`` to the shape its input already has (``cls_token.expand(1, -1, -1)`` at batch 1) is
    dropped. All leave the numbers unchanged; each otherwise runs on a portable kernel and splits the
    graph into more delegate calls. Shapes with symbolic dims are left alone.

    The rewrite edits the top-level FX graph in place (new nodes get their fake values from the
    rewritten node's fake mode) instead of re-tracing the program: an ``ExportPass`` re-traces a
    ``torch.scan`` body step by step, which cost 2 s of a GRU's 10 s lowering.
    """
    import torch
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    select, expand = exir_ops.edge.aten.select_copy.int, exir_ops.edge.aten.expand_copy.default
    slice_, view = exir_ops.edge.aten.slice_copy.Tensor, exir_ops.edge.aten.view_copy.default
    reshapes = {exir_ops.edge.aten.unsqueeze_copy.default, exir_ops.edge.aten.squeeze_copy.dims,
                exir_ops.edge.aten.squeeze_copy.dim, exir_ops.edge.aten.squeeze_copy.default,
                exir_ops.edge.aten.alias_copy.default}

    def static(node) -> bool:
        val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
        return isinstance(val, torch.Tensor) and all(isinstance(d, int) for d in val.shape)

    def rewrite(graph_module):
        graph, changed = graph_module.graph, False

        def view_of(node, x, shape: list[int]) -> None:   # node's value as a view_copy of x, then node is gone
            with graph.inserting_before(node):
                flat = graph.call_function(view, (x, shape))
            flat.meta = dict(node.meta)
            node.replace_all_uses_with(flat)
            graph.erase_node(node)

        for node in list(graph.nodes):
            if node.op != "call_function" or not node.args or not static(node.args[0]):
                continue
            x = node.args[0]
            shape = list(x.meta["val"].shape)
            if node.target == select:
                dim = int(node.args[1]) % len(shape)
                idx = int(node.args[2]) % shape[dim]
                with graph.inserting_before(node):
                    sliced = graph.call_function(slice_, (x, dim, idx, idx + 1, 1))
                with x.meta["val"].fake_mode:
                    sliced.meta = {**node.meta, "val": torch.ops.aten.slice_copy.Tensor(x.meta["val"], dim, idx,
                                                                                        idx + 1, 1)}
                view_of(node, sliced, shape[:dim] + shape[dim + 1:])
                changed = True
            elif node.target in reshapes and static(node):
                view_of(node, x, list(node.meta["val"].shape))
                changed = True
            elif node.target == expand:
                sizes = list(node.args[1])
                sizes = [s if s != -1 else shape[i - (len(sizes) - len(shape))] for i, s in enumerate(sizes)]
                if sizes == shape:
                    node.replace_all_uses_with(x)
                    graph.erase_node(node)
                    changed = True
        if changed:
            graph_module.recompile()
        return PassResult(graph_module, changed)
    return rewrite


def scan_bodies(graph_module) -> list:
    """(scan node, its body GraphModule) for each ``torch.scan`` in the top-level graph."""
    import torch
    return [(n, getattr(graph_module, n.args[0].target)) for n in graph_module.graph.nodes
            if n.target is torch.ops.higher_order.scan]


def _scan_constants_pass(program):
    """An edge-dialect pass making the parameters a ``torch.scan`` body reads constants of that body.

    torch.export hands a scan body its weights as loop inputs; XNNPACK then sees a matmul with
    dynamic weights and repacks them on every step (measured: 1.9 ms vs 0.86 ms for the 196-step
    GRU). As ``get_attr`` constants of the body they are packed once, inside the body's delegate.
    """
    from torch.fx.passes.infra.pass_base import PassResult

    from edge.passes.graph import constant_values
    values = constant_values(program, parameters=True)

    def inline(graph_module):
        changed = False
        for node, body in scan_bodies(graph_module):
            body_ref, init, xs, extra = node.args
            phs = [n for n in body.graph.nodes if n.op == "placeholder"][len(init) + len(xs):]
            keep = []
            for arg, ph in zip(extra, phs):
                if getattr(arg, "name", None) not in values:
                    keep.append(arg)
                    continue
                attr = "edge_const_" + arg.name
                body.register_buffer(attr, values[arg.name].detach().clone())
                with body.graph.inserting_before(ph):
                    const = body.graph.get_attr(attr)
                const.meta = dict(ph.meta)
                ph.replace_all_uses_with(const)
                body.graph.erase_node(ph)
                changed = True
            node.args = (body_ref, init, xs, tuple(keep))
            body.recompile()
        graph_module.recompile()
        return PassResult(graph_module, changed)
    return inline


def _xnnpack_partitioner():
    """XnnpackPartitioner that spares ``to_edge_transform_and_lower`` two of its three decompositions.

    A partitioner that checks the ops it keeps from decomposition (XNNPACK: linear, hardswish, ...)
    makes ExecuTorch decompose the whole program twice more: once with those ops kept, then, after
    tagging the ones that pass the check, with everything else decomposed (about 2-3 s per 450 nodes
    each on this machine). When every kept op in the graph passes the check, that gives the same graph
    as one decomposition with the kept ops kept, which is ExecuTorch's own path for a partitioner
    without a check: so then no check is returned. (A kept op that a decomposition would newly make
    is then kept unchecked; if XNNPACK cannot take it, it runs on a portable kernel and the manifest's
    delegation summary lists it.) A failing op keeps the check. Programs with ``torch.scan`` loops use
    :func:`_scan_partitioner` instead.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from torch.fx.passes.infra.partitioner import Partition

    class LeanXnnpackPartitioner(XnnpackPartitioner):
        def ops_to_not_decompose(self, ep):
            ops, check = super().ops_to_not_decompose(ep)
            kept = set(ops)
            if check is not None and all(check(n) for n in ep.graph_module.graph.nodes
                                         if n.op == "call_function" and n.target in kept):
                return ops, None
            return ops, check

        def generate_partitions(self, ep):
            groups = self.get_matched_nodes_from_configs(ep)
            whole = _whole_graph_partition(ep.graph_module, groups)
            if whole is not None:
                return [Partition(id=0, nodes=whole)]
            from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import (
                generate_grouped_partitions_from_list_of_nodes)
            return generate_grouped_partitions_from_list_of_nodes(ep.graph_module, groups)
    return LeanXnnpackPartitioner()


def _whole_graph_partition(graph_module, groups: list[list]) -> list | None:
    """The matched nodes as one partition when they hold every op of the graph, else None.

    Then nothing runs outside the partition, so it cannot form a cycle through an outside node and
    ExecuTorch's group partitioner (which checks every proposed merge for one) would end with the same
    single partition: 14 s of VisionGRU-Ti's lowering (5300 nodes) went into those checks.
    """
    matched = {n for g in groups for n in g}
    ops = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    if not ops or any(n not in matched for n in ops):
        return None
    return [n for n in graph_module.graph.nodes if n in matched]


def _scan_partitioner():
    """XnnpackPartitioner that also delegates ``torch.scan`` bodies (ExecuTorch's emitter runs them as a loop).

    The stock partitioner only looks at the top-level graph, so a scan body (a GRU step) would run on
    portable kernels. Here the same XNNPACK configs tag each body's nodes; the loop then calls one
    delegate per step. A copy of the carry as the step's output (scan outputs must not alias it) is
    left outside: XNNPACK cannot return one value twice. edge's own forms compute it twice instead.
    """
    from types import SimpleNamespace

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import (
        generate_grouped_partitions_from_list_of_nodes)

    class ScanBodyXnnpackPartitioner(XnnpackPartitioner):
        def ops_to_not_decompose(self, ep):
            ops, check = super().ops_to_not_decompose(ep)
            top = ep.graph_module.graph

            def keep(node) -> bool:   # a body's linear reads its weights as loop inputs until they are inlined
                if node.graph is not top and node.target == torch.ops.aten.linear.default:
                    return True
                return check(node) if check is not None else True
            return ops, keep

        def partition(self, exported_program):
            result = super().partition(exported_program)
            k = 0
            for _, body in scan_bodies(exported_program.graph_module):
                view = SimpleNamespace(graph_module=body, graph=body.graph, state_dict=exported_program.state_dict,
                                       graph_signature=exported_program.graph_signature,
                                       constants=exported_program.constants)
                groups = [[n for n in g if "clone" not in str(n.target)]
                          for g in self.get_matched_nodes_from_configs(view)]
                groups = [g for g in groups if g]
                # several steps per body: the group of their linears alone would make a cycle with the gates
                whole = _whole_graph_partition(body, groups)
                parts = ([SimpleNamespace(nodes=whole)] if whole is not None
                         else generate_grouped_partitions_from_list_of_nodes(body, groups))
                for part in parts:
                    tag = f"scan_body_tag{k}"
                    k += 1
                    for n in part.nodes:
                        n.meta["delegation_tag"] = tag
                    result.partition_tags[tag] = self.delegation_spec
            return result
    return ScanBodyXnnpackPartitioner()


@contextlib.contextmanager
def softmax_reads_nchw() -> Iterator[bool]:
    """While lowering, XNNPACK treats softmax as an op that needs NCHW input (yields whether it could).

    ExecuTorch 1.5's XNNPACK lowering keeps a convolution's output channels-last (NHWC) through the ops it
    considers layout-agnostic, and softmax is one of them; but XNNPACK's softmax runs over the last dim of the
    memory layout. Softmax over the last dim of a convolution's [N, C, H, W] output then normalises over the
    channels instead of W: a silently wrong program (measured: conv -> softmax(dim=-1), max error 0.13 on
    outputs of 0.5; transformers' MobileViTV2, whose linear attention takes a softmax of a 1x1 conv's output,
    cosine 0.954). As an NCHW op, softmax gets its input converted back first. Where a later ExecuTorch has no
    such list, nothing changes (the artifact is still checked against PyTorch).
    """
    try:
        from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import (
            ChannelsLastTaggedReshapePass as layout_pass)
        from executorch.exir.dialects._ops import ops as exir_ops
        softmax, nchw = exir_ops.edge.aten._softmax.default, layout_pass.memory_sensitive_ops_nchw
    except (ImportError, AttributeError):
        yield False
        return
    with _patched(layout_pass, "memory_sensitive_ops_nchw", {*nchw, softmax}):
        yield True


@contextlib.contextmanager
def partition_rejections() -> Iterator[dict[str, str]]:
    """While lowering, collect why XNNPACK's partitioner configs refused nodes (yields node name -> reason).

    The configs report each refusal (``mean.dim only supports keepdim=True``, ``only support power == 2``) through
    ExecuTorch's ``WhyNoPartition`` at debug level; here their logger hands the reasons to edge for the delegation
    summary instead of printing them (the later check of a node wins: the last partitioning is the one lowered).
    """
    import logging
    try:
        from executorch.exir.backend.utils import WhyNoPartition
    except ImportError:
        yield {}
        return
    reasons: dict[str, str] = {}

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            why = record.msg
            if isinstance(why, WhyNoPartition) and why.node is not None:
                reasons[why.node.name] = str(why.reason)

    logger = logging.getLogger("executorch.backends.xnnpack.partition.config")
    handler, level, propagate = Collect(logging.DEBUG), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False   # the debug records stay here: edge's output is edge's lines
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def xnnpack_op_names() -> set[str]:
    """The ops (``mean.dim``, ``mul.Tensor``...) ExecuTorch's XNNPACK partitioner has a config for."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    return {cfg.target_name for cfg in ALL_PARTITIONER_CONFIGS if getattr(cfg, "target_name", None)}
