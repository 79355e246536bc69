"""ExecuTorch int8 of recurrent models: the GRU/LSTM ``scan`` form through PT2E, lowered to XNNPACK, run and verified.

PT2E recurses into ``torch.scan`` bodies but cannot fold a body's weights (loop inputs) into int8 constants, and
the program it left failed to lower ("Attempting to use FunctionalTensor on its own"). The recipe now keeps the
loop bodies and the tuned GRU/LSTM's gates in fp32 through the quantizer's filter and says so in the manifest;
the input projections and the head are int8. Each artifact is loaded with edge's runtime and run here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("executorch", reason="the executorch extra is not installed")
pytest.importorskip("torchao", reason="the executorch extra (torchao) is not installed")

import edge  # noqa: E402


class LSTMClassifier(torch.nn.Module):
    """[B, 1, T, F] images (rows as steps) -> bidirectional nn.LSTM -> last hidden states -> Linear."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 4):
        super().__init__()
        self.lstm = torch.nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * hidden, classes)

    def forward(self, x):
        _, (h, _) = self.lstm(x.flatten(1, 2))
        return self.head(h.transpose(0, 1).reshape(x.shape[0], -1))


def _check_loops(art, bodies: int) -> None:
    """Verified, the loop bodies recorded as fp32, each loop iteration one XNNPACK call with nothing portable."""
    m = art.manifest
    assert m.status == "verified" and m.parity["passed"] is True and m.precision == "int8"
    q = m.details["quantization"]
    assert q["fp32_loop_bodies"]["count"] == bodies and "TunedGRU" in q["fp32_modules"]
    deleg = m.details["delegation"]
    assert deleg["delegated_nodes"] > 0 and len(deleg["loops"]) == bodies
    assert all(lp["delegate_calls_per_iteration"] == 1 and lp["portable_ops_per_iteration"] == []
               for lp in deleg["loops"])


def _run_all(path, xs: np.ndarray) -> np.ndarray:
    """The artifact's outputs for each input of ``xs`` (one per call), through edge's runtime."""
    with edge.load(path) as s:
        return np.concatenate([s.run(xs[i:i + 1])[0] for i in range(len(xs))])


@pytest.mark.slow
def test_gru_digits_int8_verified_within_a_point(tmp_path):
    from edge.zoo import create_model
    from edge.zoo.digits import test_set
    art = edge.convert("gru_digits", target="executorch", precision="int8", out=tmp_path / "q")
    _check_loops(art, bodies=2)   # forward and backward direction
    out = art.manifest.parity["outputs"]["output"]
    assert out["accuracy_samples"] > 100 and out["accuracy"] >= out["reference_accuracy"] - 0.01, out
    assert out["cosine"] > 0.999
    # the fp32 recurrent weights, read only by the loop bodies (which hold their own copies), are not kept twice
    assert art.manifest.details["unused_parameters_dropped"] == {"count": 2, "bytes": 2 * 192 * 64 * 4}
    model, _ = create_model("gru_digits")
    xs = test_set()[0][:32]
    got = _run_all(art.path, xs)
    with torch.no_grad():
        ref = model(torch.from_numpy(xs)).numpy()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.slow
def test_lstm_int8_and_int8_dynamic_lowered_and_run(tmp_path):
    torch.manual_seed(5)
    model = LSTMClassifier().eval()
    x = torch.randn(1, 1, 9, 8)
    arts = edge.convert_all(model, example_inputs=(x,), targets=["executorch"], precisions=["int8", "int8-dynamic"],
                            out=tmp_path, calib="synthetic")
    by = {a.manifest.precision: a for a in arts}
    _check_loops(by["int8"], bodies=2)   # forward and backward direction
    assert by["int8-dynamic"].manifest.status == "verified"
    assert by["int8-dynamic"].manifest.details["quantization"]["fp32_loop_bodies"]["count"] >= 1
    xs = torch.randn(8, 1, 9, 8).numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(xs)).numpy()
    for art in arts:
        got = _run_all(art.path, xs)
        cos = (got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref))
        assert cos > 0.98, (art.manifest.precision, cos)


class GRUClassifier(torch.nn.Module):
    """[B, T, 32] -> bidirectional nn.GRU (hidden 32: its recurrent matmuls qualify for int4 groups) -> Linear."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(64, 4)

    def forward(self, x):
        _, h = self.gru(x)
        return self.head(h.transpose(0, 1).reshape(x.shape[0], -1))


@pytest.mark.slow
def test_gru_8da4w_keeps_the_recurrent_matmuls_fp32(tmp_path):
    """torchao's int4 weights cannot live inside the scan body (capture failed making fake tensors): the
    recurrent ``hh`` matmuls stay fp32 and are listed; the input projections and the head are int4."""
    torch.manual_seed(3)
    model = GRUClassifier().eval()
    art = edge.convert(model, example_inputs=(torch.randn(1, 7, 32),), target="executorch", precision="8da4w",
                       out=tmp_path / "w4")
    q = art.manifest.details["quantization"]
    assert art.manifest.status == "verified"
    assert q["fp32_recurrent_matmuls"] == ["gru.hh.0", "gru.hh.1"] and q["layers"] == "3 of 5 nn.Linear"
    xs = torch.randn(4, 7, 32).numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(xs)).numpy()
    got = _run_all(art.path, xs)
    assert (got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref)) > 0.98
