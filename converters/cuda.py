"""CUDA target: AOTInductor packages (.pt2), or an ONNX model for ONNX Runtime's CUDA/TensorRT providers.

Routes (``route`` option):
  * ``aoti`` (default): ``torch._inductor.aoti_compile_and_package`` compiles the captured program to a
    ``.pt2`` package of generated kernels for ``device`` (``cuda``, or ``cpu`` where there is no GPU: the
    CPU path needs a C++ compiler). fp16/bf16 wrap the module so weights and compute run in the low
    precision while the artifact's inputs and outputs stay float32 (a cast at each end, inside the package).
  * ``onnxruntime``: the ONNX target's exporter; the manifest names the onnxruntime runtime and records
    the execution providers (TensorRT first where installed, then CUDA, then CPU) in its options.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from edge.converters.base import ConversionJob, ConversionResult, Converter, Option, Recipe
from edge.errors import ConversionError, PlatformError, UsageError

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
NO_GPU = ("the cuda target needs a CUDA GPU and a CUDA build of PyTorch, and this machine has neither; compile for "
          "the CPU with --device cpu (option device='cpu')")


def cuda_available() -> bool:
    import torch
    return bool(torch.cuda.is_available())


def ort_cuda_providers() -> list[str]:
    """ONNX Runtime's GPU providers installed here, best first (empty for the CPU-only package)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort
    have = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have]


class CudaConverter(Converter):
    name = "cuda"
    format = "aoti-pt2"
    runtime = "aoti"
    extra = "cuda"
    requires = ("torch",)
    precisions = ("fp32", "fp16", "bf16")
    # device "auto": cuda where PyTorch sees a GPU; without one, "auto" and "cuda" are PlatformErrors (a CPU
    # package is built only when asked for with device "cpu")
    options = {"device": Option("auto", ("auto", "cuda", "cpu"), "the device to compile for"),
               "route": Option("aoti", ("aoti", "onnxruntime"), "AOTInductor or ONNX Runtime's CUDA EP")}

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        out = super().resolve_options(given)
        if out["route"] == "onnxruntime":
            if out["device"] == "cpu":
                raise UsageError("the cuda target's onnxruntime route runs on the GPU; for ONNX Runtime on the CPU "
                                 "use --target onnx")
            out["device"] = "cuda"
        elif out["device"] == "auto":
            if not cuda_available():   # never build a CPU package quietly when a GPU one was asked for
                raise PlatformError("the cuda target needs a CUDA GPU and this machine has none; pass --device cpu "
                                    "(option device='cpu') to build an AOTInductor package for the CPU on purpose, "
                                    "or convert on the GPU machine")
            out["device"] = "cuda"
        return out

    def can_execute(self) -> str | None:
        return None if cuda_available() else "no CUDA GPU here (--device cpu builds a CPU package)"

    def can_execute_artifact(self, manifest: Any) -> str | None:
        """Why this machine cannot run ``manifest``'s artifact (None if it can)."""
        if manifest.options.get("device", "cuda") == "cuda":
            if manifest.runtime == "onnxruntime":
                if not ort_cuda_providers():
                    return "this ONNX Runtime has no CUDA execution provider (pip install onnxruntime-gpu)"
            elif not cuda_available():
                return "CUDA is not available on this machine"
        return None

    def convert(self, job: ConversionJob) -> ConversionResult:
        self.require()
        device, route = job.options.get("device", "cuda"), job.options.get("route", "aoti")
        if route == "onnxruntime":
            return self._convert_onnx(job)
        if device == "cuda" and not cuda_available():
            raise PlatformError(NO_GPU)
        return self._convert_aoti(job, device)

    # --- AOTInductor -------------------------------------------------------------------------------------------
    def recipe(self, job: ConversionJob) -> Recipe | None:
        """A GPU or low-precision build compiles a wrapped copy (the shared program is CPU fp32): the module in the
        precision on the device, float32 casts at its inputs and outputs; the pipeline captures it."""
        device = job.options.get("device", "cuda")
        if job.options.get("route", "aoti") != "aoti" or (device != "cuda" and job.precision == "fp32"):
            return None
        if device == "cuda" and not cuda_available():   # before the pipeline moves anything to the GPU
            raise PlatformError(NO_GPU)
        import torch
        dtype = getattr(torch, _DTYPES[job.precision])

        def wrap(module: Any, job: ConversionJob, details: dict[str, Any]) -> Any:
            details["compiled_from"] = (f"the module captured on {device} in {job.precision} (float32 casts at the "
                                        f"inputs/outputs)")
            return cast_wrapper(module, dtype).to(device)
        return Recipe(f"{job.precision} on {device}", wrap, device=device)

    def _convert_aoti(self, job: ConversionJob, device: str) -> ConversionResult:
        import torch
        program = job.require_program(self.name)   # the pipeline's, after the recipe above
        how = job.recipe.get("compiled_from", "the captured ExportedProgram")
        path = job.out_dir / "model.pt2"
        try:
            with torch.no_grad():
                torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        except Exception as e:
            hint = " (the CPU path needs a C++ compiler such as g++ on PATH)" if device == "cpu" else ""
            raise ConversionError(f"AOTInductor could not compile the model for {device}{hint}: "
                                  f"{type(e).__name__}: {_first_line(e)}") from e
        if not path.is_file():
            raise ConversionError(f"AOTInductor reported success but wrote no package at {path}")
        ops: dict[str, int] = {}
        for node in program.graph.nodes:
            if node.op == "call_function" and "assert" not in str(node.target):
                key = str(node.target).replace("aten.", "").split(".default")[0]
                ops[key] = ops.get(key, 0) + 1
        details: dict[str, Any] = {
            "route": "aoti", "device": device, "compiled_from": how,
            "compute_dtype": _DTYPES[job.precision], "io_dtype": "float32",
            "op_histogram": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        }
        if device == "cuda":
            details["gpu"] = torch.cuda.get_device_name(0)
            details["cuda"] = torch.version.cuda
        return ConversionResult(files=["model.pt2"], details=details)

    # --- ONNX Runtime on CUDA ----------------------------------------------------------------------------------
    def _convert_onnx(self, job: ConversionJob) -> ConversionResult:
        if job.precision == "bf16":
            raise UsageError("the cuda target's onnxruntime route supports fp32 and fp16; use --route aoti for bf16")
        providers = ort_cuda_providers()
        if not providers:
            raise PlatformError("the onnxruntime route of the cuda target needs ONNX Runtime with the CUDA execution "
                                "provider (pip install onnxruntime-gpu); on this machine use --route aoti "
                                "--device cpu or --target onnx")
        from edge.converters.onnx import OnnxConverter
        onnx_conv = OnnxConverter()
        onnx_conv.require()
        onnx_job = ConversionJob(**{**job.__dict__, "options": {"opset": 18, "fusion": "none"}})
        result = onnx_conv.convert(onnx_job)
        # the manifest's options are this job's options: the runtime reads its providers from there
        job.options["providers"] = providers + ["CPUExecutionProvider"]
        result.details.update({"route": "onnxruntime", "providers": job.options["providers"]})
        result.runtime, result.format = "onnxruntime", "onnx"
        return result

    def backend_version(self) -> dict[str, str]:
        import torch
        out = {"torch": torch.__version__}
        if torch.version.cuda:
            out["cuda"] = torch.version.cuda
        return out


def cast_wrapper(module: Any, dtype: Any) -> Any:
    """A module running a copy of ``module`` in ``dtype``: float inputs cast in, float outputs cast to float32."""
    import copy

    import torch

    class CastIO(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *xs: torch.Tensor) -> Any:
            xs = tuple(x.to(dtype) if x.is_floating_point() else x for x in xs)
            return torch.utils._pytree.tree_map(
                lambda o: o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o,
                self.inner(*xs))

    inner = copy.deepcopy(module).eval().to(dtype) if dtype != torch.float32 else copy.deepcopy(module).eval()
    return CastIO(inner).eval()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:400] if s else type(e).__name__
