"""Attention / LayerNorm / token-dropping passes: parity with the modules they replace, export, conversion."""
from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import edge
from conftest import needs
from edge import passes as P
from edge.errors import UsageError
from edge.passes.attention import (SDPA, XNNPACK, EdgeAttention, EdgeLayerNorm, EdgeMultiheadAttention,
                                   TokenDropBlock)
from edge.zoo import create_model
from edge.zoo.vit import Attention, VisionTransformer

ATOL = 1e-5
FAST = settings(max_examples=15, deadline=None)


def close(a, b, atol=ATOL):
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4)


def tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 5, "embed_dim": 32, "depth": 3,
           "num_heads": 4, **kw}
    return VisionTransformer(**cfg).eval()


# ------------------------------------------------------------------------------------------ attention


@FAST
@given(heads=st.sampled_from([1, 2, 3, 4]), head_dim=st.sampled_from([8, 16]), n=st.integers(1, 40),
       b=st.integers(1, 3), fused=st.booleans(), form=st.sampled_from([SDPA, XNNPACK]), split=st.booleans(),
       bias=st.booleans())
def test_edge_attention_matches_timm_attention(heads, head_dim, n, b, fused, form, split, bias):
    torch.manual_seed(n)
    src = Attention(heads * head_dim, heads, fused_attn=fused).eval()
    if not bias:
        src.qkv.bias = None
    x = torch.randn(b, n, heads * head_dim)
    with torch.no_grad():
        assert close(EdgeAttention(src, form, split_qkv=split)(x), src(x))


@FAST
@given(batch_first=st.booleans(), need_weights=st.booleans(), average=st.booleans(), batched=st.booleans(),
       cross=st.booleans(), form=st.sampled_from([SDPA, XNNPACK]), L=st.integers(1, 12), S=st.integers(1, 12))
def test_multihead_attention_matches_torch(batch_first, need_weights, average, batched, cross, form, L, S):
    torch.manual_seed(L * 13 + S)
    E, H, B = 16, 4, 2
    kdim = 12 if cross else None
    src = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    new = EdgeMultiheadAttention(src, form)
    S = S if cross else L
    shape = (lambda n, e: (B, n, e) if batch_first else (n, B, e)) if batched else (lambda n, e: (n, e))
    q = torch.randn(*shape(L, E))
    k = torch.randn(*shape(S, kdim or E)) if cross else q
    v = torch.randn(*shape(S, kdim or E)) if cross else q
    with torch.no_grad():
        want = src(q, k, v, need_weights=need_weights, average_attn_weights=average)
        got = new(q, k, v, need_weights=need_weights, average_attn_weights=average)
    assert close(got[0], want[0])
    if need_weights:   # a caller that asks for the weights gets them, exactly
        assert close(got[1], want[1])
    else:
        assert got[1] is None and want[1] is None


def test_multihead_attention_with_mask_runs_original():
    torch.manual_seed(0)
    src = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x, mask = torch.randn(2, 5, 16), torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    with torch.no_grad():
        assert close(EdgeMultiheadAttention(src, SDPA)(x, x, x, attn_mask=mask)[0], src(x, x, x, attn_mask=mask)[0])


def test_transformer_encoder_layer_keeps_working():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    x = torch.randn(2, 6, 16)
    for target in ("onnx", "executorch"):
        out = P.optimize(layer, target=target)
        assert isinstance(out.self_attn, EdgeMultiheadAttention)
        with torch.no_grad():
            assert close(out(x), layer(x))
    ep = torch.export.export(out, (x,), strict=False)   # the executorch form exports
    with torch.no_grad():
        assert close(ep.module()(x), layer(x))


def test_attention_with_mask():
    torch.manual_seed(0)
    src = Attention(16, 2, fused_attn=False).eval()
    x, mask = torch.randn(1, 5, 16), torch.tril(torch.ones(5, 5, dtype=torch.bool))
    with torch.no_grad():
        q, k, v = src.qkv(x).reshape(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
        ref = src.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                       .transpose(1, 2).reshape(1, 5, 16))
        for form in (SDPA, XNNPACK):
            assert close(EdgeAttention(src, form)(x, attn_mask=mask), ref)


class LookalikeAttention(nn.Module):
    """Owns qkv/proj/num_heads like timm's Attention but computes something else (no softmax)."""

    def __init__(self, dim=16, num_heads=2):
        super().__init__()
        self.num_heads, self.qkv, self.proj = num_heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(q * k + v)


class TimmLike(nn.Module):
    """A user's copy of timm's Attention (not edge's or timm's type): detected by structure."""

    def __init__(self, dim=16, num_heads=2):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("target", ["onnx", "executorch"])
def test_structural_detection_keeps_unfamiliar_forward(target):
    torch.manual_seed(0)
    model = nn.Sequential(TimmLike(), LookalikeAttention()).eval()
    out = P.optimize(model, target=target, disable=("token_drop",))
    assert isinstance(out[0], EdgeAttention)          # same math: rewritten
    assert isinstance(out[1], LookalikeAttention)     # different math behind the same attributes: left alone
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert close(out(x), model(x))
    assert {"pass": "attention", "rewrites": 1, "variant": SDPA if target == "onnx" else XNNPACK} in out.edge_passes


# ------------------------------------------------------------------------------------------ layernorm


@FAST
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), c=st.integers(1, 70), affine=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-6]))
def test_edge_layernorm_matches_layernorm(shape, c, affine, eps):
    torch.manual_seed(c)
    src = nn.LayerNorm(c, eps=eps, elementwise_affine=affine)
    if affine:
        nn.init.normal_(src.weight)
        nn.init.normal_(src.bias)
    x = torch.randn(*shape, c) * 3 + 1
    with torch.no_grad():
        assert close(EdgeLayerNorm(src)(x), src(x))


def test_variants_per_target_share_programs():
    model = tiny_vit()
    for m in model.modules():   # trained-like LayerNorms (a fresh one's scale 1 / shift 0 folds trivially)
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    onnx, ov, et = (P.optimize(model, target=t) for t in ("onnx", "openvino", "executorch"))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        for m in (onnx, ov, et):
            assert close(m(x), model(x))
    def mine(target):   # the forms these passes pick (other passes may split targets for their own reasons)
        return [kv for kv in P.profile_key(P.forms_for(target)) if kv[0] in ("attention", "layernorm")]
    assert mine("onnx") == mine("coreml") == mine("cuda") != mine("executorch")
    assert dict(mine("openvino"))["attention"] == f"{SDPA}, q/k/v split" and dict(mine("onnx"))["attention"] == SDPA
    assert all(m.split_qkv for m in ov.modules() if isinstance(m, EdgeAttention))
    rec = {r["pass"]: r for r in et.edge_passes}
    assert rec["attention"] == {"pass": "attention", "rewrites": 3, "variant": XNNPACK}
    assert rec["layernorm"]["rewrites"] == 7 and not any(isinstance(m, nn.LayerNorm) for m in et.modules())
    assert {r["pass"]: r["rewrites"] for r in onnx.edge_passes}["layernorm"] == 0
    assert "token_drop" not in rec    # off unless keep_tokens is given
    # ExecuTorch: each block's norms carry no scale/shift (folded into qkv / fc1), q * scale folded into qkv
    for blk in et.blocks:
        assert blk.norm1.weight is None and blk.norm1.bias is None and blk.norm2.weight is None
        assert blk.attn.scale == 1.0 and blk.attn.qkv is not model.blocks[0].attn.qkv
    assert et.norm.weight is not None   # the final norm feeds a class-token slice, not a Linear: kept
    assert all(b.norm1.weight is not None for b in model.blocks)   # the user's model is untouched


def test_norm_fold_keeps_a_block_whose_norm_feeds_more_than_the_linear():
    """A block using norm1's output outside attn.qkv cannot take the fold: the probe keeps it whole."""
    model = tiny_vit(depth=1)
    blk = model.blocks[0]

    class NormTwice(type(blk)):
        def forward(self, x):
            return super().forward(x) + self.norm1(x)   # norm1's output used outside attn.qkv too
    blk.__class__ = NormTwice
    nn.init.normal_(blk.norm1.weight)   # a fresh LayerNorm's scale 1 / shift 0 would make any fold exact
    nn.init.normal_(blk.norm1.bias)
    et = P.optimize(model, target="executorch")
    assert et.blocks[0].norm1.weight is not None
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert close(et(x), model(x))


# ------------------------------------------------------------------------------------------ token dropping


@pytest.mark.parametrize("keep,layer", [(0.5, 0), (0.25, 1), (0.6, None)])
def test_token_drop_static_shapes_and_export(keep, layer):
    model = tiny_vit()
    opts = {"keep_tokens": keep} | ({} if layer is None else {"drop_layer": layer})
    dropped = P.optimize(model, **opts)
    k = round(keep * 16)
    rec = dropped.edge_passes[0]
    assert rec["pass"] == "token_drop" and rec["lossy"] is True and rec["keep_ratio"] == keep
    assert rec["drop_layer"] == (1 if layer is None else layer) and rec["tokens_after"] == k + 1
    blk = dropped.blocks[rec["drop_layer"]]
    assert isinstance(blk, TokenDropBlock)
    seen = []
    hook = dropped.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        y = dropped(x)
    hook.remove()
    assert seen == [(3, k + 1, 32)] and y.shape == (3, 5)
    ep = torch.export.export(dropped, (x,), strict=False)   # topk + gather: static shapes, exportable
    assert all(isinstance(d, int) for n in ep.graph.nodes if "val" in n.meta and hasattr(n.meta["val"], "shape")
               for d in n.meta["val"].shape)
    with torch.no_grad():
        assert close(ep.module()(x), y)


def test_token_drop_keeps_top_patches_by_cls_attention():
    model = tiny_vit(depth=2)
    blk = TokenDropBlock(model.blocks[0], keep=4)
    x = torch.randn(1, 17, 32)
    with torch.no_grad():
        # reference: the block's own attention map, class-token row, summed over heads
        a = model.blocks[0].attn
        h = model.blocks[0].norm1(x)
        q, k, _ = a.qkv(h).reshape(1, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)
        score = ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1)[:, :, 0, 1:].sum(1)
        idx = score.topk(4).indices.sort().values[0] + 1
        want = model.blocks[0](x)[:, torch.cat([torch.tensor([0]), idx])]
        assert close(blk(x), want)


def test_token_drop_split_block_equals_whole_block():
    """The dropping block runs queries/proj/MLP on kept tokens only: the kept rows are the same numbers."""
    model = tiny_vit(depth=3)
    dropped = P.optimize(model, keep_tokens=0.5, drop_layer=1)
    blk = dropped.blocks[1]
    assert dropped.edge_passes[0]["split_block"] is True and blk.split
    whole = TokenDropBlock(blk.block, blk.keep, blk.num_prefix)
    x = torch.randn(4, 17, 32)
    with torch.no_grad():
        assert close(blk(x), whole(x))
        assert blk(x).shape == (4, 9, 32)


def test_token_drop_unfamiliar_block_runs_whole():
    class PostNorm(nn.Module):   # norm1/attn/norm2/mlp children but a post-norm forward: not split
        def __init__(self, blk):
            super().__init__()
            self.norm1, self.attn, self.norm2, self.mlp = blk.norm1, blk.attn, blk.norm2, blk.mlp

        def forward(self, x):
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))

    model = tiny_vit(depth=3)
    model.blocks[0] = PostNorm(model.blocks[0])
    dropped = P.optimize(model, keep_tokens=0.5, drop_layer=0)
    assert dropped.edge_passes[0]["split_block"] is False and not dropped.blocks[0].split


def test_token_drop_bad_input():
    with pytest.raises(UsageError, match="keep_tokens"):
        P.optimize(tiny_vit(), keep_tokens=1.5)
    with pytest.raises(UsageError, match="drop_layer"):
        P.optimize(tiny_vit(), keep_tokens=0.5, drop_layer=2)
    with pytest.raises(UsageError, match="needs a ViT"):
        P.optimize(nn.Sequential(nn.Linear(4, 4)), keep_tokens=0.5)


# ------------------------------------------------------------------------------------------ conversions


@pytest.mark.slow
def test_onnx_convert_sdpa_and_token_drop(tmp_path):
    art = edge.convert("vit_tiny_digits", target="onnx", out=tmp_path / "drop", keep_tokens=0.5)
    p = art.manifest.parity
    assert p["passed"] and p["outputs"]["output"]["max_abs"] < 1e-4   # exact vs the token-dropped eager model
    rec = art.manifest.details["optimize_passes"][0]
    assert rec["pass"] == "token_drop" and rec["keep_ratio"] == 0.5 and rec["drop_layer"] == 1 and rec["lossy"]
    vs = p["vs_original"]                                       # agreement with the undropped model: recorded
    assert vs["judged"] is False and vs["test_set_samples"] == 359 and vs["test_set_top1_agreement"] >= 0.98
    assert {"pass": "attention", "rewrites": 4, "variant": SDPA} in art.manifest.details["optimize_passes"]
    assert edge.verify(tmp_path / "drop")["passed"]             # re-verification rebuilds the dropped reference


@pytest.mark.slow
@needs("openvino", "openvino")
def test_openvino_parity(tmp_path):
    art = edge.convert("vit_tiny_digits", target="openvino", out=tmp_path / "ov")
    assert art.manifest.parity["passed"]
    passes = art.manifest.details["optimize_passes"]
    assert {"pass": "attention", "rewrites": 4, "variant": f"{SDPA}, q/k/v split"} in passes
    hist = art.manifest.details["op_histogram"]   # q, k, v as their own MatMuls: no split of a qkv output
    assert "VariadicSplit" not in hist and "Split" not in hist, hist


@pytest.mark.slow
@needs("executorch", "executorch")
def test_executorch_whole_model_in_one_delegate(tmp_path):
    model, x = tiny_vit(depth=2), torch.randn(1, 1, 16, 16)
    before = edge.convert(model, example_inputs=(x,), target="executorch", out=tmp_path / "raw", optimize=False,
                          verify=False)   # only its delegation is looked at
    after = edge.convert(model, example_inputs=(x,), target="executorch", out=tmp_path / "opt")
    d0, d1 = before.manifest.details["delegation"], after.manifest.details["delegation"]
    assert d0["delegate_calls"] > 1 and "aten_native_layer_norm_default" in d0["portable_ops"]
    assert d1["fully_delegated"] and d1["delegate_calls"] == 1, d1   # the blocks (and the rest) lower whole
    assert after.manifest.parity["passed"]
    rec = {r["pass"]: r for r in after.manifest.details["optimize_passes"]}
    assert rec["attention"]["variant"] == XNNPACK and rec["layernorm"]["variant"] == "decomposed"


class LayerNorm2d(nn.LayerNorm):   # timm's layout (ConvNeXt): found by class name and structure
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerNorm2dOverWidth(nn.LayerNorm):   # same name, normalizes something else: the probe must refuse it
    def forward(self, x):
        return super().forward(x)


LayerNorm2dOverWidth.__name__ = "LayerNorm2d"


@pytest.mark.parametrize("target", ["openvino", "onnx", "executorch", "coreml"])
def test_layernorm2d_takes_each_targets_form(target):
    """Channel LayerNorms of NCHW maps: means over dim 1 on OpenVINO/ONNX, a plain LayerNorm (then decomposed)
    on ExecuTorch, untouched elsewhere; the same numbers every time; a look-alike that differs is left alone."""
    from edge.passes.attention import ChannelsFirstLayerNorm, ChannelsLastLayerNorm, layernorm2d_variant
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8, eps=1e-6), nn.GELU(), LayerNorm2dOverWidth(6))
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    fast = P.optimize(model, target=target)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert close(fast(x), model(x))
    rec = {r["pass"]: r for r in fast.edge_passes}["layernorm2d"]
    form = layernorm2d_variant(P.forms_for(target))
    assert rec["variant"] == form and rec["rewrites"] == (0 if form == "native" else 1)
    want = {"channels-first": ChannelsFirstLayerNorm, "native": LayerNorm2d}.get(form, ChannelsLastLayerNorm)
    assert type(fast[1]) is want and type(fast[3]) is LayerNorm2dOverWidth
    if target == "executorch":   # its plain LayerNorm went on to the layernorm pass
        assert isinstance(fast[1].norm, EdgeLayerNorm)
    assert type(model[1]) is LayerNorm2d   # the user's model is untouched
