"""edge: convert, quantize, verify and profile PyTorch vision models for edge targets.

Example:
    >>> import edge
    >>> art = edge.convert("vit_tiny_digits", target="onnx", out="out/vit-onnx")
    >>> session = edge.load("out/vit-onnx")
    >>> (logits,) = session.run(x)
    >>> report = edge.benchmark("out/vit-onnx", warmup=10, iters=200)

Importing edge loads no backend (openvino, executorch, coremltools, onnxruntime): they are
imported by the converter or runtime that needs them. Even torch loads on first use.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "convert": "edge.api", "convert_all": "edge.api", "load": "edge.api", "verify": "edge.verification",
    "benchmark": "edge.api", "prepare": "edge.pipeline", "debug": "edge.debugger",
    "optimize": "edge.passes", "list_passes": "edge.passes",
    "list_models": "edge.zoo", "create_model": "edge.zoo",
    "Artifact": "edge.artifact", "TensorSpec": "edge.artifact",
    "LatencyReport": "edge.profile", "load_calibration": "edge.calibration",
}
__all__ = sorted(_LAZY) + ["list_targets", "errors"]


def list_targets() -> list[str]:
    """Names of the registered targets (built-in and from entry points)."""
    from edge.converters import TARGETS
    return TARGETS.names()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        mod = importlib.import_module(_LAZY[name])
        obj = getattr(mod, name)
        globals()[name] = obj
        return obj
    if name == "errors":
        import edge.errors as errors
        return errors
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
