"""ONNX target: the dynamo exporter from the captured program; the TorchScript exporter only as a fallback.

Precisions: fp32; fp16 (weights and compute in fp16, fp32 inputs/outputs kept); int8 (static QDQ
quantization with ONNX Runtime's quantizer and the shared calibration data).

fp32 graphs get ONNX Runtime's fused attention and GELU ops (``fusion.py``; option ``fusion``), checked against
the unfused graph before they replace it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from typing import Any

from edge.converters.base import KEEP_FLOAT, ConversionJob, ConversionResult, Converter, Option, in_kept, kept_float
from edge.converters.onnx.scans import fold_scan_flips
from edge.errors import ConversionError


class OnnxConverter(Converter):
    name = "onnx"
    format = "onnx"
    runtime = "onnxruntime"
    extra = "onnx"
    requires = ("onnx", "onnxruntime", "onnxscript")
    precisions = ("fp32", "fp16", "int8")
    needs_calibration = ("int8",)
    # reduce_range: 7-bit weights. ONNX Runtime's u8s8 kernels on x86 CPUs without VNNI (AVX2 only, e.g. AMD
    # Zen 3) add pairs of products in int16 and saturate: vit_tiny_digits int8 came out at cosine 0.883 there and
    # 0.9999 with 7-bit weights. "auto" reduces the range where the converting CPU is such a CPU.
    options = {"opset": Option(18, (17, 18, 19, 20, 21, 23), "ONNX opset of the exported model"),
               "reduce_range": Option("auto", ("auto", True, False),
                                      "int8: 7-bit weights (auto: where the converting CPU lacks VNNI)"),
               "keep_float": KEEP_FLOAT,
               "fusion": Option("onnxruntime", ("onnxruntime", "none"),
                                "fp32: fuse attention and GELU into ONNX Runtime's contrib ops (the file then "
                                "needs ONNX Runtime); none keeps standard ONNX ops only")}
    forms = {"rnn": "native", "layernorm2d": "channels-first"}
    sources = ("program", "module")   # the module: a fallback when no program was captured

    def convert(self, job: ConversionJob) -> ConversionResult:
        self.require()
        import onnx
        path = job.out_dir / "model.onnx"
        details: dict[str, Any] = {}
        export_to(path, job, details)
        model = onnx.load(str(path))
        folded = fold_scan_flips(model)     # reverse loops read and write in place of flipped copies
        if any(folded.values()):
            onnx.save(model, str(path))
            details["scan_flips_folded"] = folded
        if job.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16
            model = convert_float_to_float16(model, keep_io_types=True)
            onnx.save(model, str(path))
        elif job.precision == "int8":
            quantize_int8(path, job, details)
            model = onnx.load(str(path))
        elif job.options.get("fusion", "onnxruntime") == "onnxruntime":
            model = fuse_checked(path, model, job, details)
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        details["op_histogram"] = dict(sorted(ops.items(), key=lambda kv: -kv[1]))
        details["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        files = ["model.onnx"] + sorted(p.name for p in job.out_dir.iterdir() if p.name != "model.onnx"
                                        and p.name != "manifest.json" and not p.name.startswith("."))
        return ConversionResult(files=files, details=details)


def export_to(path, job: ConversionJob, details: dict[str, Any]) -> None:
    """Export ``job``'s program with the dynamo exporter; fall back to TorchScript (recorded in ``details``)."""
    import torch
    in_names = [t.name for t in job.inputs]
    out_names = [t.name for t in job.outputs]
    opset = job.options.get("opset", 18)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)   # "torchvision is not installed" noise
    try:
        if job.program is None:   # no capture route worked: the TorchScript exporter traces the module itself
            raise ValueError("no torch.export program: " + "; ".join(job.capture.get("failed", [])))
        try:
            skipped = _dynamo_export(job.program, path, in_names, out_names, opset)
        except Exception as e:
            if "Cannot view a tensor" not in str(e):
                raise
            # The exporter re-traces the program through its decompositions, whose output strides can differ
            # from the ones torch.export recorded (a transformers BEiT: SDPA's decomposition, then permute and
            # a view that was valid on SDPA's own strides). A contiguous copy in front of such views keeps them
            # valid whatever the strides. The program is copied: the pipeline caches it for other targets.
            skipped = _dynamo_export(contiguous_before_views(job.program), path, in_names, out_names, opset)
            details["contiguous_before_views"] = "the exporter's decompositions changed strides under aten.view"
        details["exporter"] = "dynamo"
        if skipped:
            details["exporter_rules_skipped"] = {name: "its matching is quadratic in the graph's Slice count"
                                                 for name in skipped}
        return
    except Exception as e:  # the exporter raises many types; keep the reason and fall back
        details["dynamo_export_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
    dynamic_axes = {n: {0: "batch"} for n in in_names + out_names} if job.dynamic_batch else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(job.module, tuple(job.example_inputs), str(path), dynamo=False,
                              opset_version=min(opset, 17), input_names=in_names, output_names=out_names,
                              dynamic_axes=dynamic_axes)
    except Exception as e:
        raise ConversionError(f"ONNX export failed with both exporters: dynamo: {details['dynamo_export_error']}; "
                              f"torchscript: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    # A trace keeps the branch the example input took: a tensor turned into a Python bool means control flow that
    # depends on the data, and an artifact that is silently wrong for inputs taking the other branch.
    branches = [str(w.message).splitlines()[0] for w in caught
                if issubclass(w.category, torch.jit.TracerWarning) and "Python boolean" in str(w.message)]
    if branches:
        raise ConversionError(f"ONNX export refused: torch.export could not capture the model "
                              f"({details['dynamo_export_error'][:200]}) and the TorchScript exporter's trace would "
                              f"keep only the branch the example input took (data-dependent control flow: "
                              f"{branches[0][:160]}); make the branch a tensor operation (torch.where) or fixed")
    details["exporter"] = "torchscript (fallback: the dynamo exporter failed)"


def fuse_checked(path, model, job: ConversionJob, details: dict[str, Any]):
    """Fuse ``model`` for ONNX Runtime (``fusion.py``) and keep the result only if ONNX Runtime runs it to the
    unfused graph's outputs on the job's example inputs; ``details["fusion"]`` records the fused ops, or why the
    unfused graph was kept. Returns the model now at ``path``."""
    import copy

    import numpy as np
    import onnx

    from edge.converters.onnx.fusion import fuse_for_onnxruntime
    try:
        fused, record = fuse_for_onnxruntime(copy.deepcopy(model))
    except Exception as e:   # a pattern or shape this code did not foresee: the unfused graph is still right
        details["fusion"] = {"kept_unfused": f"fusion failed: {type(e).__name__}: {str(e)[:200]}"}
        return model
    if not record["ops"]:
        details["fusion"] = {"ops": {}}
        return model
    trial = path.with_name(".fused.onnx")
    onnx.save(fused, str(trial))
    try:
        feeds = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in job.example_inputs]
        want, got = (_run_cpu(p, feeds) for p in (path, trial))
        worst = max(float(np.max(np.abs(g - w) / (1e-3 * (1.0 + np.abs(w))))) if w.size else 0.0
                    for w, g in zip(want, got))
        if worst > 1.0:   # more than 1e-3 relative anywhere: not the same computation
            raise ValueError(f"its outputs differ from the unfused graph's by {worst:.1f}x the 1e-3 relative bound")
    except Exception as e:
        trial.unlink()
        details["fusion"] = {"kept_unfused": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}",
                             "would_fuse": record["ops"]}
        return model
    trial.replace(path)
    details["fusion"] = {**record, "checked": "ONNX Runtime CPU outputs equal the unfused graph's (1e-3 relative)"}
    return fused


def _run_cpu(path, feeds: list) -> list:
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [np.asarray(o, np.float64) for o in sess.run(None, dict(zip(names, feeds)))]


# The exporter's optimizer (onnxscript's, run by ``torch.onnx.export(optimize=True)``) matches its SlicesSplit rule
# (two Slices of one tensor -> one Split), a pattern with two output nodes, by trying every pair of Slice nodes in
# the graph: its cost grows with the square of the Slice count. VisionGRU's scans slice their sequences into
# chunks: in visiongru_digits' striped form (384 Slices) the rule took 29 of the optimizer's 35 s, and it grows
# 80-fold at 512 px (VisionGRU-Ti, 3,476 Slices). Without it, edge runs the same optimizer; two Slices where the
# rule would have made one Split compute the same numbers. (It rewrote nothing in the small zoo models and in 21
# of the corpus' 23 transformers families, the ones that export without edge's capture.)
QUADRATIC_RULES = frozenset({"SlicesSplit"})
_RULES_LOCK = threading.RLock()


@contextlib.contextmanager
def _optimizer_without_quadratic_rules():
    """onnxscript's default rewrite rules without :data:`QUADRATIC_RULES` while the block runs (the exporter's
    optimizer reads them when it runs; an onnxscript without that tuple is left as it is). Yields the names of
    the rules left out."""
    from onnxscript import rewriter
    with _RULES_LOCK:
        rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
        if not isinstance(rules, tuple):
            yield []
            return
        kept = tuple(r for r in rules if getattr(r, "name", None) not in QUADRATIC_RULES)
        rewriter._DEFAULT_REWRITE_RULES = kept
        try:
            yield sorted(getattr(r, "name", "") for r in rules if r not in kept)
        finally:
            rewriter._DEFAULT_REWRITE_RULES = rules


def _dynamo_export(program, path, in_names: list[str], out_names: list[str], opset: int) -> list[str]:
    """Export ``program`` to ``path``; returns the optimizer rules left out (:data:`QUADRATIC_RULES`)."""
    import torch
    with warnings.catch_warnings(), _optimizer_without_quadratic_rules() as skipped:
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, (), input_names=in_names, output_names=out_names, dynamo=True,
                                         opset_version=opset, verbose=False, optimize=True)
    onnx_program.save(str(path), external_data=False)
    return skipped


def contiguous_before_views(program):
    """A copy of ``program`` where every ``aten.view`` of a permuted tensor reads a contiguous clone of it: the
    same values whatever strides a re-trace gives the permute's input (ONNX has no strides: the clone is an
    Identity there)."""
    import torch

    from edge.passes.graph import graph_copy
    program = graph_copy(program)
    graph = program.graph_module.graph
    layouts = (torch.ops.aten.permute.default, torch.ops.aten.transpose.int)
    for node in list(graph.nodes):
        src = node.args[0] if node.op == "call_function" and node.target == torch.ops.aten.view.default else None
        if isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target in layouts:
            with graph.inserting_before(node):
                clone = graph.call_function(torch.ops.aten.clone.default, (src,),
                                            {"memory_format": torch.contiguous_format})
            clone.meta = {**src.meta, "val": src.meta["val"].contiguous()} if "val" in src.meta else dict(src.meta)
            node.replace_input_with(src, clone)
    program.graph_module.recompile()
    return program


def quantize_int8(path, job: ConversionJob, details: dict[str, Any]) -> None:
    """Static QDQ int8 with ONNX Runtime's quantizer: per-channel symmetric weights, calibration from the job."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [t.name for t in job.inputs]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(job.calibration.samples)

        def get_next(self):
            s = next(self._it, None)
            return None if s is None else dict(zip(names, s))

    import onnx
    exported = exported_metadata(onnx.load(str(path)))
    pre = path.with_name("pre.onnx")
    quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
    reduce_range = job.options.get("reduce_range", "auto")
    if reduce_range == "auto":
        reduce_range = x86_without_vnni()
    exclude = float_nodes(pre, kept_float(job), exported)
    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=reduce_range,
                    nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre.unlink()
    restore_metadata(path, exported)
    details["quantization"] = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                               "weights": f"int{7 if reduce_range else 8} per-channel symmetric"
                                          f"{' (reduce_range: u8s8 saturates on x86 without VNNI)' if reduce_range else ''}",
                               "activations": "uint8 per-tensor"}
    if exclude:
        details["quantization"]["kept_float"] = {"modules": sorted(kept_float(job)), "nodes_to_exclude": len(exclude)}


def restore_metadata(path, exported: dict[str, list]) -> None:
    """Put the exporter's node metadata (module names, ``pkg.torch.onnx.name_scopes``) back on the quantized
    nodes of the same name: quant_pre_process drops it on some graphs (a transformers ViT), and edge debug and
    ``keep_float`` read it."""
    import onnx
    model = onnx.load(str(path))
    if _mend(model.graph.node, exported):
        onnx.save(model, str(path))


def exported_metadata(model) -> dict[str, list]:
    """Node metadata of the exported graph by node name and by output value name (a node the optimizer fuses
    gets a new name but keeps its output's name)."""
    out: dict[str, list] = {}
    for n in model.graph.node:
        if n.metadata_props:
            for key in [n.name, *(f"value:{o}" for o in n.output)]:
                out.setdefault(key, list(n.metadata_props))
    return out


def _mend(nodes, exported: dict[str, list]) -> bool:
    changed = False
    for n in nodes:
        if n.metadata_props or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        props = exported.get(n.name) or next((exported[f"value:{o}"] for o in n.output
                                              if f"value:{o}" in exported), None)
        if props:
            n.metadata_props.extend(props)
            changed = True
    return changed


def float_nodes(path, kept: set[str], exported: dict[str, list] | None = None) -> list[str]:
    """Names of the nodes inside the modules ``kept`` in float (ONNX Runtime's ``nodes_to_exclude``)."""
    if not kept:
        return []
    import onnx
    from edge.debugger.onnxruntime import _scopes
    nodes = onnx.load(str(path)).graph.node
    _mend(nodes, exported or {})   # the same metadata loss as restore_metadata mends
    names = [n.name for n in nodes if in_kept(_scopes(n), kept)]
    # The quantizer drops a Relu/Clip in front of a quantized tensor (the uint8 range clips at 0 instead); when
    # that tensor feeds a float node, ONNX Runtime's optimizer later removes the Q/DQ pair and the clip is lost
    # (measured: cosine 0.56 instead of 0.9998). Such activations are excluded too, so they stay in the graph.
    feeds = {i for n in nodes if n.name in set(names) for i in n.input}
    return names + [n.name for n in nodes if n.op_type in ("Relu", "Clip") and n.name not in names
                    and any(o in feeds for o in n.output)]


def x86_without_vnni() -> bool:
    """An x86 CPU whose int8 dot products lack VNNI (ONNX Runtime's u8s8 kernels can saturate there)."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return True   # cannot tell: the 7-bit range is safe everywhere
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))
