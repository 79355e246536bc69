"""Accuracy-aware int8 (--max-drop): the layers that cost accuracy stay in float, and only those."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import edge
from edge.errors import UsageError

HERE = Path(__file__).parent
OUTLIER = f"{HERE / 'models_for_tests.py'}:outlier"


def test_bad_max_drop(tmp_path):
    with pytest.raises(UsageError, match="--max-drop -1"):
        edge.convert(OUTLIER, input_shapes=[(4, 64)], target="onnx", precision="int8", out=tmp_path / "a",
                     max_drop=-1)
    with pytest.raises(UsageError, match="not one"):
        edge.convert(OUTLIER, input_shapes=[(4, 64)], target="onnx", precision="fp32", out=tmp_path / "a",
                     max_drop=0.5)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "convert", OUTLIER, "--input-shape", "4,64", "-t", "onnx",
                        "-p", "fp16", "--max-drop", "0.5", "-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode == 2 and "--max-drop" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "openvino", "executorch"])
def test_max_drop_keeps_exactly_the_outlier_layer(tmp_path, target):
    """All-int8 loses ~50 points of agreement (fc2's weights are destroyed); fc2 alone in float brings every target
    back within 8 points. The budget is 8, not 0.5: on this random-init model with random held-out inputs, ONNX
    Runtime's and OpenVINO's int8 of the other layers alone costs ~6 points (measured), ExecuTorch's ~0."""
    art = edge.convert(OUTLIER, input_shapes=[(4, 64)], target=target, precision="int8", calib="synthetic",
                       max_drop=8, out=tmp_path / target)
    assert art.manifest.status == "verified"
    rec = art.manifest.details["accuracy_aware"]
    assert rec["kept_float"] == ["fc2"], rec
    assert rec["rounds"][0]["kept_float"] == [] and rec["rounds"][0]["drop"] > 8
    assert rec["rounds"][-1]["drop"] <= 8 and "agreement" in rec["metric"]
    assert rec["latency_cost"]["all_int8_ms"] > 0 and rec["latency_cost"]["with_float_layers_ms"] > 0
    assert art.manifest.options["keep_float"] == ["fc2"]
    assert not list(tmp_path.glob(".edge-max-drop-*"))


VIT = f"{HERE / 'models_for_tests.py'}:vit_hf_4x192"


# Several rounds of conversion of a 4-layer ViT per target (ExecuTorch ~1 min per round on 2 cores): over the
# suite's time budget, so behind a switch like the conformance suite's large models.
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGE_FULL_ACCURACY_AWARE"), reason="set EDGE_FULL_ACCURACY_AWARE=1")
@pytest.mark.parametrize("target", ["onnx", "openvino", "executorch"])
def test_transformers_vit_comes_out_verified(tmp_path, target):
    """A transformers ViT built from its config (4 layers, hidden 192, 64 px): plain int8 fails edge's parity
    check on ONNX Runtime (cosine 0.938) and ExecuTorch (0.963); with --max-drop it comes out verified, the
    layers kept in float named. The budget is 5 points: the random-init ViT's logits are nearly tied, so top-1
    agreement on 128 random inputs moves by a point or two even with every block in float (measured on ONNX
    Runtime: 98.4 after 5 rounds; --max-drop 1.0 ended in a ConversionError listing the rounds)."""
    pytest.importorskip("transformers")
    art = edge.convert(VIT, input_shapes=[(1, 3, 64, 64)], target=target, precision="int8", calib="synthetic",
                       max_drop=5.0, out=tmp_path / target)
    assert art.manifest.status == "verified" and art.manifest.parity["passed"]
    rec = art.manifest.details["accuracy_aware"]
    assert rec["rounds"][-1]["parity_passed"] and rec["rounds"][-1]["drop"] <= 5.0
    assert all(isinstance(m, str) and m for m in rec["kept_float"])
    if target != "openvino":   # OpenVINO's int8 of this model passes as it is (cosine 0.996)
        assert not rec["rounds"][0]["parity_passed"] and rec["kept_float"]
