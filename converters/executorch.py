"""ExecuTorch target: ``to_edge_transform_and_lower`` with the XNNPACK partitioner -> ``.pte``.

Precisions:
    fp32          the captured program, lowered as it is.
    fp16          the module in half precision with fp32 inputs/outputs kept (casts inside the program);
                  checked on this host after lowering, a ConversionError says why when XNNPACK cannot run it.
    int8          PT2E static quantization with the XNNPACK quantizer (symmetric, per-channel weights,
                  per-tensor activations calibrated on ``job.calibration``).
    int8-dynamic  PT2E dynamic quantization (activations quantized per call; no calibration).
    8da4w         torchao: 8-bit dynamic activations, 4-bit grouped weights on Linear layers.

The manifest's details record the lowering time, how many XNNPACK delegate calls the program makes
and which ops stayed on portable kernels: a model that is not fully delegated says so in
``details["delegation"]["warning"]``. An ETRecord (``etrecord.bin``) is written beside the program so
the runtime's ETDump profile maps back to the model's ops. Option ``bundle=True`` writes a
BundledProgram (``model.bpte``) holding the example input and its expected output, so the same check
runs on a phone (``ExecuTorchSession.run_bundled_test``).
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from typing import Any

from edge.converters.base import KEEP_FLOAT, ConversionJob, ConversionResult, Converter, in_kept, kept_float
from edge.errors import ConversionError, EdgeWarning

PTE, BPTE, ETRECORD = "model.pte", "model.bpte", "etrecord.bin"
# Tolerances the bundled test is checked with on a device, per precision family (expected outputs
# are PyTorch's for float programs and this host's ExecuTorch run for quantized ones).
BUNDLE_TOLERANCE = {"fp32": (1e-3, 1e-4), "fp16": (5e-2, 1e-2)}
QUANTIZED_BUNDLE_TOLERANCE = (1e-2, 1e-2)
GROUP_SIZE = 32   # 8da4w weight group (in_features must divide by it; other Linears stay fp32)


class ExecuTorchConverter(Converter):
    name = "executorch"
    format = "pte"
    runtime = "executorch"
    extra = "executorch"
    requires = ("executorch", "torchao")
    precisions = ("fp32", "fp16", "int8", "int8-dynamic", "8da4w")
    needs_calibration = ("int8",)
    # calib_batches: how many calibration batches static int8 observes. XNNPACK's activation observer
    # (HistogramObserver) costs a torch.histc per activation per batch: 64 batches of a 4-block ViT took
    # most of a minute, while 16 keep digits accuracy within a point of fp32.
    options = {"bundle": (False, True), "etrecord": (True, False), "calib_batches": (16, 4, 8, 32, 64),
               "keep_float": KEEP_FLOAT}   # module names left unannotated by the quantizer (fp32)

    def convert(self, job: ConversionJob) -> ConversionResult:
        self.require()
        details: dict[str, Any] = {"backend": "XnnpackBackend", "partitioner": "XnnpackPartitioner"}
        t = time.perf_counter()   # the first import costs ~5 s per process: not part of lowering this model
        import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
        import executorch.exir  # noqa: F401
        details["import_seconds"] = round(time.perf_counter() - t, 2)
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = self._program(job, details)
            passes_on = hasattr(job.module, "edge_passes")   # set by edge.optimize
            if passes_on:   # the program-level forms belong to the optimize passes: off with optimize=False
                from edge.passes.graph import to_xnnpack_forms
                program = to_xnnpack_forms(program, details)   # a new program: the run's shared one is not changed
            else:
                details["program_rewrites"] = "off (optimize=False)"
            details["prepare_seconds"] = round(time.perf_counter() - t0, 2)
            details["prepare_cpu_seconds"] = round(time.process_time() - c0, 2)
            t1, c1 = time.perf_counter(), time.process_time()
            want_etrecord = bool(job.options.get("etrecord", True))
            if want_etrecord and _scan_bodies(program.graph_module):
                want_etrecord = False   # ExecuTorch 1.5.1's ETRecord serializer has no torch.scan: not worth building
                details["etrecord"] = ("not written: ExecuTorch's ETRecord serializer cannot write torch.scan (the "
                                       "GRU/LSTM loop); the ETDump profile names delegate calls, not source ops")
            edge_mgr = lower(program, etrecord=want_etrecord, details=details)
            details["delegation"] = delegation_summary(edge_mgr.exported_program().graph_module,
                                                       passes_on=passes_on)
            et_program = edge_mgr.to_executorch()
        # wall time, and this process's CPU time (the wall figure grows when other jobs share the cores)
        details["lowering_seconds"] = round(time.perf_counter() - t1, 2)
        details["lowering_cpu_seconds"] = round(time.process_time() - c1, 2)
        details["convert_seconds"] = round(time.perf_counter() - t0, 2)
        details["convert_cpu_seconds"] = round(time.process_time() - c0, 2)
        if "warning" in details["delegation"]:   # outside the block above, which silences backend chatter
            warnings.warn(f"executorch: {details['delegation']['warning']}", EdgeWarning, stacklevel=2)

        pte = job.out_dir / PTE
        pte.write_bytes(et_program.buffer)
        host_out = self._host_check(pte, job, details)
        files = [PTE]
        if job.options.get("bundle"):
            bundle(et_program, job, host_out, job.out_dir / BPTE, details)
            pte.unlink()   # the bundled program holds the same program: one copy only
            files = [BPTE]
        if want_etrecord:
            et_program.get_etrecord().save(str(job.out_dir / ETRECORD))
            files.append(ETRECORD)
        details["program_bytes"] = len(et_program.buffer)
        return ConversionResult(files=files, details=details, format="bpte" if job.options.get("bundle") else None)

    # ------------------------------------------------------------------------------------ programs

    def _program(self, job: ConversionJob, details: dict[str, Any]):
        """The ExportedProgram to lower for ``job.precision``."""
        import torch
        from edge.capture import capture
        p = job.precision
        if p == "fp32":
            details["source"] = "job.program (the run's captured program)"
            return job.require_program(self.name)
        if p == "fp16":
            details["source"] = "job.module in fp16 with fp32 inputs/outputs, re-captured"
            half = HalfIO(copy.deepcopy(job.module).half().eval())
            return capture(half, job.example_inputs, dynamic_batch=job.dynamic_batch)
        if p in ("int8", "int8-dynamic"):
            return pt2e_quantize(job, dynamic=p == "int8-dynamic", details=details)
        if p == "8da4w":
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
            from torchao.quantization.granularity import PerGroup
            module = copy.deepcopy(job.module).eval()
            linears = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
            chosen = [n for n, m in module.named_modules()
                      if isinstance(m, torch.nn.Linear) and m.in_features % GROUP_SIZE == 0]
            if not chosen:
                raise ConversionError(f"8da4w quantizes nn.Linear layers whose in_features divide by {GROUP_SIZE}; "
                                      f"this model has {len(linears)} Linear layer(s) and none qualifies. "
                                      f"Use --precision int8 or int8-dynamic")
            quantize_(module, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                                    weight_granularity=PerGroup(GROUP_SIZE)),
                      filter_fn=lambda m, fqn: fqn in chosen)
            details["quantization"] = {"tool": "torchao.quantize_ Int8DynamicActivationIntxWeightConfig",
                                       "weights": f"int4 symmetric, groups of {GROUP_SIZE}",
                                       "activations": "int8 dynamic per token",
                                       "layers": f"{len(chosen)} of {len(linears)} nn.Linear",
                                       "not_quantized": sorted(set(linears) - set(chosen))}
            details["source"] = "job.module quantized with torchao, re-captured"
            return capture(module, job.example_inputs, dynamic_batch=job.dynamic_batch)
        raise ConversionError(f"precision {p!r} is not handled by the executorch converter")

    def _host_check(self, pte, job: ConversionJob, details: dict[str, Any]):
        """Run the program once on this host: proves XNNPACK runs it (fp16 needs hardware support)."""
        import torch
        from executorch.runtime import Runtime
        try:
            method = Runtime.get().load_program(str(pte)).load_method("forward")
            out = method.execute([t.contiguous() for t in job.example_inputs])
        except Exception as e:
            pte.unlink(missing_ok=True)
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if job.precision == "fp16":
                raise ConversionError(
                    f"XNNPACK cannot run the fp16 program on this host ({reason}); XNNPACK's fp16 kernels need "
                    f"ARMv8.2 FP16 arithmetic or x86 AVX512-FP16/F16C support. Convert with --precision fp32 "
                    f"(or int8) here, or build fp16 on a machine whose CPU runs it") from e
            raise ConversionError(f"the lowered ExecuTorch program does not run on this host: {reason}") from e
        return [o.detach().clone() if isinstance(o, torch.Tensor) else o for o in out]


def _half_io_class():
    import torch

    class HalfIO(torch.nn.Module):
        """Runs ``inner`` (already .half()) on fp16 copies of fp32 inputs; returns fp32 outputs."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *xs):
            out = self.inner(*[x.half() if x.is_floating_point() else x for x in xs])
            if isinstance(out, torch.Tensor):
                return out.float()
            return type(out)(o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
    return HalfIO


def HalfIO(inner):  # noqa: N802 - a class made lazily so importing this module does not import torch
    return _half_io_class()(inner)


# ---------------------------------------------------------------------------------------------- steps

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


def _scan_bodies(graph_module) -> list:
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

    sig = program.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    values = {ph: program.state_dict[t] for ph, t in names.items() if t in program.state_dict}

    def inline(graph_module):
        changed = False
        for node, body in _scan_bodies(graph_module):
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
            for _, body in _scan_bodies(exported_program.graph_module):
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


def lower(program, *, etrecord: bool = True, details: dict[str, Any] | None = None):
    """``to_edge_transform_and_lower`` with the XNNPACK partitioner (every precision type enabled).

    A program with ``torch.scan`` loops (the ``gru``/``lstm`` passes' ExecuTorch form) also gets its
    loop bodies delegated, with their weights as constants of the body. Like ExecuTorch's lowering itself,
    this changes ``program`` (its convolutions become ``aten.convolution``: the same numbers).
    """
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    passes = [_delegable_forms_pass()]
    if _scan_bodies(program.graph_module):
        passes.append(_scan_constants_pass(program))
        partitioner = _scan_partitioner()
    else:
        partitioner = _xnnpack_partitioner()
    skipped: list[str] = []
    edge_skipped: list[str] = []
    try:
        _core_convolutions(program)
        with _lean_xnnpack_passes(skipped), _lean_edge_passes(edge_skipped), _cached_type_hints():
            # No edge-dialect IR validation: it re-walks the whole program several times (16 s of VisionGRU-Ti's
            # 95 s), and every program is run on this host and checked against PyTorch after lowering anyway.
            manager = to_edge_transform_and_lower(program, transform_passes=passes, partitioner=[partitioner],
                                                  compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                                  generate_etrecord=etrecord)
        if details is not None:   # the XNNPACK preprocess and ATen-to-edge passes that had nothing to rewrite
            details["xnnpack_passes_skipped"] = sorted(set(skipped))
            details["edge_passes_skipped"] = sorted(set(edge_skipped))
        return manager
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(f"ExecuTorch lowering (to_edge_transform_and_lower + XNNPACK) failed: "
                              f"{type(e).__name__}: {first}") from e


def delegation_summary(graph_module, passes_on: bool | None = None) -> dict[str, Any]:
    """Delegate calls, delegated/portable node counts and the ops left on portable kernels.

    ``portable_by_module`` names, per module of the source model, the ops that kept portable kernels there
    (from each node's ``nn_module_stack``). ``passes_on`` says whether edge's optimize passes ran (None:
    unknown); the warning suggests turning them on only when they were off.

    ``torch.scan`` loops are listed under ``loops``: per loop its iterations and what one iteration runs
    (delegate calls, portable ops). A program counts as fully delegated when the loop ops
    themselves are all that runs outside XNNPACK and each loop body is one delegate call.
    """
    from executorch.devtools.backend_debug import get_delegation_info
    info = get_delegation_info(graph_module)
    df = info.get_operator_delegation_dataframe()
    portable: dict[str, int] = {}
    for row in df.itertuples(index=False):
        name, n = str(row.op_type), int(row.occurrences_in_non_delegated_graphs)
        if n and name not in ("Total", "getitem"):   # getitem only unpacks delegate outputs
            portable[name] = n
    loops = []
    for node, body in _scan_bodies(graph_module):
        calls = [n for n in body.graph.nodes if "executorch_call_delegate" in str(n.target)]
        ops = [str(getattr(n.target, "__name__", n.target)) for n in body.graph.nodes
               if n.op == "call_function" and n not in calls and "getitem" not in str(n.target)]
        loops.append({"iterations": int(node.args[2][0].meta["val"].shape[0]),
                      "delegate_calls_per_iteration": len(calls), "portable_ops_per_iteration": sorted(ops)})
        for op in ops:   # get_delegation_info only looks at the top-level graph
            portable[op] = portable.get(op, 0) + 1
    calls = int(info.num_delegated_subgraphs)
    out = {"delegate_calls": calls, "delegated_nodes": int(info.num_delegated_nodes),
           "portable_nodes": int(sum(portable.values())),
           "portable_ops": dict(sorted(portable.items(), key=lambda kv: -kv[1])),
           "fully_delegated": calls == 1 and not portable}
    if loops:   # the loop op itself is ExecuTorch's control flow; everything else must be delegated
        out["loops"] = loops
        out["delegate_calls_per_run"] = calls + sum(lp["iterations"] * lp["delegate_calls_per_iteration"]
                                                    for lp in loops)
        out["fully_delegated"] = (set(portable) == {"scan"} and portable["scan"] == len(loops)
                                  and all(lp["delegate_calls_per_iteration"] == 1 for lp in loops))
    by_module = portable_by_module(graph_module)
    if by_module:
        out["portable_by_module"] = by_module
    if not out["fully_delegated"]:
        ops = ", ".join(f"{k} x{v}" for k, v in list(out["portable_ops"].items())[:8] if k != "scan") or "none"
        where = "; ".join(f"{m}: {', '.join(o)}" for m, o in list(by_module.items())[:4])
        advice = ("run with the optimize passes on (the default) or rewrite these ops" if passes_on is False else
                  "XNNPACK has no kernel for these ops in these forms (dtype, rank or arguments); rewrite them "
                  "in the module" + (f" ({where})" if where else ""))
        out["warning"] = (f"not fully delegated: {out['delegate_calls']} XNNPACK delegate call(s); ops on portable "
                          f"kernels: {ops}. {advice[0].upper()}{advice[1:]}")
    return out


def portable_by_module(graph_module, limit: int = 12) -> dict[str, list[str]]:
    """Per source module (qualified name and class), the ops of the top-level graph left on portable kernels."""
    out: dict[str, dict[str, int]] = {}
    for node in graph_module.graph.nodes:
        name = _op_name(node.target) if node.op == "call_function" else ""
        if not name or "executorch_call_delegate" in name or "getitem" in name or name == "scan":
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path, cls = list(stack.values())[-1] if stack else ("", "")
        key = f"{path or '(top level)'} ({str(cls).rsplit('.', 1)[-1]})" if cls else (path or "(top level)")
        ops = out.setdefault(key, {})
        short = name.replace("aten.", "").replace(".default", "")
        ops[short] = ops.get(short, 0) + 1
    ranked = sorted(out.items(), key=lambda kv: -sum(kv[1].values()))[:limit]
    return {k: [f"{o} x{n}" for o, n in v.items()] for k, v in ranked}


def _float_modules() -> tuple[type, ...]:
    """edge's own modules whose elementwise ops stay fp32 under PT2E int8 (their nn.Linear children are
    quantized): a LayerNorm's mul/add quantized one by one cost ~6 int8<->fp32 conversions per LayerNorm and
    precision; XNNPACK runs the attention's bmm in fp32 whatever the quantizer says; a minGRU scan's
    gates and states would be rounded at every one of its steps."""
    from edge.passes.attention import EdgeAttention, EdgeLayerNorm
    from edge.passes.recurrent import ChunkedMinGRU
    return EdgeLayerNorm, EdgeAttention, ChunkedMinGRU


def _innermost_module(node) -> str | None:
    """Qualified class name of the innermost module a captured node came from."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][1] if stack else None


def pt2e_quantize(job: ConversionJob, *, dynamic: bool, details: dict[str, Any]):
    """PT2E with the XNNPACK quantizer on ``job.module``, re-captured after convert_pt2e.

    Ops directly inside ``_float_modules()`` are not annotated, so they run in fp32.
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from edge.capture import capture

    args = tuple(job.example_inputs)
    graph = capture(copy.deepcopy(job.module).eval(), args, dynamic_batch=job.dynamic_batch).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=dynamic))
    floats = _float_modules()
    float_names = {f"{c.__module__}.{c.__qualname__}" for c in floats}
    from edge.debugger import stack_scopes
    kept = kept_float(job)
    quantizer.set_filter_function(lambda node: _innermost_module(node) not in float_names
                                  and not in_kept(stack_scopes(node.meta), kept))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        if dynamic:
            prepared(*args)
            calib = "none (dynamic: activation ranges are taken per call)"
        else:
            if job.calibration is None or len(job.calibration) == 0:
                raise ConversionError("int8 (static) needs calibration data; pass --calib (a folder of images, "
                                      "a .npy/.npz, or 'synthetic') or use --precision int8-dynamic")
            n = int(job.options.get("calib_batches") or 16)
            for sample in list(job.calibration)[:n]:
                prepared(*(torch.from_numpy(a) for a in sample))
            calib = f"{min(n, len(job.calibration))} of {len(job.calibration)} batches ({job.calibration.kind})"
    converted = convert_pt2e(prepared)
    details["quantization"] = {"tool": "PT2E prepare_pt2e/convert_pt2e + XNNPACKQuantizer",
                               "weights": "int8 per-channel symmetric",
                               "activations": "int8 per-tensor " + ("dynamic" if dynamic else "static"),
                               "fp32_modules": [c.__name__ for c in floats],
                               "calibration": calib}
    if kept:
        details["quantization"]["kept_float"] = {"modules": sorted(kept)}
    details["source"] = "job.module quantized with PT2E, re-captured"
    return capture(converted, args, dynamic_batch=job.dynamic_batch)


def bundle(et_program, job: ConversionJob, host_out: list, path, details: dict[str, Any]) -> None:
    """Write a BundledProgram: the example input and its expected output stored with the program."""
    import torch
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer
    from edge.capture import flatten_outputs

    inputs = [t.detach().clone().contiguous() for t in job.example_inputs]
    if job.precision in BUNDLE_TOLERANCE:
        with torch.no_grad():
            expected = [o.detach().float() for o in flatten_outputs(job.module(*inputs))]
        source, (rtol, atol) = "PyTorch eager", BUNDLE_TOLERANCE[job.precision]
    else:   # a quantized program differs from eager by design: the device must match this host's run
        expected = [o for o in host_out if isinstance(o, torch.Tensor)]
        source, (rtol, atol) = "this host's ExecuTorch run of the same program", QUANTIZED_BUNDLE_TOLERANCE
    suite = MethodTestSuite(method_name="forward",
                            test_cases=[MethodTestCase(inputs=inputs, expected_outputs=expected)])
    try:
        bp = BundledProgram(executorch_program=et_program, method_test_suites=[suite])
        path.write_bytes(serialize_from_bundled_program_to_flatbuffer(bp))
    except Exception as e:
        raise ConversionError(f"writing the BundledProgram failed: {type(e).__name__}: {e}") from e
    details["bundle"] = {"test_cases": 1, "expected_outputs_from": source, "rtol": rtol, "atol": atol}
