"""The pipeline owns every capture: converters never call torch.export, programs are shared per forms and recipe,
and the manifest records the digest of what was lowered."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import edge
from edge import capture as C
from edge import pipeline as PL


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture
def exports(monkeypatch):
    """Counts every torch.export.export call, and those made through the pipeline's capture()."""
    calls = {"export": 0, "pipeline": 0}
    real_export, real_capture = torch.export.export, C.capture

    def export(*a, **k):
        calls["export"] += 1
        return real_export(*a, **k)

    def capture(*a, **k):
        calls["pipeline"] += 1
        return real_capture(*a, **k)
    monkeypatch.setattr(torch.export, "export", export)
    monkeypatch.setattr(C, "capture", capture)
    monkeypatch.setattr(PL, "capture", capture)
    return calls


@pytest.mark.slow
def test_one_capture_per_forms_and_recipe(exports, tmp_path):
    x = torch.randn(1, 3, 8, 8)
    edge.convert_all(_net(), example_inputs=(x,), targets=["onnx"], precisions=["fp32", "int8"], calib="synthetic",
                     out=tmp_path / "onnx")
    assert exports == {"export": 1, "pipeline": 1}   # int8 ONNX quantizes the exported graph: no recapture
    arts = edge.convert_all(_net(), example_inputs=(x,), targets=["executorch"],
                            precisions=["fp32", "int8-dynamic"], out=tmp_path / "et")
    # fp32: the shared program; int8-dynamic: the recipe's PT2E program (captured, quantized, captured again)
    assert exports == {"export": 4, "pipeline": 4}
    fp32, dyn = (a.manifest.details for a in arts)
    assert fp32["lowered"]["recipe"] is None and dyn["lowered"]["recipe"].startswith('{"calib_batches": null')
    assert fp32["lowered"]["program_sha256"] != dyn["lowered"]["program_sha256"]
    assert "PT2E" in dyn["source"] and all(a.manifest.status == "verified" for a in arts)


def test_lowered_digest_follows_the_weights(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    digest = [edge.convert(m, example_inputs=(x,), target="onnx", out=tmp_path / str(i)).manifest
              .details["lowered"]["program_sha256"] for i, m in enumerate((_net(0), _net(0), _net(1)))]
    assert digest[0] == digest[1] != digest[2]


def test_converter_gets_only_the_sources_it_declares(tmp_path, monkeypatch):
    """A program-only converter never sees the module (it cannot reach back to it)."""
    from edge.converters import get_converter
    seen = {}
    for target in ("onnx", "executorch"):
        conv = type(get_converter(target))
        real = conv.convert

        def spy(self, job, real=real, target=target):
            seen[target] = (job.module is not None, job.program is not None, len(job.expected_outputs))
            return real(self, job)
        monkeypatch.setattr(conv, "convert", spy)
    edge.convert_all(_net(), example_inputs=(torch.randn(1, 3, 8, 8),), targets=["onnx", "executorch"],
                     out=tmp_path / "s")
    # no converter asked for the eager outputs (ExecuTorch does when bundling): the module is not run again
    assert seen == {"onnx": (True, True, 0), "executorch": (False, True, 0)}
