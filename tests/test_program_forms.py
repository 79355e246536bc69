"""Program-level forms (edge/passes/graph.py), capture fallbacks (edge/capture.py) and converter error handling.

The decompositions are checked op by op against PyTorch, then on captured programs (the program's numbers
must not change), then through ExecuTorch on timm-style modules written here by structure (tests/timm_like.py).
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edge
from edge.capture import capture_with_fallbacks, rename_reserved, scalar_buffers_as_constants
from edge.converters.base import ConversionJob, ConversionResult, Converter
from edge.errors import ConversionError
from edge.passes import graph as G
from tests.conftest import has
from tests.timm_like import Attention, LayerNorm2d, TinyTimmViT, WindowAttention, WindowBlock

ATOL = 1e-5
REGION = "permute to channels-last and back around per-channel ops (written on the map)"
AFFINE = "per-channel product / sum of a map (a depthwise 1 x 1 convolution)"


def close(a, b, atol=ATOL):
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4)


# ------------------------------------------------------------------------------------ each decomposition


@pytest.mark.parametrize("lead", [(2, 3), (4,), (1, 2, 2)])
@pytest.mark.parametrize("mask", [None, "float", "broadcast"])
def test_sdpa_form_matches_sdpa(lead, mask):
    g = torch.Generator().manual_seed(len(lead))
    q, k, v = (torch.randn(*lead, 5, 8, generator=g) for _ in range(3))
    m = None if mask is None else torch.randn(*(lead if mask == "float" else (1,) * len(lead)), 5, 5, generator=g)
    got = G._sdpa(q, k, v, m, scale=0.3)
    assert close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3))
    if len(lead) == 2:   # SDPA's output strides: callers .view() its transpose
        got.transpose(1, 2).view(lead[0], 5, -1)


def test_sdpa_form_leaves_boolean_masks_causal_and_gqa():
    q = torch.randn(1, 2, 4, 8)
    assert G._sdpa(q, q, q, torch.ones(4, 4, dtype=torch.bool)) is NotImplemented
    assert G._sdpa(q, q, q, is_causal=True) is NotImplemented
    assert G._sdpa(q, q[:, :1], q[:, :1], enable_gqa=True) is NotImplemented


def test_norm_and_mean_forms():
    x = torch.randn(2, 6, 5, 4)
    w, b = torch.rand(4), torch.rand(4)
    assert close(G._layer_norm(x, [4], w, b, 1e-6), F.layer_norm(x, [4], w, b, 1e-6))
    assert close(G._layer_norm(x, [5, 4]), F.layer_norm(x, [5, 4]))
    wc, bc = torch.rand(6), torch.rand(6)
    for groups in (1, 3):
        assert close(G._group_norm(x, groups, wc, bc, 1e-5), F.group_norm(x, groups, wc, bc, 1e-5))
    for dims, keep in (([1], True), ([1], False), ([2, 3], False), ([-1], True)):
        assert close(G._mean(x, dims, keep), x.mean(dims, keepdim=keep))
    assert G._mean(x, [2, 3], True) is NotImplemented   # XNNPACK's own global average pooling
    assert close(G._adaptive_avg_pool1d(x[0], [1]), F.adaptive_avg_pool1d(x[0], 1))


def test_index_and_layout_forms():
    x = torch.randn(2, 3, 8, 6)
    assert torch.equal(G._roll(x, (1, -2), (2, 3)), torch.roll(x, (1, -2), (2, 3)))
    for start in (0, 1):
        assert torch.equal(G._strided_slice(x, 2, start, None, 2), x[:, :, start::2])
    # every slice of dims of 1..9 elements (LeViT subsamples a 7 x 7 map: the step need not divide the dim), bounds
    # negative and past the ends; an empty one is left to ATen
    for n in range(1, 10):
        y = torch.randn(2, n, 3)
        for start, end, step in itertools.product([None, *range(-n - 1, n + 2)], [None, *range(-n - 1, n + 2)],
                                                  (2, 3, 4, 5)):
            got, want = G._strided_slice(y, 1, start, end, step), y[:, start:end:step]
            assert (got is NotImplemented and want.numel() == 0) or torch.equal(got, want), (n, start, end, step)
    for k in (2, (2, 3)):
        cols = F.unfold(x, k, stride=k)
        assert torch.equal(G._im2col(x, k, 1, 0, k), cols)
        assert torch.equal(G._col2im(cols, (8, 6), k, 1, 0, k), F.fold(cols, (8, 6), k, stride=k))
    assert G._im2col(x, 3, 1, 0, 1) is NotImplemented   # overlapping patches
    for sizes, dim in (([2, 1, 3], 3), (4, 2), (3, -1)):
        assert all(torch.equal(a, b) for a, b in zip(G._split(x, sizes, dim), x.split(sizes, dim)))
    z = torch.randn(1, 2, 9)
    for pad in ((3, 2), (0, 4), (1, 0)):
        assert torch.equal(G._reflect_pad(z, pad, "reflect"), F.pad(z, pad, mode="reflect"))
    assert G._reflect_pad(z, (1, 1), "constant") is NotImplemented
    img = torch.randn(1, 3, 6, 7)   # 2-D reflection (Swin2SR pads its image to the window size), zero pads too
    for pad in ((0, 3, 0, 2), (2, 1, 3, 0), (0, 0, 0, 0), (1, 1, 5, 5)):
        assert torch.equal(G._reflect_pad(img, pad, "reflect"), F.pad(img, pad, mode="reflect")), pad
    assert G._reflect_pad(img, (0, 0, 6, 0), "reflect") is NotImplemented   # not smaller than the dim: ATen's error


def test_whole_input_pool_is_the_global_mean():
    x = torch.randn(1, 4, 7, 7)
    assert close(G._whole_input_pool(x, 1280, 1280, 0, True), F.avg_pool2d(x, 1280, ceil_mode=True))
    assert close(G._whole_input_pool(x, 7, 7), F.avg_pool2d(x, 7))
    assert G._whole_input_pool(x, 3, 3) is NotImplemented


# --------------------------------------------------------------------------------- on captured programs


@pytest.mark.parametrize("fused", [True, False])
def test_program_forms_keep_the_numbers(fused):
    torch.manual_seed(0)
    model, x = WindowBlock(fused_attn=fused, size=16).eval(), torch.randn(2, 3, 16, 16)
    program = torch.export.export(model, (x,))
    details: dict = {}
    pytest.importorskip("executorch")
    out = G.to_xnnpack_forms(program, details)
    rec = details["program_rewrites"]
    assert rec["decomposed"].get("roll") == 2 and rec["decomposed"].get("group_norm") == 1
    # the LayerNorm2d (permute, layer_norm, permute) after the patch embedding is written on the map itself
    assert rec["decomposed"].get(REGION) == 1 and "layer_norm" not in rec["decomposed"]
    if fused:
        assert rec["decomposed"].get("scaled_dot_product_attention") == 1
    assert rec["constants_folded"] > 0   # the bias gathered from its table by the index buffer
    with torch.no_grad():
        assert close(out.module()(x), model(x))
    assert not G.counts(out, {torch.ops.aten.roll.default, torch.ops.aten.group_norm.default})


def test_program_forms_leave_boolean_mask_attention_to_executorch():
    """A boolean mask computed from the input stays with ExecuTorch's SDPA decomposition (PyTorch gives a fully
    masked row zeros), with the reason recorded; a constant causal mask becomes the additive -inf mask."""
    pytest.importorskip("executorch")

    class BoolMask(nn.Module):
        def __init__(self, from_input: bool):
            super().__init__()
            self.from_input = from_input

        def forward(self, q):
            mask = (q.sum(-1, keepdim=True) > 0) if self.from_input else torch.ones(4, 4, dtype=torch.bool).tril()
            return F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    for from_input in (True, False):
        details: dict = {}
        G.to_xnnpack_forms(torch.export.export(BoolMask(from_input), (torch.randn(1, 2, 4, 8),)), details)
        rec = details["program_rewrites"]
        assert ("scaled_dot_product_attention" in rec.get("kept", {})) == from_input, rec
        assert ("scaled_dot_product_attention (a constant boolean mask as an additive -inf mask)"
                in rec["decomposed"]) != from_input, rec


# --------------------------------------------------------------------------------------- capture fallbacks


class PaddedConv(nn.Module):
    """EnCodec's pattern: padding computed from int64 scalar buffers, then a Python branch on it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 4, stride=2)
        self.register_buffer("stride", torch.tensor(2), persistent=False)
        self.register_buffer("kernel", torch.tensor(4), persistent=False)

    def forward(self, x):
        n = torch.ceil((x.shape[-1] - self.kernel) / self.stride + 1).to(torch.int64) - 1
        extra = n * self.stride + self.kernel - x.shape[-1]
        if extra > 0:
            x = F.pad(x, (0, int(extra)))
        return self.conv(x)


class ValueBranch(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1


def test_capture_falls_back_to_integer_buffers_as_constants():
    model, x = PaddedConv().eval(), torch.randn(1, 2, 11)
    module, program, record = capture_with_fallbacks(model, (x,))
    assert record.route == "torch.export with 0-d integer buffers as constants"
    assert record.failed and record.failed[0].startswith("torch.export:")
    assert sorted(record.constants) == ["kernel", "stride"]
    assert dict(model.named_buffers())   # the user's module keeps its buffers
    with torch.no_grad():
        for t in (x, torch.randn(1, 2, 11)):
            assert torch.equal(program.module()(t), model(t))


def test_capture_with_no_route_lists_each_reason():
    _, program, record = capture_with_fallbacks(ValueBranch(), (torch.randn(3),))
    assert program is None and record.route is None
    assert record.to_dict()["route"].startswith("none") and "torch.export:" in record.reason()
    job = ConversionJob(program=None, module=ValueBranch(), example_inputs=(torch.randn(3),), inputs=[], outputs=[],
                        precision="fp32", out_dir=None, capture=record.to_dict())
    with pytest.raises(ConversionError, match="every capture route failed: torch.export"):
        job.require_program("executorch")


def test_meta_submodule_is_renamed_on_a_copy():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.meta, self.img = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x, y):
            return self.img(x) + self.meta(y)
    model, xs = TwoInputs().eval(), (torch.randn(1, 4), torch.randn(1, 4))
    module, program, record = capture_with_fallbacks(model, xs)
    assert record.renamed == ["meta -> meta_"] and "meta" in model._modules
    assert not any(k.startswith("meta.") for k in program.state_dict)
    with torch.no_grad():
        assert torch.equal(program.module()(*xs), model(*xs)) and torch.equal(module(*xs), model(*xs))
    assert rename_reserved(nn.Linear(2, 2)) == [] and scalar_buffers_as_constants(nn.Linear(2, 2)) == []


# ---------------------------------------------------------------------------------- converter errors


class Exploding(Converter):
    name, format, runtime, extra = "exploding", "x", "onnxruntime", "onnx"

    def convert(self, job: ConversionJob) -> ConversionResult:
        raise RuntimeError("Exception from src/core:\nstack line\n[ GENERAL_ERROR ] kernel 1280 exceeds the input 7")


def test_backend_exception_becomes_conversion_error(tmp_path):
    from edge.pipeline import lower, prepare
    prep = prepare(nn.Linear(4, 2), example_inputs=(torch.randn(1, 4),))
    job = prep.job(Exploding(), "fp32", out_dir=tmp_path, outputs=[], options={})
    with pytest.raises(ConversionError, match=r"the exploding backend failed: RuntimeError: \[ GENERAL_ERROR \] kernel"):
        lower(Exploding(), job)


# ------------------------------------------------------------------------------------ through ExecuTorch


@pytest.mark.slow
@pytest.mark.skipif(not has("executorch"), reason="executorch not installed: pip install 'edge[executorch]'")
@pytest.mark.parametrize("make", [lambda: WindowBlock(fused_attn=True), lambda: TinyTimmViT(fused_attn=True),
                                  lambda: TinyTimmViT(fused_attn=False)], ids=["window-fused", "vit-fused", "vit-unfused"])
def test_timm_like_models_fully_delegated(make, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    art = edge.convert(make().eval(), target="executorch", example_inputs=(x,), out=tmp_path / "a")
    d = art.manifest.details["delegation"]
    assert art.manifest.status == "verified"
    assert d["delegate_calls"] <= 2 and not d["portable_ops"], d


@pytest.mark.slow
@pytest.mark.skipif(not has("executorch"), reason="executorch not installed: pip install 'edge[executorch]'")
def test_meta_and_scalar_buffers_convert_for_executorch(tmp_path):
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.meta, self.body = nn.Linear(11, 3), PaddedConv()

        def forward(self, x, y):
            return self.body(x).mean(-1) + self.meta(y)[..., :1]
    xs = (torch.randn(1, 2, 11), torch.randn(1, 11))
    art = edge.convert(Both().eval(), target="executorch", example_inputs=xs, out=tmp_path / "a")
    cap = art.manifest.details["capture"]
    assert art.manifest.status == "verified"
    assert cap["route"] == "torch.export with 0-d integer buffers as constants" and cap["renamed"] == ["meta -> meta_"]


@pytest.mark.slow
@pytest.mark.skipif(not has("executorch"), reason="executorch not installed: pip install 'edge[executorch]'")
def test_portable_ops_are_named_by_module_and_the_passes_advice_only_when_off(tmp_path):
    class Argmax(nn.Module):   # XNNPACK has no argmax
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).argmax(-1).float()
    x = (torch.randn(2, 4),)
    with pytest.warns(UserWarning) as on:
        art = edge.convert(Argmax().eval(), target="executorch", example_inputs=x, out=tmp_path / "on")
    d = art.manifest.details["delegation"]
    assert any("argmax" in op for ops in d["portable_by_module"].values() for op in ops)
    assert "optimize passes" not in d["warning"] and "XNNPACK has no kernel" in d["warning"]
    with pytest.warns(UserWarning):
        off = edge.convert(Argmax().eval(), target="executorch", example_inputs=x, out=tmp_path / "off", optimize=False)
    assert "optimize passes on" in off.manifest.details["delegation"]["warning"]
    assert on   # the warning is printed, not only recorded
