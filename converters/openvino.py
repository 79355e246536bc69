"""OpenVINO target: ``openvino.convert_model`` -> IR (model.xml + model.bin), quantized with NNCF.

Source graph. ``convert_model`` takes the captured ExportedProgram or the eager module (traced by
OpenVINO's TorchScript frontend). They differ on recurrent layers: from an ExportedProgram an
``nn.GRU``/``nn.LSTM``/``nn.RNN`` is unrolled (196 steps -> ~200 MatMuls, 7x slower), from the
module it stays one ``GRUSequence``/``LSTMSequence`` op. ``source="auto"`` therefore converts from
the module when it still holds a recurrent layer and from the program otherwise (the shared,
already-checked capture), and falls back to the other path if the first one fails. A program holding
``torch.scan`` loops (VisionGRU's ``mingru_form="loop"``) goes through ONNX instead: OpenVINO's PyTorch
frontend has no rule for ``scan``, its ONNX frontend reads an ONNX ``Scan`` as one ``TensorIterator``
(a loop the CPU plugin runs, not thousands of unrolled nodes). Which path was used, and why, is recorded
in ``details["source"]``.

Attention masks. An SDPA mask that broadcasts over the queries ([..., 1, Lk]: a key-padding mask, or a
boolean mask) is expanded to [..., Lq, Lk] before saving: OpenVINO 2026.4's CPU plugin computes the
broadcast form wrongly in int8 and under the bf16 hint (``broadcast_query_masks``, ``details["attention_masks"]``).

Precisions:
    fp32          weights and compute in fp32 (IR saved with ``compress_to_fp16=False``: the
                  default fp16 compression alone costs ~1e-4 relative error).
    fp16          fp16-compressed weights (decompressed on load; compute follows the runtime's hint).
    int8          static post-training quantization, ``nncf.quantize`` on the job's calibration data;
                  ``ModelType.TRANSFORMER`` when the graph has attention (Softmax/SDPA), the PERFORMANCE
                  preset (symmetric activations; option ``int8_preset=mixed`` for NNCF's MIXED), fast
                  bias correction, the ``ignored_scope`` option for layers that must stay float.
    int8-weights  ``nncf.compress_weights`` INT8_ASYM (weights only; activations float).
    int4-weights  ``nncf.compress_weights`` INT4_SYM, group-wise; layers whose input channels do not
                  split into groups get a smaller group (ADJUST), the first/last layers and layers
                  outside ``ratio`` keep the INT8_ASYM backup. The per-layer outcome is recorded.
"""
from __future__ import annotations

import re
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from edge.converters.base import KEEP_FLOAT, ConversionJob, ConversionResult, Converter, Option, in_kept, kept_float
from edge.errors import ConversionError, UsageError

RECURRENT_MODULES = ("GRU", "LSTM", "RNN")
ATTENTION_OPS = ("Softmax", "ScaledDotProductAttention")
WEIGHT_OPS = ("MatMul", "Convolution", "GroupConvolution", "Gather")
QUANTIZABLE_OPS = ("MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData", "Add", "Multiply",
                   "AvgPool", "MaxPool", "ReduceMean", "ScaledDotProductAttention", "Concat")


class OpenVinoConverter(Converter):
    name = "openvino"
    format = "openvino-ir"
    runtime = "openvino"
    extra = "openvino"
    requires = ("openvino", "nncf")
    precisions = ("fp32", "fp16", "int8", "int8-weights", "int4-weights")
    needs_calibration = ("int8",)
    options = {
        "source": Option("auto", ("auto", "program", "module", "onnx"),
                         "which graph convert_model gets (onnx: the program exported to ONNX first)"),
        "int4_group_size": Option(64, (32, 64, 128), "int4-weights: weights per quantization group"),
        "int4_ratio": Option(1.0, (1.0, 0.8, 0.6), "int4-weights: share of weight layers put in int4 (rest int8)"),
        "int8_model_type": Option("auto", ("auto", "transformer", "cnn"), "int8: NNCF's model type"),
        "int8_preset": Option("performance", ("performance", "mixed"),
                              "int8: NNCF preset (symmetric / asymmetric activations)"),
        "ignored_scope": Option((), help="int8: regexes of node names kept in float (comma-separated)", kind=list),
        "keep_float": KEEP_FLOAT,
    }
    forms = {"attention_qkv": "split", "rnn": "native", "layernorm2d": "channels-first",
             "mingru_layout": "position-major"}
    sources = ("program", "module")   # the module: a fallback when no program was captured and the RNN path

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        out = super().resolve_options(given)
        for pattern in out["ignored_scope"]:
            try:
                re.compile(pattern)
            except re.error as e:
                raise UsageError(f"openvino option ignored_scope {pattern!r} is not a valid regex ({e}); "
                                 f"pass patterns of node names, e.g. '.*head.*'") from None
        return out

    def convert(self, job: ConversionJob) -> ConversionResult:
        self.require()
        import openvino as ov
        details: dict[str, Any] = {}
        # the ONNX route's intermediate file lives here until the IR is saved (OpenVINO may map its weights)
        with tempfile.TemporaryDirectory(prefix="edge-openvino-") as scratch:
            model = to_openvino(job, details, Path(scratch))
            if job.precision == "int8":
                model = quantize_int8(model, job, details)
            elif job.precision == "int8-weights":
                model = compress_weights(model, job, details, bits=8)
            elif job.precision == "int4-weights":
                model = compress_weights(model, job, details, bits=4)
            xml = job.out_dir / "model.xml"
            compress = job.precision == "fp16"
            ov.save_model(model, str(xml), compress_to_fp16=compress)
            details["op_histogram"] = op_histogram(model)
            details["constants"] = constant_types(model)
        details["weights_saved_as"] = "fp16" if compress else ("fp32 (plus compressed weights)"
                                                               if "weights" in job.precision else "fp32")
        return ConversionResult(files=["model.xml", "model.bin"], details=details)


def _has_recurrent(module: Any) -> list[str]:
    return sorted({type(m).__name__ for m in module.modules() if type(m).__name__ in RECURRENT_MODULES
                   and type(m).__module__.startswith("torch.nn")})


def _from_program(job: ConversionJob):
    import openvino as ov
    from edge.passes.graph import whole_input_pools
    program, _ = whole_input_pools(job.require_program("openvino"))   # a pool window larger than the map
    return ov.convert_model(program)


def ov_shape(spec: Any):
    """The manifest's shape as an OpenVINO PartialShape (a string marks a dynamic dim)."""
    import openvino as ov
    return ov.PartialShape([-1 if isinstance(d, str) else int(d) for d in spec.shape])


def _from_module(job: ConversionJob):
    import openvino as ov
    import torch
    inputs = None
    if job.dynamic_batch:   # the traced module gets static shapes unless told which dims are dynamic
        inputs = [ov_shape(t) for t in job.inputs]
    with torch.no_grad():
        return ov.convert_model(job.module.eval(), example_input=tuple(job.example_inputs), input=inputs)


def _loops(program: Any) -> int:
    """How many ``torch.scan`` loops ``program`` holds (OpenVINO's PyTorch frontend converts none)."""
    if program is None:
        return 0
    import torch
    return sum(1 for n in program.graph_module.graph.nodes if n.target is torch.ops.higher_order.scan)


def _from_onnx(job: ConversionJob, scratch: Path, details: dict[str, Any]):
    """The program exported to ONNX by the ONNX target's exporter, read by OpenVINO's ONNX frontend."""
    import openvino as ov
    from edge.converters.onnx import export_to
    path = scratch / "model.onnx"
    exported: dict[str, Any] = {}
    export_to(path, job, exported)
    details["onnx_exporter"] = exported.get("exporter")
    return ov.convert_model(str(path))


def to_openvino(job: ConversionJob, details: dict[str, Any], scratch: Path):
    """The ov.Model of ``job`` from the program, the module or the program's ONNX export (see the module
    docstring); ``scratch`` is a folder for the ONNX route's file."""
    choice = job.options.get("source", "auto")
    recurrent = _has_recurrent(job.module)
    loops = _loops(job.program)
    if choice == "auto":
        if loops:
            order, why = ["onnx", "module"], (f"the program holds {loops} torch.scan loop(s): OpenVINO's PyTorch "
                                              f"frontend has no rule for scan, its ONNX frontend reads ONNX Scan "
                                              f"as a TensorIterator")
        elif job.program is None or recurrent:
            order, why = ["module", "program"], (f"the module holds {', '.join(recurrent)} (kept as one "
                                                 f"*Sequence op from the module, unrolled from the program)"
                                                 if recurrent else "no captured program")
        else:
            order, why = ["program", "module"], "no recurrent layers: the shared captured program converts directly"
    else:
        order, why = [choice], "option source=" + choice
    errors = []
    for src in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = (_from_program(job) if src == "program" else _from_module(job) if src == "module"
                         else _from_onnx(job, scratch, details))
        except Exception as e:  # the frontends raise many types: keep each reason, try the next path
            errors.append(f"from the {src}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}")
            continue
        details["source"] = {"converted_from": {"program": "ExportedProgram", "module": "module (TorchScript trace)",
                                                "onnx": "ONNX export of the ExportedProgram"}[src],
                             "reason": why if not errors else f"fallback after: {'; '.join(errors)}"}
        for out, spec in zip(model.outputs, job.outputs):
            out.get_tensor().set_names({spec.name})
        # convert_model(ExportedProgram) leaves every input dim dynamic ([?,?,?,?]) even for a static
        # capture: the CPU plugin then re-infers shapes on each call and benchmark_app refuses the IR.
        # Pin the manifest's shapes (only the batch stays dynamic when asked for).
        before = [str(i.get_partial_shape()) for i in model.inputs]
        model.reshape({inp: ov_shape(spec) for inp, spec in zip(model.inputs, job.inputs)})
        details["input_shapes"] = {"from_frontend": before, "saved": [str(i.get_partial_shape()) for i in model.inputs]}
        for inp, spec in zip(model.inputs, job.inputs):
            inp.get_tensor().set_names({spec.name})
        if broadcast_query_masks(model):
            details["attention_masks"] = MASK_WORKAROUND
        return model
    raise ConversionError("openvino.convert_model failed " + "; ".join(errors) +
                          "; try another path with options={'source': 'module'|'program'|'onnx'} or report the op")


MASK_WORKAROUND = ("every ScaledDotProductAttention mask broadcast over the query dim ([..., 1, Lk]) is expanded to "
                   "[..., Lq, Lk]: OpenVINO 2026.4's CPU plugin computes such a mask wrongly under the bf16 hint and "
                   "in int8 (cosine 0.01-0.79 to PyTorch; tests/test_openvino.py::test_query_broadcast_mask)")


def broadcast_query_masks(model: Any) -> int:
    """Expand each SDPA attention mask that broadcasts over the queries to the full [..., Lq, Lk].

    OpenVINO 2026.4's CPU plugin runs SDPA with a [..., 1, Lk] mask (a key-padding mask, also what a
    boolean mask becomes) correctly in f32 but wrongly in its bf16 attention kernels and in int8
    (NNCF-quantized) attention; a full-size mask is right in all three. Constant masks fold to a
    constant on compile; a mask computed in the graph gets a Broadcast to Q's length. Returns how many
    masks were expanded.
    """
    import numpy as np
    import openvino.opset13 as ops
    n = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "ScaledDotProductAttention" or op.get_input_size() < 4:
            continue
        mask = op.input_value(3)
        shape = mask.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() < 2:
            continue
        rank = shape.rank.get_length()
        rows = shape[rank - 2]
        if not (rows.is_static and rows.get_length() == 1):
            continue
        q_len = ops.gather(ops.shape_of(op.input_value(0)), ops.constant(np.array([-2], np.int64)),
                           ops.constant(np.int64(0)))
        target = ops.concat([ops.constant(np.ones(rank - 2, np.int64)), q_len, ops.constant(np.ones(1, np.int64))], 0)
        op.input(3).replace_source_output(ops.broadcast(mask, target, broadcast_spec="BIDIRECTIONAL").output(0))
        n += 1
    if n:
        model.validate_nodes_and_infer_types()
    return n


def op_histogram(model: Any) -> dict[str, int]:
    ops = Counter(op.get_type_name() for op in model.get_ops())
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def constant_types(model: Any) -> dict[str, int]:
    """Element types of the Constant nodes (shows how many weights are i8/u8/i4/u4 after compression)."""
    c = Counter(op.get_output_element_type(0).get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"
                and op.get_output_partial_shape(0).rank.get_length() >= 1)
    return dict(sorted(c.items()))


def has_attention(model: Any) -> bool:
    return any(op.get_type_name() in ATTENTION_OPS for op in model.get_ops())


def quantize_int8(model: Any, job: ConversionJob, details: dict[str, Any]):
    """Static int8 PTQ with NNCF on the job's calibration data."""
    import nncf
    if job.calibration is None or len(job.calibration) == 0:
        raise ConversionError("int8 for openvino needs calibration data; pass calib=... (--calib)")
    names = [t.name for t in job.inputs]
    samples = list(job.calibration.samples)
    dataset = nncf.Dataset(samples, lambda s: dict(zip(names, s)))
    kind = job.options.get("int8_model_type", "auto")
    attention = has_attention(model)
    transformer = kind == "transformer" or (kind == "auto" and attention)
    scope = job.options.get("ignored_scope") or []
    float_names = float_ops(model, job)
    ignored = nncf.IgnoredScope(patterns=list(scope) + [f"^{re.escape(n)}$" for n in float_names],
                                validate=False) if scope or float_names else None
    # PERFORMANCE (symmetric activations) also for transformers, where NNCF suggests MIXED: measured in one
    # run (benchmarks/openvino_vs_eager.py --presets mixed,performance), vit_tiny 6.99 -> 6.21 ms, digits
    # 0.632 -> 0.520 ms, the same digits test-set agreement (0.9972) and accuracy (0.9805; fp32 0.9833)
    mixed = job.options.get("int8_preset", "performance") == "mixed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            q = nncf.quantize(model, dataset, subset_size=len(samples), fast_bias_correction=True,
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                              preset=nncf.QuantizationPreset.MIXED if mixed else nncf.QuantizationPreset.PERFORMANCE,
                              ignored_scope=ignored)
        except Exception as e:
            raise ConversionError(f"nncf.quantize failed: {type(e).__name__}: {e}") from e
    fq = sum(op.get_type_name() == "FakeQuantize" for op in q.get_ops())
    details["quantization"] = {
        "tool": "nncf.quantize", "nncf_version": nncf.__version__,
        "model_type": "TRANSFORMER" if transformer else "default",
        "model_type_reason": f"option {kind}" if kind != "auto" else
        ("graph has attention (Softmax/SDPA)" if attention else "no attention ops in the graph"),
        "preset": "MIXED" if mixed else "PERFORMANCE", "fast_bias_correction": True,
        "subset_size": len(samples), "ignored_scope": list(scope), "fake_quantize_ops": fq,
        "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor (asymmetric where MIXED)"}
    if float_names:
        details["quantization"]["kept_float"] = {"modules": sorted(kept_float(job)), "ignored_ops": len(float_names)}
    if fq == 0:
        raise ConversionError("nncf.quantize inserted no quantizers: the model has no quantizable layers "
                              "(or the ignored_scope covers them all); use int8-weights or fp16")
    return q


def float_ops(model: Any, job: ConversionJob) -> list[str]:
    """Names of the ops inside the modules kept in float (NNCF ``ignored_scope`` names)."""
    kept = kept_float(job)
    if not kept:
        return []
    from edge.debugger.openvino import _scopes, fx_scopes
    by_fx = fx_scopes(job.program)
    # only the ops NNCF quantizes: ignoring others (an Add after a MatMul) made its statistics collection look
    # for an output tensor by that op's name and fail ("Port for tensor name ... was not found")
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZABLE_OPS
            and in_kept(_scopes(op.get_friendly_name(), by_fx), kept)]


def compress_weights(model: Any, job: ConversionJob, details: dict[str, Any], *, bits: int):
    """Weight-only compression; for int4 record which layers ended in int4 and which in the int8 backup."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode
    before = _weight_layers(model)
    kw: dict[str, Any] = {}
    if bits == 8:
        kw["mode"] = nncf.CompressWeightsMode.INT8_ASYM
    else:
        kw.update(mode=nncf.CompressWeightsMode.INT4_SYM, group_size=int(job.options.get("int4_group_size", 64)),
                  ratio=float(job.options.get("int4_ratio", 1.0)), backup_mode=nncf.BackupMode.INT8_ASYM,
                  advanced_parameters=AdvancedCompressionParameters(
                      group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=16))
    scope = job.options.get("ignored_scope") or []
    if scope:
        kw["ignored_scope"] = nncf.IgnoredScope(patterns=list(scope), validate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            c = nncf.compress_weights(model, **kw)
        except Exception as e:
            raise ConversionError(f"nncf.compress_weights ({kw['mode'].value}) failed: {type(e).__name__}: {e}") from e
    layers = _compressed_layers(c)
    by_type = Counter(layers.values())
    rec: dict[str, Any] = {"tool": "nncf.compress_weights", "nncf_version": nncf.__version__,
                           "mode": kw["mode"].value, "weight_layers": before, "compressed": dict(by_type)}
    if bits == 4:
        rec.update(group_size=kw["group_size"], ratio=kw["ratio"], backup_mode="int8_asym",
                   group_size_fallback="adjust (smaller group when channels do not divide; min 16)",
                   int4_layers=sorted(n for n, t in layers.items() if t in ("i4", "u4")),
                   backup_layers=sorted(n for n, t in layers.items() if t in ("i8", "u8")))
        if not any(t in ("i4", "u4") for t in layers.values()):
            raise ConversionError("int4-weights: NNCF left no layer in int4 (all fell back to int8); "
                                  "use int8-weights or a smaller int4_group_size")
    details["quantization"] = rec
    return c


def _weight_layers(model: Any) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() in ("MatMul", "Convolution")
               and any(i.get_source_output().get_node().get_type_name() in ("Constant", "Convert", "Multiply")
                       for i in op.inputs()[1:]))


def _compressed_layers(model: Any) -> dict[str, str]:
    """Name of each weight layer with low-bit weights (its consuming MatMul/Convolution/Gather) -> i4/u4/i8/u8."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_output_partial_shape(0).rank.get_length() < 2:
            continue
        t = op.get_output_element_type(0).get_type_name()
        if t not in ("i4", "u4", "i8", "u8") or op.get_friendly_name().endswith("zero_point"):
            continue
        node, name = op, op.get_friendly_name()
        for _ in range(6):   # Constant -> Convert -> Subtract -> Multiply -> Reshape -> MatMul
            users = [i.get_node() for o in node.outputs() for i in o.get_target_inputs()]
            if not users:
                break
            node = users[0]
            if node.get_type_name() in WEIGHT_OPS:
                name = node.get_friendly_name()
                break
        out[name] = t
    return out
