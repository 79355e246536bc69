"""BundledProgram: the example input and its expected output stored with the program, so the same check runs
on a phone (``ExecuTorchSession.run_bundled_test``)."""
from __future__ import annotations

from typing import Any

from edge.converters.base import ConversionJob
from edge.errors import ConversionError

BPTE = "model.bpte"
# Tolerances the bundled test is checked with on a device, per precision family (expected outputs
# are PyTorch's for float programs and this host's ExecuTorch run for quantized ones).
BUNDLE_TOLERANCE = {"fp32": (1e-3, 1e-4), "fp16": (5e-2, 1e-2)}
QUANTIZED_BUNDLE_TOLERANCE = (1e-2, 1e-2)


def bundle(et_program, job: ConversionJob, host_out: list, path, details: dict[str, Any]) -> None:
    """Write a BundledProgram: the example input and its expected output stored with the program."""
    import torch
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    inputs = [t.detach().clone().contiguous() for t in job.example_inputs]
    if job.precision in BUNDLE_TOLERANCE:
        expected = [o.detach().float() for o in job.expected_outputs]   # the optimized module's, from the pipeline
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

