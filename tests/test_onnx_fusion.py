"""ONNX Runtime fusions of the ONNX target (converters/onnx/fusion.py): attention by what it computes, GELU.

Every case converts through edge.convert, which verifies the artifact against PyTorch; the tests also check which
fused op replaced the attention, and that what is not attention is left alone.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edge
from tests.conftest import needs
from tests.timm_like import Attention as TimmAttention
from tests.timm_like import WindowAttention

pytestmark = [needs("onnxruntime", "onnx"), needs("onnxscript", "onnx"), pytest.mark.slow]


class SeparateProjections(nn.Module):
    """transformers' ViT/DeiT self-attention: q, k, v Linears, heads split by view + transpose, SDPA."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(self.norm(x)).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        return F.gelu(self.fc(y))


class CrossEinsum(nn.Module):
    """CvT / SegFormer-style: keys and values from a shorter sequence, attention scores by einsum."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.reduce = nn.Conv1d(dim, dim, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        y = self.reduce(x.transpose(1, 2)).transpose(1, 2)
        q = self.q(x).view(b, n, self.heads, -1).permute(0, 2, 1, 3)
        k, v = (p(y).view(b, n // 2, self.heads, -1).permute(0, 2, 1, 3) for p in (self.k, self.v))
        a = torch.einsum("bhlk,bhtk->bhlt", q, k) * self.scale
        return torch.einsum("bhlt,bhtv->bhlv", a.softmax(-1), v).permute(0, 2, 1, 3).reshape(b, n, c)


class NotAttention(nn.Module):
    """Softmaxes that are not attention: class scores times a constant table, and a scale applied after a bias
    (softmax(s * (QK + b)) has no fused form); both must stay as they are."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.fc = nn.Linear(dim, 8)
        self.table = nn.Parameter(torch.randn(8, dim))
        self.bias = nn.Parameter(torch.randn(1, 1, 6, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        scores = self.fc(x).softmax(-1) @ self.table
        q = x.view(b, n, 2, -1).transpose(1, 2)
        a = ((q @ q.transpose(-1, -2) + self.bias) * 0.3).softmax(-1) @ q
        return scores + a.transpose(1, 2).reshape(b, n, c)


def _convert(model: nn.Module, x: torch.Tensor, tmp_path, **options):
    torch.manual_seed(0)
    art = edge.convert(model.eval(), target="onnx", example_inputs=(x,), out=tmp_path / "a", options=options)
    assert art.manifest.status == "verified" and art.manifest.parity["passed"], art.manifest.parity
    import onnx
    ops = {n.op_type for n in onnx.load(str(art.main_path)).graph.node}
    with edge.load(art.path) as session, torch.no_grad():   # the artifact, run again by edge's own runtime
        got = session.run(x.numpy())[0]
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)
    return art.manifest.details, ops


@pytest.mark.parametrize("name,make,tokens,fused", [
    ("transformers-separate-qkv-sdpa", SeparateProjections, 10, "Attention"),
    ("timm-packed-qkv-sdpa", lambda: TimmAttention(32, 2, fused_attn=True), 10, "Attention"),
    ("timm-packed-qkv-manual", lambda: TimmAttention(32, 2, fused_attn=False), 10, "Attention"),
    ("swin-window-relative-position-bias", lambda: WindowAttention(32, 2, window=3), 9, "Attention"),
    ("cross-attention-by-einsum", CrossEinsum, 10, "MultiHeadAttention"),
])
def test_attention_forms_fuse_and_keep_their_numbers(name, make, tokens, fused, tmp_path):
    import onnx
    torch.manual_seed(0)
    model = make()
    details, ops = _convert(model, torch.randn(2, tokens, 32), tmp_path)
    assert details["fusion"]["ops"].get(fused, 0) == 1, details["fusion"]
    assert fused in ops and "Softmax" not in ops, ops
    node = next(n for n in onnx.load(str(tmp_path / "a" / "model.onnx")).graph.node if n.op_type == fused)
    if name.startswith("swin"):   # the relative position bias is the op's attention_bias input
        assert len(node.input) == 6 and node.input[5], node.input
    if name.startswith("transformers"):   # GELU fused exactly (erf); its tanh approximation is never used
        assert details["fusion"]["ops"].get("Gelu") == 1 and not {"FastGelu", "BiasGelu", "Erf"} & ops, ops


def test_what_is_not_attention_is_left_alone(tmp_path):
    torch.manual_seed(0)
    details, ops = _convert(NotAttention(), torch.randn(1, 6, 32), tmp_path)
    assert not {"Attention", "MultiHeadAttention"} & ops and "Softmax" in ops, details["fusion"]


def test_fusion_none_keeps_standard_onnx(tmp_path):
    import onnx
    torch.manual_seed(0)
    details, ops = _convert(SeparateProjections(), torch.randn(1, 10, 32), tmp_path, fusion="none")
    model = onnx.load(str(tmp_path / "a" / "model.onnx"))
    assert "fusion" not in details and {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert "Softmax" in ops and "Erf" in ops


def test_a_fusion_that_changes_the_numbers_is_not_kept(tmp_path, monkeypatch):
    """The converter runs the fused graph against the unfused one: a wrong fusion (here its scale doubled, the kind
    of mistake a matcher could make) is dropped with the reason, and the unfused graph is what ships."""
    from edge.converters.onnx import fusion
    real = fusion.fuse_for_onnxruntime

    def wrong_scale(model):
        fused, record = real(model)
        for node in fused.graph.node:
            for attr in node.attribute:
                if node.op_type == "Attention" and attr.name == "scale":
                    attr.f *= 2
        return fused, record

    monkeypatch.setattr(fusion, "fuse_for_onnxruntime", wrong_scale)
    torch.manual_seed(0)
    details, ops = _convert(SeparateProjections(), torch.randn(1, 10, 32), tmp_path)
    assert "differ from the unfused graph" in details["fusion"]["kept_unfused"], details["fusion"]
    assert details["fusion"]["would_fuse"]["Attention"] == 1 and "Attention" not in ops
