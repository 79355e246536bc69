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

The package has ExecuTorch's backend shape: ``convert`` (the converter), ``quantize`` (the recipe per precision,
which edge's pipeline captures), ``partition`` (XNNPACK partitioners and edge-dialect rewrites), ``lowering``
(``to_edge_transform_and_lower`` and the delegation summary), ``speedups`` (lowering speed-ups behind a version
check) and ``bundle`` (BundledProgram).
"""
from __future__ import annotations

from edge.converters.executorch.bundle import bundle
from edge.converters.executorch.convert import ExecuTorchConverter
from edge.converters.executorch.lowering import delegation_summary, lower, portable_by_module

__all__ = ["ExecuTorchConverter", "bundle", "delegation_summary", "lower", "portable_by_module"]
