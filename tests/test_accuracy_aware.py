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


@pytest.mark.slow
def test_transformer_prior_brings_a_failing_transformers_vit_back_on_onnxruntime(tmp_path):
    """The cheap form of the ViT-Ti case below: plain int8 fails parity; the first fallback round (LayerNorms and
    the blocks' own ops in float, every Linear and the patch Conv still int8) comes out verified."""
    pytest.importorskip("transformers")
    art = edge.convert(f"{HERE / 'models_for_tests.py'}:vit_hf_2x192", input_shapes=[(1, 3, 32, 32)], target="onnx",
                       precision="int8", calib="synthetic", max_drop=5.0, out=tmp_path / "onnx")
    rec = art.manifest.details["accuracy_aware"]
    assert art.manifest.status == "verified" and art.manifest.parity["passed"]
    assert not rec["rounds"][0]["parity_passed"] and rec["rounds"][0]["next"] == "transformer prior"
    assert len(rec["rounds"]) == 2 and rec["rounds"][-1]["parity_passed"] and rec["rounds"][-1]["drop"] <= 5.0
    kept = rec["kept_float"]
    assert "vit.encoder.layer.0.layernorm_before" in kept and "vit.encoder.layer.0:own" in kept
    assert not any(k.endswith(("dense", "query", "key", "value", "projection", "classifier")) for k in kept)


# Several rounds of conversion of a 4-layer ViT per target (ExecuTorch ~1 min per round on 2 cores): over the
# suite's time budget, so behind a switch like the conformance suite's large models.
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGE_FULL_ACCURACY_AWARE"), reason="set EDGE_FULL_ACCURACY_AWARE=1")
@pytest.mark.parametrize("target", ["onnx", "openvino", "executorch"])
def test_transformers_vit_comes_out_verified(tmp_path, target):
    """A transformers ViT built from its config (4 layers, hidden 192, 64 px): plain int8 fails edge's parity
    check on ONNX Runtime (cosine 0.945) and ExecuTorch (0.963); with --max-drop it comes out verified, the
    layers kept in float named. The budget is 5 points: the random-init ViT's logits are nearly tied, so top-1
    agreement on 128 random inputs moves by a point or two whatever is kept (measured on ONNX Runtime: 97.66
    after the transformer prior, cosine 0.998; 98.44 with nearly every block in float before the prior existed).
    Measured on the loaded 2-core machine: openvino 192 s, executorch 486 s."""
    pytest.importorskip("transformers")
    art = edge.convert(VIT, input_shapes=[(1, 3, 64, 64)], target=target, precision="int8", calib="synthetic",
                       max_drop=5.0, out=tmp_path / target)
    assert art.manifest.status == "verified" and art.manifest.parity["passed"]
    rec = art.manifest.details["accuracy_aware"]
    assert rec["rounds"][-1]["parity_passed"] and rec["rounds"][-1]["drop"] <= 5.0
    assert all(isinstance(m, str) and m for m in rec["kept_float"])
    if target != "openvino":   # OpenVINO's int8 of this model passes as it is (cosine 0.996)
        assert not rec["rounds"][0]["parity_passed"] and rec["kept_float"]


def _row(i, module, kind="Linear", drop=0.0, quantized=True):
    from edge.debugger import DebugRow
    return DebugRow(index=i, module=module, kind=kind, sqnr_db=30.0 - drop, cosine=0.99, max_abs=0.1, drop_db=drop,
                    precision="int8", quantized=quantized, point="v")


def _vit_table():
    from edge.debugger import DebugTable
    rows = [_row(0, "emb.proj", "Conv2d"), _row(1, "emb"), _row(2, "blk.0.norm1", "LayerNorm", drop=9.0),
            _row(3, "blk.0.attn", "Attention", drop=0.5), _row(4, "blk.0.norm2", "LayerNorm", drop=1.0),
            _row(5, "blk.0"),
            _row(6, "norm", "LayerNorm", drop=5.0), _row(7, "head", drop=12.0)]
    return DebugTable("a", "onnx", "int8", "onnxruntime", "per layer", 1, "given", rows)


def test_transformer_prior_keeps_norms_and_own_ops_of_blocks():
    """The first fallback of a transformer: LayerNorms and the blocks' own ops (residual adds, concat), every
    Linear/Conv left int8; nothing for a model without a quantized LayerNorm."""
    from edge.accuracy import transformer_prior
    from edge.debugger import DebugTable
    t = _vit_table()
    assert transformer_prior(t, []) == ["emb:own", "blk.0.norm1", "blk.0.norm2", "blk.0:own", "norm"]
    assert transformer_prior(t, ["blk.0"]) == ["emb:own", "norm"]
    mlp = DebugTable("a", "onnx", "int8", "onnxruntime", "per layer", 1, "given",
                     [_row(0, "fc1"), _row(1, "fc2", drop=40.0), _row(2, "head")])
    assert transformer_prior(mlp, []) == []
    recurrent = DebugTable("a", "onnx", "int8", "onnxruntime", "per layer", 1, "given",   # LayerNorm, no attention
                           [_row(0, "rnn"), _row(1, "rnn.norm", "LayerNorm", drop=3.0), _row(2, "head")])
    assert transformer_prior(recurrent, []) == []


def test_ranking_names_a_blocks_own_ops_not_the_whole_block():
    """A kept LayerNorm that still loses SQNR gets its error from the quantized op before it; when that op is a
    block's own (its residual add), the block's own ops are named (``blk.0:own``), never the whole block."""
    from edge.accuracy import rank_for_float
    from edge.debugger import DebugTable
    t = _vit_table()
    assert rank_for_float(t, [])[:3] == ["head", "blk.0.norm1", "norm"]
    assert rank_for_float(t, ["blk.0.norm1", "head", "norm"])[0] == "blk.0:own"
    assert "blk.0" not in rank_for_float(t, ["blk.0.norm1", "head", "norm"])
    mlp = DebugTable("a", "onnx", "int8", "onnxruntime", "per layer", 1, "given",
                     [_row(0, "fc1"), _row(1, "fc2", drop=40.0), _row(2, "head", drop=1.0)])
    assert rank_for_float(mlp, []) == ["fc2", "head", "fc1"]


def test_in_kept_own_ops():
    from edge.converters.base import in_kept
    assert in_kept(("blk", "blk.0"), {"blk.0:own"})                     # the residual add directly in blk.0
    assert not in_kept(("blk", "blk.0", "blk.0.fc"), {"blk.0:own"})     # its Linear stays quantized
    assert in_kept(("blk", "blk.0", "blk.0.fc"), {"blk.0"}) and not in_kept((), {"blk.0:own"})


def test_the_debugger_is_pointed_at_the_samples_the_metric_lost():
    """Over the budget, the fallback ranks layers on the batches holding the samples the float model gets right
    and the artifact gets wrong: a one-sample drop is invisible in averages over the verification inputs
    (measured: visiongru_digits on OpenVINO, 8 rounds and every layer in float before, 3 rounds and 4 names
    after). Samples the float model already got wrong, and flips to the right class, are not losses."""
    import numpy as np
    from edge.accuracy import Metric
    batches = [(np.full((2, 3), float(i), dtype=np.float32),) for i in range(4)]
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    ref = np.array([0, 1, 2, 3, 9, 5, 6, 7])              # the float model misses sample 4
    m = Metric("accuracy", batches, labels, ref)
    int8 = np.array([0, 1, 2, 8, 3, 5, 6, 1])             # loses 3 and 7; sample 4 stays wrong
    assert m.score(top1=int8) == 62.5 and m.score(top1=ref) == 87.5
    lost = m.lost_batches(int8)
    assert [float(b[0][0, 0]) for b in lost] == [1.0, 3.0]
    assert m.lost_batches(ref) == [] and m.lost_batches(int8, limit=1)[0] is batches[1]
    from edge.accuracy import below_one_sample
    assert m.resolution == 12.5 and "allows no lost sample" in below_one_sample(10.0, m)
    assert below_one_sample(12.5, m) == ""
    agree = Metric("agreement", batches, None, ref)        # no labels: agreement with the float model
    assert [float(b[0][0, 0]) for b in agree.lost_batches(int8)] == [1.0, 2.0, 3.0]
