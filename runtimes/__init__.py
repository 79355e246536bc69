"""Runtimes: one file per runtime, one interface (:class:`edge.runtimes.base.Session`)."""
from __future__ import annotations

from edge.registry import Registry

BUILTIN = {
    "onnxruntime": "edge.runtimes.onnxruntime:OnnxRuntimeSession",
    "openvino": "edge.runtimes.openvino:OpenVinoSession",
    "executorch": "edge.runtimes.executorch:ExecuTorchSession",
    "coreml": "edge.runtimes.coreml:CoreMLSession",
    "aoti": "edge.runtimes.aoti:AotiSession",
}

RUNTIMES: Registry = Registry("runtime", "edge.runtimes", BUILTIN)
