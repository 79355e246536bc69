"""The recurrent zoo models: VisionGRU (paper sizes, any resolution, exact chunked scan) and the GRU classifiers."""
from __future__ import annotations


import pytest
import torch
from torch import nn

import edge
from conftest import needs
from edge.passes.recurrent import ChunkedMinGRU, TunedGRU
from edge.zoo import create_model, get_entry
from edge.zoo.visiongru import MinGRU


def _params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_visiongru_parameter_counts_match_the_paper():
    # paper (arXiv 2412.18178), table of ImageNet models: VisionGRU-Ti 30M, VisionGRU-B 87M
    tiny, _ = create_model("visiongru_tiny")
    assert 29.5 < _params(tiny) < 30.5
    base, _ = create_model("visiongru_base")
    assert 86.5 < _params(base) < 87.5
    names = set(tiny.state_dict())   # the paper code's state-dict names (its checkpoints load)
    assert {"tokenizer.conv1.weight", "snake_gru.layers.2.7.min_gru_2.to_hidden_and_gate.weight",
            "snake_gru.conv3.weight", "snake_gru.norm3.weight", "fc.weight"} <= names
    assert not any(k.endswith("to_hidden_and_gate.bias") or k.endswith("to_out.bias") for k in names)


def test_visiongru_any_resolution_and_chunked_scan_parity():
    torch.manual_seed(0)
    model, _ = create_model("visiongru_tiny", num_classes=7, depths=(1, 1, 1, 1))
    fast = edge.optimize(model, target="onnx")
    assert {r["pass"]: r["rewrites"] for r in fast.edge_passes}["mingru_scan"] == 8
    for shape in [(1, 3, 64, 64), (2, 3, 96, 160), (1, 3, 40, 56)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref, got = model(x), fast(x)
        assert ref.shape == (shape[0], 7)
        assert float((ref - got).abs().max()) < 1e-4 * (1 + float(ref.abs().max()))


def test_digits_models_accuracy_and_size():
    for name in ("visiongru_digits", "gru_digits"):
        entry = get_entry(name)
        assert (edge.zoo.WEIGHTS_DIR / entry.weights).stat().st_size < 2_000_000
        model, _ = create_model(name)
        x, y = entry.test_set()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(x[:200])).argmax(-1).numpy() == y[:200]).mean())
        assert acc > 0.9, (name, acc)
    model, _ = create_model("visiongru_digits")
    fast = edge.optimize(model, target="executorch")
    assert all(not isinstance(m, MinGRU) for m in fast.modules())
    assert any(isinstance(m, ChunkedMinGRU) for m in fast.modules())
    gru, _ = create_model("gru_digits")
    assert isinstance(edge.optimize(gru, target="executorch").gru, TunedGRU)


def _convert(name_or_model, target, tmp_path, **kw):
    art = edge.convert(name_or_model, target=target, out=tmp_path / target, **kw)
    parity = art.manifest.parity
    assert parity["passed"], parity
    return art


@pytest.mark.slow
def test_gru_classifier_small_through_onnx(tmp_path):
    _convert("gru_classifier", "onnx", tmp_path, input_shapes=[(2, 20, 64)])


@pytest.mark.slow
@needs("executorch", "executorch")
def test_tuned_gru_through_executorch_is_one_delegate(tmp_path):
    """The 196-step GRU lowers as one torch.scan loop of 97 iterations (two steps each) that make one XNNPACK
    call each (nn.GRU: 198 calls and 392 portable split_with_sizes_copy); before and after the loop one call
    each (the first two steps, the classifier), nothing on portable kernels."""
    art = _convert("gru_classifier", "executorch", tmp_path)
    d = art.manifest.details
    assert {p["pass"]: p["variant"] for p in d["optimize_passes"]}["gru"] == "scan"
    deleg = d["delegation"]
    assert deleg["fully_delegated"], deleg
    assert deleg["loops"] == [{"iterations": 97, "delegate_calls_per_iteration": 1,
                               "portable_ops_per_iteration": []}]
    assert deleg["portable_ops"] == {"scan": 1} and deleg["delegate_calls"] == 2
    assert art.manifest.parity["passed"]


@pytest.mark.slow
@needs("executorch", "executorch")
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bidirectional_stacked_rnn_through_executorch(tmp_path, kind):
    """Two layers, both directions, an initial state and the final state out: verified against PyTorch."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(8, 16, num_layers=2, bidirectional=True,
                                                               batch_first=True)

        def forward(self, x, h0):
            y, st = self.rnn(x, h0 if kind == "gru" else (h0, h0 * 0.5))
            return y, (st if kind == "gru" else st[1])

    torch.manual_seed(0)
    x, h0 = torch.randn(2, 30, 8), torch.randn(4, 2, 16)
    art = edge.convert(Net().eval(), example_inputs=(x, h0), target="executorch", out=tmp_path / kind)
    deleg = art.manifest.details["delegation"]
    assert art.manifest.parity["passed"]
    assert len(deleg["loops"]) == 4, deleg
    assert all(lp["delegate_calls_per_iteration"] == 1 and not lp["portable_ops_per_iteration"]
               for lp in deleg["loops"]), deleg


# The digits models' default fp32 artifacts for ONNX, OpenVINO and ExecuTorch are the ones the conformance suite
# converts (same model, target, precision and options): tests/test_conformance.py runs these checks on its
# artifact, so each is converted once per suite run instead of twice.
def check_digits_onnx(name: str, art) -> None:
    out = next(iter(art.manifest.parity["outputs"].values())) if "outputs" in art.manifest.parity else None
    hist = art.manifest.details["op_histogram"]
    if name == "visiongru_digits":
        assert "CumSum" not in hist   # the chunked scan, not the (silently wrong) logcumsumexp lowering
    else:
        assert hist.get("GRU") == 1   # ONNX keeps its native GRU op
    if out is not None and "accuracy" in out:
        assert out["accuracy"] >= out["reference_accuracy"] - 0.01


def check_digits_openvino(name: str, art) -> None:
    hist = art.manifest.details.get("op_histogram", {})
    if name == "gru_digits":
        assert any("GRUSequence" in op for op in hist), hist
    else:
        assert "CumSum" not in hist


def check_visiongru_digits_openvino(name: str, art) -> None:
    """VisionGRU's token <-> NCHW changes go through 4-D permutes the CPU plugin turns into layouts; a
    [B, N, C] transpose before the depthwise conv became a Transpose in front of each minGRU MatMul.
    The only Transposes left in front of a MatMul are the position-major minGRU's own (tokens
    [B, C, L, dim] -> [B, L, C, dim]), and the stem's LayerNorms run without any."""
    import openvino as ov
    check_digits_openvino(name, art)
    assert art.manifest.status == "verified"
    assert {p["pass"]: p["variant"] for p in art.manifest.details["optimize_passes"]}["layernorm2d"] == "channels-first"
    runtime = ov.Core().compile_model(str(art.main_path), "CPU").get_runtime_model()
    kind = lambda node: node.get_rt_info()["layerType"].astype(str)   # noqa: E731
    fed = [(op, kind(t.get_node())) for op in runtime.get_ops() if kind(op) == "Transpose"
           for out in op.outputs() for t in out.get_target_inputs()]
    assert sum(kind(op) == "FullyConnected" for op in runtime.get_ops()) >= 10
    for op, user in fed:
        if user == "FullyConnected":
            src, dst = list(op.input(0).get_shape()), list(op.output(0).get_shape())
            assert len(src) == 4 and dst == [src[0], src[2], src[1], src[3]], (src, dst)


def check_visiongru_digits_executorch(name: str, art) -> None:
    """One XNNPACK delegate, nothing on portable kernels: no flip (the backward minGRU is a reverse scan),
    no expand (LayerNorm's means on 2-D), no zero fills, the head's mean kept 4-D."""
    deleg = art.manifest.details["delegation"]
    assert deleg["fully_delegated"] and deleg["delegate_calls"] == 1 and not deleg["portable_ops"], deleg


CONFORMANCE_CHECKS = {(name, target): check for name in ("visiongru_digits", "gru_digits")
                      for target, check in (("onnx", check_digits_onnx), ("openvino", check_digits_openvino))}
CONFORMANCE_CHECKS["visiongru_digits", "openvino"] = check_visiongru_digits_openvino   # moved from test_openvino.py
CONFORMANCE_CHECKS["visiongru_digits", "executorch"] = check_visiongru_digits_executorch


def test_conformance_runs_the_digits_checks():
    """The cells that carry these checks run in every suite run (not only with EDGE_FULL_CONFORMANCE=1), on the
    default fp32 artifact these checks were written for."""
    import test_conformance
    from edge.converters import TARGETS
    running = {p.values[0] for p in test_conformance._models() if not p.marks}
    for name, target in CONFORMANCE_CHECKS:
        assert name in running and target in TARGETS.names(), (name, target)
        assert get_entry(name).test_shapes is None and target != "coreml"   # coreml cells are fp16
    assert CONFORMANCE_CHECKS.items() <= test_conformance.EXTRA_CHECKS.items()
