"""Ops ExecuTorch's XNNPACK partitioner has no form for, rewritten by edge's program forms (edge/passes/graph.py):
sums over dims, vector norms (a GRN), var/std/amax, ATen's special pow exponents, ELU/SELU/CELU/softplus/mish, nearest
upsampling by powers of two, an ``expand`` read by a broadcasting op. Each form is checked in eager against the
op, then through ExecuTorch on a tiny model written by structure (no portable op, one delegate call, parity
verified by edge.convert); the delegation summary names why an op that stays on a portable kernel was not taken.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edge
from edge.passes import graph as G
from tests.conftest import has

aten = torch.ops.aten


def close(a, b, atol=1e-5):
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-5)


# ------------------------------------------------------------------------------------ tiny models, by structure


class GRN(nn.Module):
    """Global Response Normalization over a channels-last map (ConvNeXtV2's form: ``torch.norm`` over H, W)."""

    def __init__(self, c: int):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.randn(1, 1, 1, c)), nn.Parameter(torch.randn(1, 1, 1, c))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        return self.gamma * (x * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6))) + self.beta + x


class GRNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.grn, self.fc = nn.Conv2d(3, 8, 3, padding=1), GRN(8), nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.grn(self.conv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class LinearAttention(nn.Module):
    """Separable linear self-attention (MobileViTV2's form): context scores softmaxed over the patches, a
    context vector summed over them, expanded back onto the values."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.d, self.qkv, self.out = d, nn.Conv2d(d, 1 + 2 * d, 1), nn.Conv2d(d, d, 1)

    def forward(self, x):
        q, k, v = torch.split(self.qkv(x), [1, self.d, self.d], dim=1)
        context = (k * F.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)
        return self.out(F.relu(v) * context.expand_as(v))


class AdditiveAttention(nn.Module):
    """Efficient additive attention (SwiftFormer's form): a global query summed over the tokens, repeated back
    onto every token (a ``repeat`` that is an expand); a sum started from the integer 0 and a head averaged by an
    integer (FocalNet's and SwiftFormer's integer scalars)."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.q, self.k, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.w = nn.Parameter(torch.randn(d, 1))

    def forward(self, x):
        q, k = F.normalize(self.q(x), dim=-1), F.normalize(self.k(x), dim=-1)
        g = torch.sum((q @ self.w).softmax(dim=1) * q, dim=1)
        g = g.unsqueeze(1).repeat(1, k.shape[1], 1)
        acc = 0
        for _ in range(2):
            acc = acc + g * k
        return (self.out(acc) + q) / 2


class Pyramid(nn.Module):
    """A pyramid-pooling head (PSPNet / UperNet: bins 1, 2, 3, 6 on a 4x4 map, overlapping and upsampling windows)
    and VGG's 7x7 adaptive pooling of a 14x14 map."""

    def __init__(self):
        super().__init__()
        self.stem, self.bins = nn.Conv2d(3, 8, 3, stride=2, padding=1), (1, 2, 3, 6)
        self.convs = nn.ModuleList(nn.Conv2d(8, 4, 1) for _ in self.bins)
        self.fc = nn.Linear(24 * 49, 5)

    def forward(self, x):
        y = self.stem(x)   # [1, 8, 14, 14]
        m = F.max_pool2d(y, 3, 3, ceil_mode=True)   # [1, 8, 5, 5] -> a 4x4 crop
        m = m[..., :4, :4]
        ppm = [F.interpolate(c(F.adaptive_avg_pool2d(m, b)), size=(4, 4), mode="bilinear", align_corners=False)
               for b, c in zip(self.bins, self.convs)]
        up = F.interpolate(torch.cat(ppm, 1), size=(14, 14), mode="bilinear", align_corners=False)
        head = F.adaptive_avg_pool2d(torch.cat([y, up], 1), (7, 7))
        return self.fc(head.flatten(1))


class EncoderLayers(nn.Module):
    """``nn.TransformerEncoderLayer`` (pre-norm, GELU) and a bare ``nn.MultiheadAttention`` (sequence first):
    their packed ``in_proj_weight`` is sliced into q, k, v rows, which constant folding turns into views."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True,
                                                activation="gelu")
        self.mha = nn.MultiheadAttention(16, 4)

    def forward(self, x):
        y = self.layer(x).transpose(0, 1)
        return self.mha(y, y, y, need_weights=False)[0]


class Readout(nn.Module):
    """DPT's "project" readout: the class token expanded onto every patch token and concatenated with it (an
    expand no broadcasting op absorbs), and a repeated row concatenated too."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 8)

    def forward(self, x):   # [1, 1 + N, 8]
        cls, tokens = x[:, :1], x[:, 1:]
        y = self.proj(torch.cat([tokens, cls.expand_as(tokens)], -1))
        return torch.cat([y, cls.repeat(1, 2, 1)], 1)


class Activations(nn.Module):
    """EnCodec's ELU and its relatives, softplus, mish and hardsigmoid (MobileNetV3-style squeeze-excitation), on
    1-D convolutions."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(1, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.c2(F.elu(self.c1(x), alpha=0.7))
        return F.selu(y) + F.celu(x, 0.5) + F.softplus(y, beta=2.0) + F.mish(y) * F.hardsigmoid(4 * y)


class Powers(nn.Module):
    """Hand-written norms and powers: float exponents XNNPACK refuses, an RMS-style ``** -0.5``, a sum of squares."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        y = self.fc(x).abs() + 0.5
        return y.pow(2.0) + y ** 0.5 + y.pow(-1) + y ** 3 + (y.pow(2).sum(-1, keepdim=True) + 1e-6) ** -0.5


class Statistics(nn.Module):
    """A channel norm written with ``var``, a softmax stabilised with ``amax``, a ``std`` over the map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        y = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
        z = (y - y.amax(-1, keepdim=True)).exp()
        return z / z.sum(-1, keepdim=True) + y.std(dim=(2, 3), keepdim=True)


class Decoder(nn.Module):
    """An FPN-style top-down path: nearest upsampling by 2 (``scale_factor``) and by 2 x 4 (``size``)."""

    def __init__(self):
        super().__init__()
        self.lateral, self.smooth = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.lateral(x)
        return self.smooth(F.interpolate(y, scale_factor=2, mode="nearest")) + F.interpolate(y[..., ::2], size=(8, 16))


# ------------------------------------------------------------------------------------------ each form, in eager


def test_sum_and_vector_norm_forms_keep_the_numbers():
    x = torch.randn(2, 5, 6, 7)
    for dims, keep in (([1, 2], True), ([-1], True), ([0, 3], False), ([2, 3], False), ([], False)):
        assert close(G._sum(x, dims, keep), x.sum(dims, keepdim=keep)), (dims, keep)
    for order in (1, 2):
        assert close(G._vector_norm(x, order, [1, 2], True), torch.linalg.vector_norm(x, order, [1, 2], True))
    assert close(G._vector_norm(x, 2), torch.linalg.vector_norm(x))
    assert G._sum(x.long(), [1]) is NotImplemented and G._sum(x, [1], dtype=torch.float64) is NotImplemented
    assert G._vector_norm(x, 3, [1]) is NotImplemented and G._vector_norm(x, float("inf"), [1]) is NotImplemented


def test_var_std_and_amax_forms():
    x = torch.randn(2, 5, 6, 7) * 3 + 1
    for dims, keep, c in (([1, 2], True, None), ([-1], False, 0), (None, False, 1), ([0, 3], True, 2)):
        assert close(G._var(x, dims, correction=c, keepdim=keep), torch.var(x, dims, correction=c, keepdim=keep))
        assert close(G._std(x, dims, correction=c, keepdim=keep), torch.std(x, dims, correction=c, keepdim=keep))
    assert close(G._var_dim(x, [1], False, True), x.var(1, unbiased=False, keepdim=True))
    assert G._var(x[:, :1], [1]) is NotImplemented   # one value, correction 1: ATen's nan stays ATen's
    for dims, keep in (([1, 2], True), ([-1], False), ([], False), ([0, 3], True)):
        assert torch.equal(G._amax(x, dims, keep), torch.amax(x, dims, keep))


def test_nearest_upsample_form_repeats_the_same_pixels():
    x = torch.randn(2, 3, 5, 6)
    for size, scales in (((10, 12), None), ((20, 12), None), (None, [2.0, 2.0]), (None, [4.0, 1.0])):
        want = F.interpolate(x, size=size, scale_factor=None if scales is None else tuple(scales), mode="nearest")
        assert torch.equal(G._nearest_upsample(x, size, scales), want), (size, scales)
    for size, scales in (((15, 18), None), ((7, 6), None), (None, [3.0, 3.0]), (None, [1.5, 2.0])):
        assert G._nearest_upsample(x, size, scales) is NotImplemented   # not a power-of-two repeat


def test_pow_forms_are_atens_own():
    y = torch.rand(3, 4, 5) + 0.1
    for e in (0.5, -0.5, 2.0, 3, 3.0, -1, -2.0):
        assert torch.equal(G._pow(y, e), y ** e), e   # ATen computes these exponents in the same forms
    assert G._pow(y, 2) is NotImplemented   # XNNPACK's own square
    assert G._pow(y, 1.5) is NotImplemented and G._pow(y.long(), 2.0) is NotImplemented
    assert G._pow(y, -1, constants=False) is NotImplemented   # its 1 would not be folded in a quantized program


def test_elu_forms_keep_the_numbers():
    x = torch.randn(4, 64) * 3
    for alpha in (1.0, 0.7):
        assert close(G._elu(x, alpha), F.elu(x, alpha), atol=1e-6)
    assert torch.equal(G._elu(x)[x > 0], F.elu(x)[x > 0])   # above 0 it is x itself
    assert close(G._selu(x), F.selu(x), atol=1e-6) and close(G._celu(x, 0.5), F.celu(x, 0.5), atol=1e-6)


def test_adaptive_pool_forms_keep_the_numbers():
    torch.manual_seed(0)
    for shape, size in [((1, 8, 14, 14), (7, 7)), ((1, 8, 7, 7), (7, 7)), ((2, 8, 2, 2), (3, 3)),
                        ((1, 4, 2, 2), (6, 6)),
                        ((1, 4, 13, 10), (6, 4)), ((3, 9, 7), (2, 3)), ((1, 4, 8, 8), (None, 2))]:
        x = torch.randn(*shape)
        want = F.adaptive_avg_pool2d(x, size)
        got = G._adaptive_avg_pool2d(x, list(size))
        exact = all(n % o == 0 for n, o in zip(x.shape[-2:], want.shape[-2:]))
        assert got.shape == want.shape and (torch.equal(got, want) if exact else close(got, want, atol=1e-6)), shape
    assert G._adaptive_avg_pool2d(torch.randn(1, 3, 5, 5), [1, 1]) is NotImplemented   # the global mean, as it is


def test_hardsigmoid_form_keeps_the_numbers():
    x = torch.cat([torch.randn(4000) * 4, torch.tensor([-3.0, -2.9999, 0.0, 2.9999, 3.0, 3.0001])])
    assert close(G._hardsigmoid(x), F.hardsigmoid(x), atol=1e-7)
    assert G._hardsigmoid(torch.arange(4)) is NotImplemented


def test_softplus_and_mish_forms_keep_the_numbers():
    x = torch.cat([torch.randn(4000) * 10, torch.tensor([-100.0, -20.0, 0.0, 19.99, 20.0, 20.01, 100.0, 1e4])])
    for beta in (1.0, 2.0):
        assert close(G._softplus(x, beta), F.softplus(x, beta), atol=2e-6)
    assert torch.equal(G._softplus(x)[x > 20], F.softplus(x)[x > 20])   # ATen's threshold: x itself
    assert close(G._mish(x), F.mish(x), atol=2e-6)
    assert G._softplus(x, 1.0, 5.0) is NotImplemented   # a low threshold is a different function above it


class _Expands(nn.Module):
    def forward(self, x, v):
        c = x.sum(-1, keepdim=True)
        return v * c.expand_as(v), torch.cat([c.expand(-1, -1, 3), v[..., :1]], -1), c[:1].expand(2, 4, 5) + v[:1]


def test_expands_read_by_broadcasting_ops_are_dropped():
    x, v = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    program = torch.export.export(_Expands(), (x, v)).run_decompositions({})   # expand_as -> expand
    n = G.broadcast_expands(program)
    left = [node for node in program.graph.nodes if node.target is aten.expand.default]
    # the mul broadcasts; cat does not; `+ v[:1]` would give [1, 4, 5] without the expand to batch 2
    assert n == 1 and len(left) == 2
    with torch.no_grad():
        for got, want in zip(program.module()(x, v), _Expands()(x, v)):
            assert torch.equal(got, want)


def test_repeats_that_are_expands_are_dropped():
    class Repeats(nn.Module):
        def forward(self, x, v):
            g = x.sum(1, keepdim=True)   # [2, 1, 5]
            return (v * g.repeat(1, 4, 1), v * x[:, :2].repeat(1, 2, 1), g.repeat(3, 1, 1, 1) + v,
                    x[:, :1].repeat(1, 4, 1) - v)
    x, v = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    program = torch.export.export(Repeats(), (x, v)).run_decompositions({})
    n = G.broadcast_expands(program)
    left = [node for node in program.graph.nodes if node.target is aten.repeat.default]
    # repeating a size-2 dim is not an expand; a new leading dim is one, but the add would not broadcast to it
    assert n == 2 and sorted(list(node.args[1]) for node in left) == [[1, 2, 1], [3, 1, 1, 1]]
    with torch.no_grad():
        for got, want in zip(program.module()(x, v), Repeats()(x, v)):
            assert torch.equal(got, want)


def test_expands_as_products_with_ones_keep_the_numbers():
    x = torch.tensor([[[1.5, -0.0, float("nan"), float("inf")]]])   # [1, 1, 4]
    for got, want in ((G._expand_by_ones(x, [2, 3, -1]), x.expand(2, 3, -1)),
                      (G._repeat_by_ones(x, [2, 1, 3, 1]), x.repeat(2, 1, 3, 1))):
        assert got.shape == want.shape and torch.equal(got.nan_to_num(), want.nan_to_num())
        assert torch.equal(torch.signbit(got), torch.signbit(want))   # -0.0 stays -0.0
    assert G._repeat_by_ones(x, [1, 1, 2]) is NotImplemented   # repeating a dim of size 4 is not an expand
    assert G._expand_by_ones(torch.arange(3).reshape(1, 3), [2, 3]) is NotImplemented


def test_integer_scalars_of_float_tensors_become_floats():
    class Scalars(nn.Module):
        def forward(self, x, i):
            return (0 + x) / 2 * 3 - 1, i + 1, x * 2 ** 25
    x, i = torch.randn(3, 5), torch.arange(5)
    program = torch.export.export(Scalars(), (x, i)).run_decompositions({})
    n = G.float_scalars(program)
    scalars = [a for node in program.graph.nodes if node.op == "call_function" for a in node.args[1:2]
               if isinstance(a, (int, float))]
    # 4 on x; the int64 tensor keeps its integer 1; 2**25 is not exact in fp32 and is left alone
    assert n == 4 and sorted(map(type, scalars), key=str) == [float] * 4 + [int] * 2
    with torch.no_grad():
        for got, want in zip(program.module()(x, i), Scalars()(x, i)):
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_folded_constants_own_their_storage():
    pytest.importorskip("executorch")
    torch.manual_seed(0)
    from edge.passes.attention import XNNPACK, EdgeMultiheadAttention
    model, x = EncoderLayers().eval(), torch.randn(1, 17, 16)
    model.layer.self_attn = EdgeMultiheadAttention(model.layer.self_attn, XNNPACK)   # what the attention pass does
    model.mha = EdgeMultiheadAttention(model.mha, XNNPACK)
    program = G.to_xnnpack_forms(torch.export.export(model, (x,)))
    tensors = [t for t in [*program.constants.values(), *program.state_dict.values()] if isinstance(t, torch.Tensor)]
    assert tensors and all(t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
                           for t in tensors)
    with torch.no_grad():
        assert close(program.module()(x), model(x))


def test_program_forms_record_each_rewrite():
    pytest.importorskip("executorch")
    torch.manual_seed(0)
    model, x = LinearAttention().eval(), torch.randn(1, 8, 4, 16)
    details: dict = {}
    out = G.to_xnnpack_forms(torch.export.export(model, (x,)), details)
    rec = details["program_rewrites"]["decomposed"]
    assert rec["sum.dim_IntList"] == 1 and rec["expand/repeat (into a broadcasting op)"] == 1
    with torch.no_grad():
        assert close(out.module()(x), model(x))


# ------------------------------------------------------------------------------------------ through ExecuTorch

class Subsample(nn.Module):
    """LeViT's subsampling at 224 px: every other token of a 7 x 7 map (the step does not divide 7), and a
    GroupNorm of the map (PoolFormer's normalisation, as XNNPACK means)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.fc, self.norm = nn.Linear(c, c), nn.GroupNorm(1, c)

    def forward(self, x):
        B, N, C = x.shape
        y = self.fc(x).view(B, 7, 7, C)[:, ::2, ::2].reshape(B, -1, C)
        return self.norm(y.transpose(1, 2).reshape(B, C, 4, 4))


class PaddedAttention(nn.Module):
    """DETR's key-padding mask: boolean, built from ones of the input's shape (no pixel mask given);
    ``pad`` masks the last key of every query (a constant mask that masks something)."""

    def __init__(self, d: int = 16, pad: bool = False):
        super().__init__()
        self.qkv, self.out, self.pad = nn.Linear(d, 3 * d), nn.Linear(d, d), pad

    def forward(self, x):
        B, S, d = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
        keep = torch.ones(B, S, dtype=torch.bool)
        if self.pad:
            keep[:, -1] = False
        mask = keep[:, None, None, :].expand(B, 2, S, S)
        return self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, S, d))


class RowMasked(nn.Module):
    """Attention under a constant [S, S] boolean mask built in the forward: causal (``tril``: every query keeps
    itself), or with the first query's row all False (PyTorch gives that row zeros)."""

    def __init__(self, d: int = 16, empty_row: bool = False, layers: int = 1):
        super().__init__()
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(layers))
        self.empty_row = empty_row

    def forward(self, x):
        S = x.shape[1]
        keep = torch.ones(S, S, dtype=torch.bool).tril()
        if self.empty_row:
            keep[0] = False
        for qkv in self.qkv:   # one mask, read by every layer
            q, k, v = qkv(x).chunk(3, dim=-1)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return x


@pytest.mark.skipif(not has("executorch"), reason="executorch not installed: pip install 'edge[executorch]'")
def test_constant_boolean_masks_are_resolved_where_exact():
    """A boolean SDPA mask that folds to all True is dropped; one that masks keys but leaves every query a key
    becomes PyTorch's additive 0 / -inf mask; the program's numbers are unchanged. A constant mask with a fully
    masked row (PyTorch gives it zeros, an additive mask NaN) is kept for ExecuTorch's own decomposition, and
    so is a mask computed from an input."""
    from edge.passes.sdpa_masks import bool_mask_calls, resolve_constant_masks

    class FromInput(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x, attn_mask=(x.sum(-1, keepdim=True) > -1e9).expand(
                *x.shape[:-1], x.shape[-2]))
    x = torch.randn(1, 5, 16)
    for model, want in ((PaddedAttention(), (1, 0)), (PaddedAttention(pad=True), (0, 1)), (RowMasked(), (0, 1)),
                        (RowMasked(layers=3), (0, 3)), (RowMasked(empty_row=True), (0, 0)), (FromInput(), (0, 0))):
        # functional, as the program to_xnnpack_forms folds (its decomposition removes the in-place fill_)
        ep = torch.export.export(model.eval(), (x,)).run_decompositions({})
        ref = ep.module()(x)
        G.fold_constants(ep)
        calls = len(bool_mask_calls(ep))
        assert calls == (len(model.qkv) if isinstance(model, RowMasked) else 1)
        assert resolve_constant_masks(ep) == want, model
        assert len(bool_mask_calls(ep)) == calls - sum(want)
        got = ep.module()(x)
        assert close(got, ref) and torch.isfinite(got).all(), model
        if model.__class__ is RowMasked and model.empty_row:
            assert torch.equal(ref[:, 0], torch.zeros_like(ref[:, 0]))   # the row the mask is left for


CASES = {   # name: (model, input shape, the rewrites the manifest records)
    "grn": (GRNNet, (1, 3, 8, 8), {"linalg_vector_norm"}),
    "linear-attention": (LinearAttention, (1, 8, 4, 16),
                         {"sum.dim_IntList", "expand/repeat (into a broadcasting op)"}),
    "readout": (Readout, (1, 7, 8), {"expand/repeat (a product with ones)"}),
    "encoder-layers": (EncoderLayers, (1, 17, 16), set()),
    "pyramid-pooling": (Pyramid, (1, 3, 28, 28), {"adaptive_avg_pool2d"}),
    "additive-attention": (AdditiveAttention, (1, 6, 8), {"expand/repeat (into a broadcasting op)"}),
    "activations": (Activations, (1, 1, 32), {"elu", "selu", "celu", "softplus", "mish", "hardsigmoid"}),
    "powers": (Powers, (2, 6), {"pow.Tensor_Scalar", "sum.dim_IntList"}),
    "statistics": (Statistics, (1, 3, 6, 8), {"var.dim", "std.dim", "amax", "sum.dim_IntList"}),
    "nearest-upsample": (Decoder, (1, 3, 4, 8), {"upsample_nearest2d.vec"}),
    "padding-mask-attention": (PaddedAttention, (1, 5, 16),
                               {"scaled_dot_product_attention (a constant all-True boolean mask dropped)"}),
    "odd-subsample": (Subsample, (1, 49, 8), {"group_norm"}),   # the slices: one call, no portable op
    "causal-mask-attention": (RowMasked, (1, 6, 16),
                              {"scaled_dot_product_attention (a constant boolean mask as an additive -inf mask)"}),
}


@pytest.mark.slow
@pytest.mark.skipif(not has("executorch"), reason="executorch not installed: pip install 'edge[executorch]'")
@pytest.mark.parametrize("name", list(CASES))
def test_rewritten_ops_are_fully_delegated(name, tmp_path):
    make, shape, rewrites = CASES[name]
    torch.manual_seed(0)
    art = edge.convert(make().eval(), target="executorch", example_inputs=(torch.randn(*shape),), out=tmp_path / "a")
    m = art.manifest
    d = m.details["delegation"]
    assert m.status == "verified" and m.parity["passed"], m.parity
    assert d["delegate_calls"] == 1 and not d["portable_ops"], d
    assert rewrites <= set(m.details["program_rewrites"]["decomposed"]), m.details["program_rewrites"]


@pytest.mark.slow
@pytest.mark.skipif(not has("executorch"), reason="executorch not installed: pip install 'edge[executorch]'")
def test_delegation_summary_names_why_an_op_stays_portable(tmp_path):
    class Kept(nn.Module):   # no exact XNNPACK form: a fractional power; no XNNPACK kernel at all: argmax
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return y.abs().pow(1.5) + y.argmax(-1, keepdim=True).float()
    with pytest.warns(UserWarning, match="only support int powers"):
        art = edge.convert(Kept().eval(), target="executorch", example_inputs=(torch.randn(2, 4),), out=tmp_path / "a")
    d = art.manifest.details["delegation"]
    assert art.manifest.status == "verified"
    assert d["portable_reasons"]["pow.Tensor_Scalar"].endswith("refused it: only support int powers, got 1.5")
    assert "partitioner has no argmax.default" in d["portable_reasons"]["argmax"]
