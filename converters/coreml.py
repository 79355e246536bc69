"""CoreML target: an ML Program (``model.mlpackage``) from the captured ExportedProgram with coremltools.

Precisions: ``fp16`` (fp16 compute, Apple's recommendation), ``fp32``, and compressed forms built on
the fp16 program with ``coremltools.optimize.coreml``: ``int8-weights`` (per-channel symmetric linear
quantization), ``palettize4`` / ``palettize6`` (k-means look-up tables), ``w8a8`` (int8 activations
calibrated by running the model, so it needs macOS, plus int8 weights). Inputs and outputs stay float32.

Off macOS nothing can run a CoreML model, so every artifact is checked here without loading it for
prediction: the spec's deployment version, input/output names, shapes and types, that every MIL op
exists in the target's opset, and that attention arrived as the fused ``scaled_dot_product_attention``
op where the target has it (iOS18/macOS15). A failed check raises ConversionError.
"""
from __future__ import annotations

import contextlib
import io
import platform
from collections import Counter
from typing import Any

from edge.converters.base import ConversionJob, ConversionResult, Converter, Option, Recipe
from edge.errors import ConversionError, PlatformError, UsageError

# deployment target -> (coremltools.target attribute, spec version, has fused SDPA)
TARGETS = {"iOS18": ("iOS18", 9), "iOS17": ("iOS17", 8), "macOS14": ("macOS14", 8), "macOS15": ("macOS15", 9)}
SDPA_SPEC_VERSION = 9          # scaled_dot_product_attention is an iOS18 / macOS15 op
ACTIVATION_QUANT_SPEC_VERSION = 8   # quantize/dequantize of activations: iOS17 / macOS14
COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_only": "CPU_ONLY"}
NOT_MACOS = f"CoreML prediction needs macOS (this is {platform.system() or 'not macOS'})"
WEIGHT_THRESHOLD = 512         # tensors smaller than this stay fp16 (biases, norms)


class CoreMLConverter(Converter):
    name = "coreml"
    format = "mlpackage"
    runtime = "coreml"
    extra = "coreml"
    requires = ("coremltools",)
    precisions = ("fp16", "fp32", "int8-weights", "palettize4", "palettize6", "w8a8")
    needs_calibration = ("w8a8",)
    options = {"coreml_target": Option("iOS18", tuple(TARGETS),
                                       "CoreML deployment target"),
               "compute_units": Option(next(iter(COMPUTE_UNITS)), tuple(COMPUTE_UNITS), "CoreML compute units"),
               "image_input": Option(False, (False, True), "take an RGB/grayscale image input (normalization inside)")}

    def can_execute(self) -> str | None:
        return None if platform.system() == "Darwin" else NOT_MACOS

    def recipe(self, job: ConversionJob) -> Recipe | None:
        """``image_input`` with a per-channel std: the normalization goes in front of the model (Core ML's image
        preprocessing has one scale), captured by the pipeline."""
        if not job.options.get("image_input"):
            return None
        _, std, _ = _normalization(job)
        return Recipe("normalization in front", _normalize_in_front) if len(set(std)) != 1 else None

    def convert(self, job: ConversionJob) -> ConversionResult:
        self.require()
        target = job.options.get("coreml_target", "iOS18")
        spec_version = TARGETS[target][1]
        if job.precision == "w8a8":
            if spec_version < ACTIVATION_QUANT_SPEC_VERSION:
                raise UsageError(f"w8a8 needs activation quantization, which Core ML has from iOS17/macOS14; "
                                 f"--coreml-target {target} lacks it: use iOS17 or later")
            if platform.system() != "Darwin":
                raise PlatformError("w8a8 calibrates activations by running the model with Core ML, which needs "
                                    f"macOS ({NOT_MACOS}); on Linux use int8-weights or palettize6")
        log = io.StringIO()
        with contextlib.redirect_stderr(log):   # coremltools prints progress bars and import chatter
            import coremltools as ct
            mlmodel, details = self._convert(ct, job, target)
            details.update(self._compress(ct, mlmodel, job, details))
            mlmodel = details.pop("_model")
            path = job.out_dir / "model.mlpackage"
            mlmodel.save(str(path))
        details.update(check_package(path, job, target, program=job.program))
        return ConversionResult(files=["model.mlpackage"], details=details)

    def _convert(self, ct: Any, job: ConversionJob, target: str) -> tuple[Any, dict[str, Any]]:
        import numpy as np
        program = job.require_program(self.name)
        import torch
        if any(n.target is torch.ops.higher_order.scan for n in program.graph.nodes):
            raise UsageError("Core ML has no loop for torch.scan, which the pass option mingru_form='loop' or "
                             "'stripe_loop' makes; convert with mingru_form='striped' (the same stripes unrolled) "
                             "or without the option")
        details = {"coreml_target": target, "compute_units": job.options.get("compute_units", "all")}
        image = bool(job.options.get("image_input"))
        if image:
            program, in_types, details["image_input"] = _image_inputs(ct, job)
        else:
            in_types = [ct.TensorType(name=t.name, shape=_ct_shape(ct, t.shape), dtype=np.float32) for t in job.inputs]
        out_types = [ct.TensorType(name=t.name, dtype=np.float32) for t in job.outputs]
        fp32 = job.precision == "fp32"

        def convert(table: dict | None, fold: bool = False) -> Any:
            ep = program.run_decompositions(table)
            if fold:
                from edge.passes.graph import fold_constants
                details["constants_folded"] = fold_constants(ep)
            details["sdpa_default_scale_dropped"] = drop_default_sdpa_scale(ep)
            details["aliases_removed"] = drop_aliases(ep)
            from edge.passes.rank import lower_rank
            # Core ML takes rank <= 5 (Hiera's 6-D unroll/reroll); checked bit-identical on the example, since
            # the package cannot be run here
            lowered = lower_rank(ep, tuple(job.example_inputs))
            if lowered:
                details["rank_lowered"] = f"{lowered} tensor(s) of rank > 5 rewritten with rank <= 5 ops"
            return ct.convert(ep, convert_to="mlprogram", inputs=in_types, outputs=out_types,
                              minimum_deployment_target=getattr(ct.target, TARGETS[target][0]),
                              compute_precision=ct.precision.FLOAT32 if fp32 else ct.precision.FLOAT16,
                              compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[details["compute_units"]]),
                              skip_model_load=True)
        try:
            try:
                with _silenced("coremltools"):   # its error log of a failure the next try recovers from
                    mlmodel = convert(_extra_decompositions())
                details["converted_from"] = "ExportedProgram.run_decompositions(new_ones/new_zeros/new_full/new_empty)"
            except Exception as first:
                # an op coremltools has no converter for (Dinov2's bicubic resize, BEiT's select_scatter on
                # int64): the default core-ATen decomposition table writes it with ops it has. Fused attention
                # is kept in the first try, so the full table is only the fallback.
                try:
                    with _silenced("coremltools"):
                        mlmodel = convert(_core_decompositions())
                    details["converted_from"] = (f"ExportedProgram.run_decompositions(core ATen table but SDPA; the "
                                                 f"narrow table failed: {type(first).__name__}: "
                                                 f"{_first_line(first)[:200]})")
                except Exception as second:
                    # an op no table decomposes, computed from weights alone (Dinov2-with-registers' antialiased
                    # bicubic resize of its position table): PyTorch computes it once, as a constant
                    if not _has_executorch():
                        raise
                    mlmodel = convert(_core_decompositions(), fold=True)
                    details["converted_from"] = (f"ExportedProgram.run_decompositions(core ATen table but SDPA) with "
                                                 f"its weight-only subgraphs folded to constants; without folding: "
                                                 f"{type(second).__name__}: {_first_line(second)[:200]}")
        except Exception as e:
            msg = _first_line(e)
            hint = ""
            if "gru" in msg.lower() or "lstm" in msg.lower():
                hint = ("; coremltools cannot convert aten.gru/aten.lstm from a program: keep the gru/lstm optimize "
                        "passes on (do not pass --no-optimize or --disable-pass gru)")
            raise ConversionError(f"coremltools could not convert the model for {target}: {type(e).__name__}: "
                                  f"{msg}{hint}") from e
        details["compute_precision"] = "float32" if fp32 else "float16"
        return mlmodel, details

    def _compress(self, ct: Any, mlmodel: Any, job: ConversionJob, details: dict[str, Any]) -> dict[str, Any]:
        import coremltools.optimize.coreml as cto
        p = job.precision
        out: dict[str, Any] = {"_model": mlmodel}
        try:
            if p == "int8-weights":
                cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                                  weight_threshold=WEIGHT_THRESHOLD)
                out["_model"] = cto.linear_quantize_weights(mlmodel, config=cto.OptimizationConfig(global_config=cfg))
                out["compression"] = {"tool": "coremltools.optimize.coreml.linear_quantize_weights",
                                      "weights": "int8 per-channel symmetric", "weight_threshold": WEIGHT_THRESHOLD}
            elif p in ("palettize4", "palettize6"):
                nbits = int(p[-1])
                cfg = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor",
                                             weight_threshold=WEIGHT_THRESHOLD)
                out["_model"] = cto.palettize_weights(mlmodel, config=cto.OptimizationConfig(global_config=cfg))
                out["compression"] = {"tool": "coremltools.optimize.coreml.palettize_weights", "mode": "kmeans",
                                      "nbits": nbits, "granularity": "per_tensor", "weight_threshold": WEIGHT_THRESHOLD}
            elif p == "w8a8":
                names = [t.name for t in job.inputs]
                samples = [dict(zip(names, s)) for s in job.calibration.samples]
                act = cto.OpLinearQuantizerConfig(mode="linear_symmetric")
                m = cto.linear_quantize_activations(mlmodel, cto.OptimizationConfig(global_config=act), samples)
                wcfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                                   weight_threshold=WEIGHT_THRESHOLD)
                out["_model"] = cto.linear_quantize_weights(m, config=cto.OptimizationConfig(global_config=wcfg))
                out["compression"] = {"tool": "coremltools.optimize.coreml.linear_quantize_activations + "
                                              "linear_quantize_weights", "weights": "int8 per-channel symmetric",
                                      "activations": "int8 symmetric", "calibration_samples": len(samples)}
        except (PlatformError, UsageError):
            raise
        except Exception as e:
            raise ConversionError(f"coremltools could not compress the model to {p}: {type(e).__name__}: "
                                  f"{_first_line(e)}") from e
        return out


def _extra_decompositions() -> dict:
    """ATen ops coremltools has no converter for, decomposed to ones it has (``new_ones`` -> ``full``...,
    ``adaptive_avg_pool1d(x, 1)`` -> ``mean``)."""
    import torch
    from torch._decomp import get_decompositions
    aten = torch.ops.aten
    from edge.passes.graph import _adaptive_avg_pool1d
    table = get_decompositions([aten.new_ones, aten.new_zeros, aten.new_full, aten.new_empty])
    # a global 1-D average pooling (Hiera's pooler) as the mean it is: coremltools has no adaptive_avg_pool1d,
    # and the core table writes it with as_strided, which it has no converter for either
    table[aten.adaptive_avg_pool1d.default] = _adaptive_avg_pool1d
    return table


@contextlib.contextmanager
def _silenced(logger: str):
    import logging
    log = logging.getLogger(logger)
    disabled, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = disabled


def _has_executorch() -> bool:
    import importlib.util
    return importlib.util.find_spec("executorch") is not None


def _core_decompositions() -> Any:
    """torch.export's core ATen table, SDPA kept (coremltools emits the fused iOS18 attention op from it)."""
    import torch
    from torch.export import default_decompositions
    from edge.passes.graph import _adaptive_avg_pool1d
    table = default_decompositions()
    table.pop(torch.ops.aten.scaled_dot_product_attention.default, None)
    table[torch.ops.aten.adaptive_avg_pool1d.default] = _adaptive_avg_pool1d   # not as_strided: see above
    return table


def _ct_shape(ct: Any, shape: list[int | str]) -> Any:
    if any(isinstance(d, str) for d in shape):
        return ct.Shape(shape=[ct.RangeDim(1, 1024, default=1) if isinstance(d, str) else int(d) for d in shape])
    return tuple(int(d) for d in shape)


def _normalization(job: ConversionJob) -> tuple[list[float], list[float], float]:
    """(mean, std, scale) of the model's one [N, C, H, W] image input; a UsageError says what is missing."""
    pre = job.model_info.get("preprocessing") or {}
    if len(job.inputs) != 1 or len(job.inputs[0].shape) != 4:
        raise UsageError("image_input needs a model with one [N, C, H, W] input")
    if not pre.get("mean") or not pre.get("std"):
        raise UsageError("image_input needs the model's normalization (mean/std), which this model does not "
                         "declare; convert without image_input and normalize inputs yourself")
    channels = int(job.inputs[0].shape[1])
    if channels not in (1, 3):
        raise UsageError(f"image_input needs 1 (grayscale) or 3 (RGB) channels; input {job.inputs[0].name!r} has "
                         f"{channels}")
    return [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]], float(pre.get("scale", 1 / 255))


def _normalize_in_front(module: Any, job: ConversionJob, details: dict[str, Any]) -> Any:
    """``module`` behind a per-channel multiply/add that applies the model's normalization (the recipe's transform)."""
    import torch
    mean, std, scale = _normalization(job)

    class Normalize(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner
            self.register_buffer("mul", torch.tensor([scale / s for s in std]).view(1, -1, 1, 1))
            self.register_buffer("add", torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> Any:
            return self.inner(x * self.mul + self.add)
    details["source"] = "the module behind its per-channel normalization, captured by the pipeline"
    return Normalize(module).eval()


def _image_inputs(ct: Any, job: ConversionJob) -> tuple[Any, list[Any], dict[str, Any]]:
    """ImageType input(s) applying the model's normalization: ``(pixel * scale - mean) / std`` per channel.

    Core ML's image preprocessing has one scale and a bias per channel, so a per-channel std is
    folded into the program instead (the converter's recipe: a multiply/add in front of the model).
    """
    mean, std, scale = _normalization(job)
    spec = job.inputs[0]
    channels = int(spec.shape[1])
    layout = ct.colorlayout.GRAYSCALE if channels == 1 else ct.colorlayout.RGB
    program = job.require_program("coreml")
    folded = len(set(std)) != 1
    if folded:
        img_scale, bias = 1.0, [0.0] * channels
    else:
        img_scale, bias = scale / std[0], [-m / std[0] for m in mean]
    t = ct.ImageType(name=spec.name, shape=_ct_shape(ct, spec.shape), scale=img_scale,
                     bias=bias[0] if channels == 1 else bias, color_layout=layout)
    record = {"color_layout": "GRAYSCALE" if channels == 1 else "RGB", "scale": img_scale, "bias": bias,
              "normalization_in_program": folded, "pixel_range": [0, 255]}
    return program, [t], record


def mil_ops(spec: Any) -> tuple[Counter, str]:
    """Histogram of the ML program's ops (nested blocks of loops and conditionals included) and its opset."""
    fn = spec.mlProgram.functions["main"]
    counts: Counter = Counter()

    def walk(block: Any) -> None:
        for op in block.operations:
            counts[op.type] += 1
            for inner in op.blocks:
                walk(inner)

    walk(fn.block_specializations[fn.opset])
    return counts, fn.opset


def drop_default_sdpa_scale(program: Any) -> int:
    """Remove ``scale=`` from SDPA calls where it equals the default ``head_dim ** -0.5``; returns how many.

    coremltools emits the fused iOS18 ``scaled_dot_product_attention`` op only when no scale is given
    (the Core ML op has no scale input); an explicit default scale would otherwise be decomposed into
    matmul/softmax. The numbers are unchanged.
    """
    n = 0
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function" or "scaled_dot_product_attention" not in str(node.target):
            continue
        scale = node.kwargs.get("scale")
        q = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
        if scale is None or q is None or not isinstance(q.shape[-1], int):
            continue
        if abs(float(scale) - q.shape[-1] ** -0.5) <= 1e-7 * abs(float(scale)):
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "scale"}
            n += 1
    if n:
        program.graph_module.recompile()
    return n


def drop_aliases(program: Any) -> int:
    """Replace ``aten.alias`` (an identity view coremltools has no converter for) by its input; returns how many.

    An alias the program returns (Swin2SR's output) becomes a ``clone`` of the same name instead: coremltools
    looks the outputs up by the names in the graph signature, and a removed node's name is not found there
    ("Torch var alias not found in context"); ``clone`` is one of its no-ops.
    """
    import torch
    targets = {torch.ops.aten.alias.default, getattr(torch.ops.aten, "alias_copy").default}
    graph, n = program.graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in targets and any(u.op == "output" for u in node.users):
            node.target = torch.ops.aten.clone.default
            n += 1
        elif node.op == "call_function" and node.target in targets:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            n += 1
    if n:
        program.graph_module.recompile()
    return n


def _sdpa_in_program(program: Any) -> int:
    """Attention calls that read the model's inputs: one on weights and constants alone (DETR's first decoder
    self-attention, over zero queries and learned position embeddings) is a constant coremltools folds away."""
    inputs = {spec.arg.name for spec in program.graph_signature.input_specs
              if spec.kind.name == "USER_INPUT" and hasattr(spec.arg, "name")}
    live: set = set()
    count = 0
    for n in program.graph.nodes:
        if n.op == "placeholder":
            if n.name in inputs:
                live.add(n)
        elif any(a in live for a in n.all_input_nodes):
            live.add(n)
            count += n.op == "call_function" and "scaled_dot_product" in str(n.target)
    return count


def check_package(path: Any, job: ConversionJob, target: str, program: Any = None) -> dict[str, Any]:
    """Check the saved package's spec against the job; raise ConversionError on any mismatch.

    Returns the details to record: spec version, opset, I/O as written, the MIL op histogram.
    """
    import coremltools as ct
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    def fail(what: str) -> None:
        raise ConversionError(f"the CoreML package {path.name} failed its spec check: {what}; this is a converter "
                              f"bug or an unsupported model: report it with the manifest's details")

    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as e:
        raise ConversionError(f"the saved CoreML package {path} cannot be read back: {type(e).__name__}: "
                              f"{_first_line(e)}") from e
    want_version = TARGETS[target][1]
    if spec.specificationVersion < want_version:
        fail(f"spec version {spec.specificationVersion} is below {want_version} ({target})")
    if not spec.HasField("mlProgram"):
        fail("it is not an ML Program")
    image = bool(job.options.get("image_input"))
    got_in = list(spec.description.input)
    if [i.name for i in got_in] != [t.name for t in job.inputs]:
        fail(f"inputs are {[i.name for i in got_in]}, expected {[t.name for t in job.inputs]}")
    for want, got in zip(job.inputs, got_in):
        kind = got.type.WhichOneof("Type")
        if image:
            if kind != "imageType":
                fail(f"input {want.name!r} is a {kind}, expected an image")
            if [got.type.imageType.height, got.type.imageType.width] != [int(d) for d in want.shape[2:]]:
                fail(f"image input {want.name!r} is {got.type.imageType.height}x{got.type.imageType.width}, "
                     f"expected {want.shape[2]}x{want.shape[3]}")
            continue
        arr = got.type.multiArrayType
        if kind != "multiArrayType" or arr.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
            fail(f"input {want.name!r} is not a float32 multi-array")
        if [int(d) for d in arr.shape] != list(want.concrete_shape(1)):
            fail(f"input {want.name!r} has shape {list(arr.shape)}, expected {want.shape}")
        if job.dynamic_batch and (not arr.HasField("shapeRange") or arr.shapeRange.sizeRanges[0].upperBound in (0, 1)):
            fail(f"input {want.name!r} should have a flexible batch dimension")
    got_out = list(spec.description.output)
    if [o.name for o in got_out] != [t.name for t in job.outputs]:
        fail(f"outputs are {[o.name for o in got_out]}, expected {[t.name for t in job.outputs]}")
    for want, got in zip(job.outputs, got_out):
        arr = got.type.multiArrayType
        if arr.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
            fail(f"output {want.name!r} is not float32")
        if len(arr.shape) and [int(d) for d in arr.shape] != list(want.concrete_shape(1)):
            fail(f"output {want.name!r} has shape {list(arr.shape)}, expected {want.shape}")
    ops, opset = mil_ops(spec)
    known = SSAOpRegistry.core_ops
    for op in ops:
        versions = known.get(op, {})
        if not any(int(v.value) <= want_version for v in versions):
            fail(f"op {op!r} is not in Core ML's opset for {target}")
    sdpa = _sdpa_in_program(program) if program is not None else 0
    attention = None
    if sdpa:
        fused = ops.get("scaled_dot_product_attention", 0)
        # a call coremltools keeps unfused must still be there, as a softmax; fewer attention ops than calls
        # on the inputs is a converter bug
        unfused = sdpa - fused
        if want_version >= SDPA_SPEC_VERSION and unfused > 0 and ops.get("softmax", 0) < unfused:
            fail(f"{sdpa} attention call(s) in the program but {fused} fused scaled_dot_product_attention op(s) "
                 f"and {ops.get('softmax', 0)} softmax op(s) in the ML program ({target} has the fused op)")
        attention = ("fused scaled_dot_product_attention" if fused == sdpa else
                     f"{fused} of {sdpa} fused scaled_dot_product_attention, the rest as matmul/softmax" if fused else
                     f"matmul/softmax ({target} has no fused attention op; iOS18/macOS15 do)")
    precision = job.precision
    if precision != "fp32" and not image and "cast" not in ops:
        fail("an fp16 program with float32 inputs should cast them to fp16, and it has no cast op")
    compressed = {"int8-weights": ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize"),
                  "w8a8": ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize"),
                  "palettize4": ("constexpr_lut_to_dense",), "palettize6": ("constexpr_lut_to_dense",)}.get(precision)
    if compressed and not any(ops.get(op) for op in compressed):
        fail(f"{precision} weights should appear as {' or '.join(compressed)} ops, and there are none")
    if precision == "w8a8" and not ops.get("quantize"):
        fail("w8a8 activations should appear as quantize/dequantize ops, and there are none")
    return {"spec_version": int(spec.specificationVersion), "mil_opset": opset,
            "spec_inputs": [i.name for i in got_in], "spec_outputs": [o.name for o in got_out],
            "attention": attention, "mil_op_histogram": dict(ops.most_common()),
            "spec_check": "passed (spec version, I/O names/shapes/types, opset membership of every op"
                          + (", fused attention" if sdpa and want_version >= SDPA_SPEC_VERSION else "") + ")"}


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:400] if s else type(e).__name__
