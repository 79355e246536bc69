"""Converters: one file per target. Listing targets imports no backend.

Adding a target: write ``converters/<name>.py`` with a :class:`~edge.converters.base.Converter`
subclass and add it to ``BUILTIN``, or publish it from another package under the
``edge.targets`` entry-point group.
"""
from __future__ import annotations

from edge.registry import Registry

BUILTIN = {
    "onnx": "edge.converters.onnx:OnnxConverter",
    "openvino": "edge.converters.openvino:OpenVinoConverter",
    "executorch": "edge.converters.executorch:ExecuTorchConverter",
    "coreml": "edge.converters.coreml:CoreMLConverter",
    "cuda": "edge.converters.cuda:CudaConverter",
}

TARGETS: Registry = Registry("target", "edge.targets", BUILTIN)


def get_converter(name: str):
    """The converter instance registered under ``name`` (raises UnknownNameError listing the valid ones)."""
    return TARGETS.get(name)()
