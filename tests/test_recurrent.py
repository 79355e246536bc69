"""The recurrent passes: tuned GRU/LSTM and minGRU's chunked scan against their references."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import edge
from edge.errors import UsageError
from edge.passes import recurrent as R
from edge.zoo.visiongru import MinGRU

FAST = settings(max_examples=12, deadline=None)


def _leaves(out):
    return torch.utils._pytree.tree_leaves(out)


def _max_diff(a, b) -> float:
    la, lb = _leaves(a), _leaves(b)
    assert [t.shape for t in la] == [t.shape for t in lb]
    return max(float((x - y).abs().max()) for x, y in zip(la, lb))


@FAST
@given(kind=st.sampled_from(["gru", "lstm"]), layers=st.integers(1, 3), bi=st.booleans(), batch_first=st.booleans(),
       bias=st.booleans(), init=st.booleans(), T=st.integers(1, 9), B=st.integers(1, 3), seed=st.integers(0, 99),
       form=st.sampled_from(["unrolled", "scan"]), steps=st.integers(1, 4))
def test_tuned_rnn_matches_pytorch(kind, layers, bi, batch_first, bias, init, T, B, seed, form, steps):
    torch.manual_seed(seed)
    cls, tuned = (nn.GRU, R.TunedGRU) if kind == "gru" else (nn.LSTM, R.TunedLSTM)
    ref = cls(5, 6, num_layers=layers, bidirectional=bi, batch_first=batch_first, bias=bias).eval()
    x = torch.randn(B, T, 5) if batch_first else torch.randn(T, B, 5)
    hx = None
    if init:
        h = torch.randn(layers * (2 if bi else 1), B, 6)
        hx = h if kind == "gru" else (h, torch.randn_like(h))
    with torch.no_grad():
        assert _max_diff(ref(x, hx), tuned(ref, form, steps if form == "scan" else 1)(x, hx)) < 1e-5


@pytest.mark.parametrize("form", ["unrolled", "scan", "scan-2"])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_tuned_rnn_exports_exactly(kind, form):
    """Both forms survive torch.export (scan: one higher-order op, however long the sequence)."""
    torch.manual_seed(0)
    ref = (nn.GRU if kind == "gru" else nn.LSTM)(5, 6, num_layers=2, bidirectional=True, batch_first=True).eval()
    form, _, steps = form.partition("-")
    tuned = (R.TunedGRU if kind == "gru" else R.TunedLSTM)(ref, form, int(steps or 1)).eval()
    x = torch.randn(2, 7, 5)
    ep = torch.export.export(tuned, (x,), strict=False)
    scans = [n for n in ep.graph.nodes if n.target is torch.ops.higher_order.scan]
    assert len(scans) == (4 if form == "scan" else 0)
    with torch.no_grad():
        assert _max_diff(ref(x), ep.module()(x)) < 1e-5
    with pytest.raises(UsageError, match="form"):
        R.TunedGRU(nn.GRU(2, 2), "loop")
    with pytest.raises(UsageError, match="steps_per_call"):
        R.TunedGRU(nn.GRU(2, 2), "scan", 0)


def test_tuned_rnn_unbatched_and_packed():
    ref = nn.LSTM(4, 3, bidirectional=True).eval()
    x = torch.randn(7, 4)
    with torch.no_grad():
        assert _max_diff(ref(x), R.TunedLSTM(ref)(x)) < 1e-5
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 4), [5, 3])
    with pytest.raises(UsageError, match="PackedSequence"):
        R.TunedLSTM(ref)(packed)


class _Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.lstm = nn.LSTM(16, 8, batch_first=True)
        self.proj_lstm = nn.LSTM(8, 8, proj_size=4, batch_first=True)   # not rewritten: proj_size

    def forward(self, x):
        y, _ = self.gru(x)
        y, _ = self.lstm(y)
        return self.proj_lstm(y)[0]


def test_pass_variants_and_records():
    model = _Seq().eval()
    x = torch.randn(2, 10, 8)
    fast = edge.optimize(model, target="executorch")
    rec = {r["pass"]: r for r in fast.edge_passes}
    assert rec["gru"] == {"pass": "gru", "rewrites": 1, "variant": "scan"}
    assert rec["lstm"]["rewrites"] == 1
    assert isinstance(fast.gru, R.TunedGRU) and isinstance(fast.lstm, R.TunedLSTM)
    assert fast.gru.form == fast.lstm.form == "scan"
    assert fast.gru.steps_per_call == R.SCAN_STEPS_PER_CALL
    assert edge.optimize(model, target="coreml").gru.form == "unrolled"
    assert type(fast.proj_lstm) is nn.LSTM and type(model.gru) is nn.GRU      # the user's model is untouched
    with torch.no_grad():
        assert _max_diff(model(x), fast(x)) < 1e-5
    native = edge.optimize(model, target="onnx")
    assert {r["pass"]: r["variant"] for r in native.edge_passes}["gru"] == "native"
    assert type(native.gru) is nn.GRU
    keys = {t: edge.passes.profile_key(edge.passes.forms_for(t)) for t in ("onnx", "openvino", "executorch")}
    assert keys["onnx"] != keys["executorch"]


def _mingru(dim=8, seed=0):
    torch.manual_seed(seed)
    return MinGRU(dim).eval()


@FAST
@given(N=st.integers(1, 300), chunk=st.sampled_from([2, 4, 16, 32]), B=st.integers(1, 2), seed=st.integers(0, 99),
       scale=st.sampled_from([0.1, 1.0, 8.0]), kept=st.booleans(), major=st.booleans())
def test_chunked_scan_matches_sequential_and_reference(N, chunk, B, seed, scale, kept, major):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, N, 3, generator=g) ** scale        # gates in [0, 1], some close to 0
    b = torch.rand(B, N, 3, generator=g) * scale
    h0 = torch.rand(B, 3, generator=g)
    for init in (None, h0):
        seq = R.sequential_mingru_scan(a, b, init)
        got = R.chunked_linear_scan(a, b, init, chunk, keep_products=kept)
        assert float((got - seq).abs().max()) <= 1e-4 * (1 + float(seq.abs().max()))
        back = R.sequential_mingru_scan(a.flip(1), b.flip(1), init).flip(1)      # right to left, by flipping
        assert float((R.chunked_linear_scan(a, b, init, chunk, reverse=True, keep_products=kept) - back).abs().max()) \
            <= 1e-4 * (1 + float(back.abs().max()))
    m = _mingru(seed=seed)
    x = torch.randn(B, N, 8, generator=g) * scale
    with torch.no_grad():
        ref, fast = m(x), R.ChunkedMinGRU(m, chunk=chunk, keep_products=kept, position_major=major)(x)
        seq = R.ChunkedMinGRU(m, sequential=True)(x)
        rev = R.ChunkedMinGRU(m, chunk=chunk, keep_products=kept, position_major=major, reverse=True)(x)
    assert float((fast - seq).abs().max()) < 1e-5 * (1 + float(seq.abs().max()))
    assert float((fast - ref).abs().max()) < 1e-4 * (1 + float(ref.abs().max()))   # log-space ref has fp32 noise
    flipped = m(x.flip(1)).flip(1)
    assert float((rev - flipped).abs().max()) < 1e-4 * (1 + float(flipped.abs().max()))


@FAST
@given(C=st.integers(1, 40), L=st.sampled_from([2, 4, 16]), seed=st.integers(0, 99), reverse=st.booleans(),
       init=st.booleans())
def test_position_major_scan_matches_sequential(C, L, seed, reverse, init):
    """Gates laid out [B, L, C, D] (token c * L + j at [:, j, c]) give the sequential states in that layout."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, C * L, 3, generator=g), torch.rand(2, C * L, 3, generator=g)
    h0 = torch.rand(2, 3, generator=g) if init else None
    seq = (R.sequential_mingru_scan(a.flip(1), b.flip(1), h0).flip(1) if reverse
           else R.sequential_mingru_scan(a, b, h0))

    def major(t):
        return t.view(2, C, L, 3).transpose(1, 2)
    got = R.position_major_scan(major(a), major(b), h0, L, reverse)
    assert float((got - major(seq)).abs().max()) <= 1e-5 * (1 + float(seq.abs().max()))


def test_position_major_mingru_returns_the_last_state():
    m = _mingru()
    x = torch.randn(2, 48, 8)
    with torch.no_grad():
        for reverse in (False, True):
            ref = R.ChunkedMinGRU(m, reverse=reverse)(x, return_state=True)
            got = R.ChunkedMinGRU(m, reverse=reverse, position_major=True)(x, return_state=True)
            assert all(float((p - q).abs().max()) < 1e-5 for p, q in zip(ref, got))


def test_chunked_scan_is_stable_where_logspace_is_not():
    """Gates saturating at 0 for long stretches: products underflow, nothing becomes inf or nan."""
    a = torch.zeros(1, 500, 2)
    a[:, ::7] = 1.0
    b = torch.full((1, 500, 2), 3.0)
    for kept in (False, True):
        out = R.chunked_linear_scan(a, b, keep_products=kept)
        assert torch.isfinite(out).all()
        assert float((out - R.sequential_mingru_scan(a, b)).abs().max()) < 1e-5


def test_streaming_step_equals_full_scan():
    m = R.ChunkedMinGRU(_mingru())
    x = torch.randn(2, 37, 8)
    with torch.no_grad():
        full = m(x)
        prefix, h = m(x[:, :20], return_state=True)     # a prompt in one call, then one token at a time
        outs = [prefix]
        for t in range(20, 37):
            y, h = m.step(x[:, t], h)
            outs.append(y[:, None])
        h_none = None
        for t in range(37):
            y0, h_none = m.step(x[:, t], h_none)
    assert float((torch.cat(outs, 1) - full).abs().max()) < 1e-5
    assert float((y0 - full[:, -1]).abs().max()) < 1e-5


class minGRU(nn.Module):   # noqa: N801 - minGRU-pytorch's class name and layout, found by duck typing
    def __init__(self, dim):
        super().__init__()
        self.to_hidden_and_gate = nn.Linear(dim, dim * 4, bias=False)
        self.to_out = nn.Linear(dim * 2, dim, bias=False)

    forward = MinGRU.forward


def test_mingru_pass_finds_edge_and_foreign_modules():
    model = nn.Sequential(MinGRU(8), minGRU(8)).eval()
    fast = edge.optimize(model, target="coreml")
    assert {r["pass"]: r["rewrites"] for r in fast.edge_passes}["mingru_scan"] == 2
    assert all(isinstance(m, R.ChunkedMinGRU) for m in fast)
    x = torch.randn(1, 50, 8)
    with torch.no_grad():
        assert float((fast(x) - model(x)).abs().max()) < 1e-4


def test_mingru_chunk_is_picked_per_target_and_recorded():
    """ExecuTorch gets its own chunk (fewer nodes to lower); the record and the capture key say which."""
    model = nn.Sequential(MinGRU(8)).eval()
    from edge.converters import get_converter
    for target in ("executorch", "openvino", "onnx"):
        declared = get_converter(target).forms   # each converter declares its forms as data
        chunk = declared.get("mingru_chunk", R.CHUNK)
        fast = edge.optimize(model, target=target)
        rec = {r["pass"]: r for r in fast.edge_passes}["mingru_scan"]
        kept = declared.get("mingru_products") == "kept"
        major = declared.get("mingru_layout") == "position-major"
        assert fast[0].chunk == rec["chunk"] == chunk and fast[0].keep_products == rec["keep_products"] == kept
        assert fast[0].position_major == rec["position_major"] == major
        assert rec["variant"] == f"chunk {chunk}" + (", products kept" if kept else "") + (
            ", position-major" if major else "")
    assert get_converter("executorch").forms["mingru_chunk"] != R.CHUNK
    assert get_converter("executorch").forms["mingru_products"] == "kept"
    assert get_converter("openvino").forms["mingru_layout"] == "position-major"
    assert edge.optimize(model, target="executorch", mingru_chunk=8)[0].chunk == 8   # an explicit chunk wins
    keys = {t: edge.passes.profile_key(edge.passes.forms_for(t)) for t in ("onnx", "openvino", "executorch")}
    assert len(set(keys.values())) == 3   # each target's forms differ: one capture each


def test_chunked_mingru_splits_the_projection_in_two_exact_halves():
    """to_hidden_and_gate becomes two Linears (no output split); a biased one keeps its bias halves."""
    torch.manual_seed(0)
    m = minGRU(8).eval()
    m.to_hidden_and_gate = nn.Linear(8, 32, bias=True)
    fast = R.ChunkedMinGRU(m)
    assert not hasattr(fast, "to_hidden_and_gate") and fast.to_hidden.out_features == fast.to_gate.out_features == 16
    x = torch.randn(2, 40, 8)
    with torch.no_grad():
        hg = m.to_hidden_and_gate(x)
        assert _max_diff(torch.cat([fast.to_hidden(x), fast.to_gate(x)], -1), hg) < 1e-6
        assert _max_diff(fast(x), m(x)) < 1e-4


class _GruHead(nn.Module):
    def __init__(self, bidirectional=True, layers=1):
        super().__init__()
        self.gru = nn.GRU(6, 8, num_layers=layers, batch_first=True, bidirectional=bidirectional)

    def forward(self, x):
        y, h = self.gru(x)
        return y, h


@pytest.mark.slow
def test_native_and_tuned_gru_through_onnx(tmp_path):
    model = _GruHead().eval()
    x = torch.randn(1, 5, 6)
    art = edge.convert(model, example_inputs=(x,), target="onnx", out=tmp_path / "native")
    assert art.manifest.parity["passed"]
    assert art.manifest.details["op_histogram"].get("GRU", 0) >= 1
    tuned = edge.optimize(model, target="coreml")              # the unrolled form, checked on ONNX Runtime
    assert isinstance(tuned.gru, R.TunedGRU) and tuned.gru.form == "unrolled"
    art = edge.convert(tuned, example_inputs=(x,), target="onnx", out=tmp_path / "tuned")
    assert art.manifest.parity["passed"] and "GRU" not in art.manifest.details["op_histogram"]
    with torch.no_grad():                                       # and the tuned form equals the original
        assert _max_diff(model(x), tuned(x)) < 1e-5


@pytest.mark.slow
def test_chunked_mingru_through_onnx(tmp_path):
    model = nn.Sequential(MinGRU(8)).eval()
    x = torch.randn(1, 40, 8)
    art = edge.convert(model, example_inputs=(x,), target="onnx", out=tmp_path / "m")
    hist = art.manifest.details["op_histogram"]
    assert art.manifest.parity["passed"] and "CumSum" not in hist and not any("Log" in op for op in hist)
    assert {r["pass"]: r["rewrites"] for r in art.manifest.details["optimize_passes"]}["mingru_scan"] == 1


def test_visiongru_block_backward_minGRU_becomes_a_reverse_scan_without_flips():
    """m(y.flip(1)).flip(1) -> a reverse scan reading y as it is: same numbers, no flip left in the program."""
    from edge.zoo.visiongru import Block2DGRU
    torch.manual_seed(0)
    blk = Block2DGRU(8).eval()
    fast = edge.optimize(blk, target="executorch")
    assert fast.min_gru_2.reverse and not fast.min_gru_1.reverse and not hasattr(blk.min_gru_2, "reverse")
    assert {r["pass"]: r["rewrites"] for r in fast.edge_passes}["mingru_scan"] == 2
    x = torch.randn(2, 7 * 5, 8)
    with torch.no_grad():
        assert _max_diff(fast(x, (7, 5)), blk(x, (7, 5))) < 1e-5
        y, h = fast.min_gru_2(x, return_state=True)            # the state after the FIRST token (scan order)
        seq, hs = R.ChunkedMinGRU(blk.min_gru_2, sequential=True, reverse=True)(x, return_state=True)
        assert _max_diff(y, seq) < 1e-5 and _max_diff(h, hs) < 1e-5
    ops = {str(n.target) for n in torch.export.export(fast, (x, (7, 5))).graph.nodes}
    assert not any("flip" in op for op in ops), ops
