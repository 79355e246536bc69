"""The ExecuTorch recipes: what each precision does to the model before the pipeline captures it.

    fp16          the module in half precision with fp32 inputs/outputs kept (casts inside the program).
    int8          PT2E static quantization with the XNNPACK quantizer (symmetric, per-channel weights,
                  per-tensor activations calibrated on ``job.calibration``), on the run's captured program;
                  a GRU/LSTM's recurrence (its torch.scan loop body) stays fp32.
    int8-dynamic  PT2E dynamic quantization (activations quantized per call; no calibration).
    8da4w         torchao: 8-bit dynamic activations, 4-bit grouped weights on Linear layers.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from edge.converters.base import ConversionJob, Recipe, in_kept, kept_float
from edge.errors import ConversionError

GROUP_SIZE = 32   # 8da4w weight group (in_features must divide by it; other Linears stay fp32)


def _float_modules() -> tuple[type, ...]:
    """edge's own modules whose elementwise ops stay fp32 under PT2E int8 (their nn.Linear children are
    quantized): a LayerNorm's mul/add quantized one by one cost ~6 int8<->fp32 conversions per LayerNorm and
    precision; XNNPACK runs the attention's bmm in fp32 whatever the quantizer says; a minGRU scan's or a
    GRU/LSTM's gates and states would be rounded at every one of its steps."""
    from edge.passes.attention import EdgeAttention, EdgeLayerNorm
    from edge.passes.recurrent import ChunkedMinGRU, TunedGRU, TunedLSTM
    return EdgeLayerNorm, EdgeAttention, ChunkedMinGRU, TunedGRU, TunedLSTM


# Why the ops inside a loop body (``torch.scan`` / ``while_loop``: the GRU/LSTM recurrence of the ``scan`` form)
# are left unannotated, i.e. fp32. torchao 0.18's prepare_pt2e/convert_pt2e recurse into those bodies, and a
# quantized body holds tensors of its own: the per-channel weight scales and zero points (and the int8 weights,
# when the weights are made body constants first; as loop inputs they are re-quantized at every step). torch.export
# does not lift tensors inside a scan body, and re-tracing such a program (run_decompositions, which
# to_edge_transform_and_lower also runs) fails in torch 2.13 with "Attempting to use FunctionalTensor on its own".
# A recurrence kept in fp32 is also what keeps the state from being rounded to int8 at every step.
LOOP_BODIES_FP32 = ("ops inside torch.scan/while_loop bodies (a GRU/LSTM's recurrent matmul and gates, run once per "
                    "step) are fp32: a PT2E-quantized loop body holds tensor constants that torch.export cannot "
                    "re-trace; the input projections and the layers outside the loop are int8")


def _loop_bodies(graph: Any) -> int:
    """How many loop bodies (``torch.scan`` / ``while_loop`` subgraphs) the top-level graph calls."""
    import torch
    loops = (torch.ops.higher_order.scan, torch.ops.higher_order.while_loop)
    return sum(1 for n in graph.graph.nodes if n.op == "call_function" and n.target in loops)


def _innermost_module(node) -> str | None:
    """Qualified class name of the innermost module a captured node came from."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][1] if stack else None


def pt2e_recipe(job: ConversionJob) -> Recipe:
    """int8 / int8-dynamic: PT2E on the run's captured program (the options it reads are in the key)."""
    dynamic = job.precision == "int8-dynamic"
    key = json.dumps({"pt2e": job.precision, "keep_float": sorted(kept_float(job)),
                      "calib_batches": None if dynamic else job.options.get("calib_batches")}, sort_keys=True)
    return Recipe(key, lambda graph, job, details: pt2e_quantize(graph, job, dynamic=dynamic, details=details),
                  from_program=True)


def pt2e_quantize(graph: Any, job: ConversionJob, *, dynamic: bool, details: dict[str, Any]):
    """PT2E with the XNNPACK quantizer on ``graph`` (the captured program as a module); returns the converted
    module, which the pipeline captures. Ops directly inside ``_float_modules()`` and ops inside loop bodies
    (:data:`LOOP_BODIES_FP32`) are not annotated: fp32, recorded in ``details["quantization"]``.
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    args = tuple(job.example_inputs)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=dynamic))
    floats = _float_modules()
    float_names = {f"{c.__module__}.{c.__qualname__}" for c in floats}
    from edge.debugger import stack_scopes
    kept = kept_float(job)
    top = graph.graph   # prepare_pt2e runs this filter on loop bodies too: their nodes are in other graphs
    quantizer.set_filter_function(lambda node: node.graph is top and _innermost_module(node) not in float_names
                                  and not in_kept(stack_scopes(node.meta), kept))
    loops = _loop_bodies(graph)
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
    if loops:
        details["quantization"]["fp32_loop_bodies"] = {"count": loops, "why": LOOP_BODIES_FP32}
    if kept:
        details["quantization"]["kept_float"] = {"modules": sorted(kept)}
    details["source"] = "the run's program quantized with PT2E, captured again by the pipeline"
    return converted


def fp16_recipe(job: ConversionJob) -> Recipe:
    def half(module: Any, job: ConversionJob, details: dict[str, Any]) -> Any:
        details["source"] = "the module in fp16 with fp32 inputs/outputs, captured by the pipeline"
        return HalfIO(module.half().eval())
    return Recipe("fp16 with fp32 inputs/outputs", half)


def int4_recipe(job: ConversionJob) -> Recipe:
    return Recipe("torchao 8da4w", quantize_8da4w)


def quantize_8da4w(module: Any, job: ConversionJob, details: dict[str, Any]) -> Any:
    """torchao's Int8DynamicActivationIntxWeightConfig on the Linear layers whose in_features divide by GROUP_SIZE."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    from edge.passes.recurrent import TunedGRU, TunedLSTM
    linears = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    # a tuned GRU/LSTM's recurrent matmuls (``hh``) run inside the scan loop, whose body cannot hold torchao's
    # int4 weight tensors (capture fails making fake tensors); they stay fp32, as under int8 (LOOP_BODIES_FP32)
    recurrent = {f"{n}.hh.{i}" for n, m in module.named_modules() if isinstance(m, (TunedGRU, TunedLSTM))
                 for i in range(len(m.hh))}
    chosen = [n for n, m in module.named_modules()
              if isinstance(m, torch.nn.Linear) and m.in_features % GROUP_SIZE == 0 and n not in recurrent]
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
    if recurrent & set(linears):
        details["quantization"]["fp32_recurrent_matmuls"] = sorted(recurrent & set(linears))
    details["source"] = "the module quantized with torchao, captured by the pipeline"
    return module


RECIPES: dict[str, Callable[[ConversionJob], Recipe]] = {
    "fp16": fp16_recipe, "int8": pt2e_recipe, "int8-dynamic": pt2e_recipe, "8da4w": int4_recipe}


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


