"""Attention, LayerNorm and token-dropping passes for ViTs.

``attention``  rewrites hand-written ``q @ k^T -> softmax -> @ v`` attention (timm's Attention with
               ``fused_attn=False`` and modules with the same structure), SDPA attention and
               ``nn.MultiheadAttention`` into the form each target keeps fused: SDPA where the backend
               fuses it (ONNX Runtime, OpenVINO, CoreML iOS18, CUDA), and on ExecuTorch a form made of
               ops XNNPACK delegates whole (slices, 3-D ``bmm``, softmax): SDPA's decomposition leaves
               ``any/eq/where/logical_not/full_like`` on portable kernels and splits the graph.
               On ExecuTorch the query rows of ``qkv`` carry the attention scale (no ``q * scale`` op).
``layernorm``  on ExecuTorch only, writes LayerNorm with both means as a matmul by a column of 1/C
               (``native_layer_norm`` stays on portable kernels; XNNPACK's 4-D mean needs layout
               transposes), and folds the scale/shift of a pre-norm block's norm1/norm2 into
               ``attn.qkv`` / ``mlp.fc1`` when a probe input shows the same block output.
``token_drop`` (off by default, ``keep_tokens=0.5``) keeps the class token and the top-k patch tokens by
               class-token attention (summed over heads) after one block, as in HiRED; k is a static
               ``round(keep * patches)`` so shapes stay static. Lossy by design: the record says so.

Every qkv-attention rewrite (detected by structure: a ``qkv`` Linear, ``proj`` and ``num_heads``) is checked
against the original on a probe input before it is kept, so an unfamiliar ``forward`` that happens to own
a ``qkv`` Linear (or a timm version with extra norms) is left alone rather than silently replaced.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import UsageError
from edge.passes import OptimizeContext, declare_form, refit_linear, register_pass

XNNPACK = "xnnpack"   # the ExecuTorch form
SDPA = "sdpa"         # the form other backends fuse
PROBE_ATOL = 1e-5


# Forms the converters choose from (``Converter.forms``). Measurements behind the choices:
# - attention_qkv="split": q, k and v as three matmuls on slices of qkv's weight (constants a converter
#   folds), not one matmul whose output is split. OpenVINO ran the split on a reference kernel and its int8
#   attention then needed extra transposes: vit_tiny int8, one run, 5 rounds: 5.63 -> 5.16 ms (f32 hint),
#   4.67 -> 4.40 ms (bf16 hint); fp32 11.37 -> 11.14 ms. ONNX Runtime fp32 13.84 -> 13.74 ms.
#   Separate q/k/v projections (transformers' ViTSelfAttention and its kin) are that form already, and OpenVINO
#   gets them as they are: packing them into one qkv matmul gained nothing (transformers ViT-Ti, 224 px, AMD EPYC
#   Zen 3, 2 threads, 5 interleaved rounds: fp32 37.19 -> 37.25 ms, int8 36.80 -> 36.40 ms, within noise).
# - layernorm2d="channels-first": a channel LayerNorm of an NCHW tensor as means over dim 1 (no transposes):
#   VisionGRU-Ti's conv stem at 1024 px, one run, 3 rounds: OpenVINO 72 -> 43 ms (its Transpose of the
#   36 x 512 x 512 map alone took 27 ms), ONNX Runtime 85 -> 76 ms.
declare_form("attention", SDPA, (SDPA, XNNPACK),
             "sdpa: fused scaled_dot_product_attention; xnnpack: the bmm/softmax form XNNPACK delegates whole")
declare_form("attention_qkv", "fused", ("fused", "split"),
             "split: q, k and v as three matmuls on slices of qkv's weight")
declare_form("layernorm", "native", ("native", "decomposed"),
             "decomposed: LayerNorm's two means as matmuls (XNNPACK delegates them; native_layer_norm it does not)")
declare_form("layernorm2d", "native", ("native", "channels-first"),
             "channels-first: a channel LayerNorm of an NCHW map as means over dim 1 (no transposes)")


def _attention_form(forms: dict[str, Any]) -> tuple[str, bool]:
    """(form, q/k/v as three matmuls) of the attention rewrite under ``forms``."""
    return forms["attention"], forms["attention"] == SDPA and forms["attention_qkv"] == "split"


def attention_variant(forms: dict[str, Any]) -> str:
    form, split = _attention_form(forms)
    return f"{form}, q/k/v split" if split else form


def layernorm_variant(forms: dict[str, Any]) -> str:
    return forms["layernorm"]


def layernorm2d_variant(forms: dict[str, Any]) -> str:
    if forms["layernorm2d"] == "channels-first":
        return "channels-first"
    return "channels-last, decomposed" if layernorm_variant(forms) == "decomposed" else "native"


# ---------------------------------------------------------------------------------------------- core math

def _heads(t: torch.Tensor, B: int, N: int, H: int, D: int) -> torch.Tensor:
    """[B, N, H*D] -> [B*H, N, D] without 4-D matmuls (they export as expand_copy, which XNNPACK skips)."""
    return t.reshape(B, N, H, D).permute(0, 2, 1, 3).reshape(B * H, N, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, form: str,
           attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over [B, H, N, D] tensors in ``form``; ``attn_mask`` is additive, broadcast to [B, H, Nq, Nk]."""
    if form == SDPA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    q3, k3, v3 = q.reshape(B * H, Nq, D), k.reshape(B * H, Nk, D), v.reshape(B * H, Nk, v.shape[-1])
    s = torch.bmm(q3 if scale == 1.0 else q3 * scale, k3.transpose(1, 2))
    if attn_mask is not None:
        s = s + attn_mask.expand(B, H, Nq, Nk).reshape(B * H, Nq, Nk)
    return torch.bmm(s.softmax(dim=-1), v3).reshape(B, H, Nq, v.shape[-1])


# ------------------------------------------------------------------------------------- timm-style attention

def _scaled_rows(qkv: nn.Linear, rows: int, scale: float) -> nn.Linear:
    """``qkv`` with its first ``rows`` outputs (the queries) multiplied by ``scale``."""
    w = qkv.weight.detach().double().clone()
    w[:rows] *= scale
    b = None if qkv.bias is None else qkv.bias.detach().double().clone()
    if b is not None:
        b[:rows] *= scale
    return refit_linear(qkv, w, b)


def _is_qkv_attention(m: nn.Module) -> bool:
    qkv, proj, heads = getattr(m, "qkv", None), getattr(m, "proj", None), getattr(m, "num_heads", None)
    return (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(heads, int) and heads > 0
            and qkv.out_features == 3 * qkv.in_features and qkv.in_features % heads == 0
            and proj.in_features == qkv.in_features)


class EdgeAttention(nn.Module):
    """timm's Attention (qkv Linear, heads, proj) in a chosen form; shares the original's parameters."""

    def __init__(self, src: nn.Module, form: str, split_qkv: bool = False):
        super().__init__()
        self.qkv, self.proj, self.num_heads = src.qkv, src.proj, src.num_heads
        self.split_qkv = split_qkv   # q, k, v from three slices of qkv's weight (form attention_qkv)
        dim = src.qkv.in_features
        self.head_dim = dim // self.num_heads
        self.scale = float(getattr(src, "scale", self.head_dim ** -0.5))
        # timm's optional per-head norms (Identity unless qk_norm=True)
        self.q_norm = getattr(src, "q_norm", None) or nn.Identity()
        self.k_norm = getattr(src, "k_norm", None) or nn.Identity()
        self.form = form
        if form == XNNPACK and isinstance(self.q_norm, nn.Identity):   # q * scale folded into q's rows of qkv
            self.qkv = _scaled_rows(src.qkv, dim, self.scale)
            self.scale = 1.0

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as [B, H, N, D]; the qkv output is sliced (not unbound: unbind exports as squeeze_copy),
        or with ``split_qkv`` each is its own matmul on a slice of the weight."""
        B, N, C = x.shape
        if self.split_qkv:
            w, b = self.qkv.weight, self.qkv.bias
            parts = [F.linear(x, w[i * C:(i + 1) * C], None if b is None else b[i * C:(i + 1) * C]) for i in range(3)]
        else:
            qkv = self.qkv(x)
            parts = [qkv[..., i * C:(i + 1) * C] for i in range(3)]
        q, k, v = (p.reshape(B, N, self.num_heads, self.head_dim).permute(0, 2, 1, 3) for p in parts)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qk(x)
        if attn_mask is not None and attn_mask.dtype == torch.bool:   # timm: True = attend
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
        o = attend(q, k, v, self.scale, self.form, attn_mask)
        return self.proj(o.permute(0, 2, 1, 3).reshape(B, N, C))


# ----------------------------------------------------------------------------------- nn.MultiheadAttention

class EdgeMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with the same call signature and parameters, in a chosen form.

    ``need_weights=True`` (PyTorch's default) returns the attention weights exactly as the original
    does (averaged over heads unless ``average_attn_weights=False``): the scores are then computed
    explicitly, since a fused kernel cannot return them. Calls using masks or ``is_causal`` run the
    original module unchanged.
    """

    def __init__(self, src: nn.MultiheadAttention, form: str):
        super().__init__()
        self.mha, self.form = src, form

    def __getattr__(self, name: str):
        """Callers (e.g. nn.TransformerEncoderLayer) read ``batch_first``, ``in_proj_weight``...: the original's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["mha"], name)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        m = self.mha
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            return m(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                     attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        elif m.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        L, B, E = query.shape
        S = key.shape[0]
        H, D = m.num_heads, E // m.num_heads
        if m._qkv_same_embed_dim:
            wq, wk, wv = m.in_proj_weight[:E], m.in_proj_weight[E:2 * E], m.in_proj_weight[2 * E:]
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        bq = bk = bv = None
        if m.in_proj_bias is not None:
            bq, bk, bv = m.in_proj_bias[:E], m.in_proj_bias[E:2 * E], m.in_proj_bias[2 * E:]
        # [L, B, E] -> [B, H, L, D]
        q = F.linear(query, wq, bq).reshape(L, B, H, D).permute(1, 2, 0, 3)
        k = F.linear(key, wk, bk).reshape(S, B, H, D).permute(1, 2, 0, 3)
        v = F.linear(value, wv, bv).reshape(S, B, H, D).permute(1, 2, 0, 3)
        scale = D ** -0.5
        weights = None
        if need_weights:
            weights = torch.bmm((q * scale).reshape(B * H, L, D), k.reshape(B * H, S, D).transpose(1, 2))
            weights = weights.softmax(dim=-1)
            o = torch.bmm(weights, v.reshape(B * H, S, D)).reshape(B, H, L, D)
            weights = weights.reshape(B, H, L, S)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            o = attend(q, k, v, scale, self.form)
        o = F.linear(o.permute(2, 0, 1, 3).reshape(L, B, E), m.out_proj.weight, m.out_proj.bias)
        if not batched:
            o = o.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        elif m.batch_first:
            o = o.transpose(0, 1)
        return o, weights


def _mha_supported(m: nn.MultiheadAttention) -> bool:
    return m.bias_k is None and m.bias_v is None and not m.add_zero_attn


# --------------------------------------------------------------------------------------------- LayerNorm

class EdgeLayerNorm(nn.Module):
    """LayerNorm over the last dim with both means as a linear layer whose one output row is ``1/C``.

    XNNPACK has no layer_norm, and it delegates ``mean.dim`` only on 4-D tensors over the last two dims,
    as a global average pooling wrapped in layout transposes: 25 such LayerNorms cost 8.5 ms where the
    fully-connected form (one small FC op per mean, no transposes) costs 5.4 ms (measured with
    ExecuTorch 1.5.1, 197 x 192 tokens). PT2E int8 leaves it in fp32 (the module is one of the
    ExecuTorch converter's fp32 modules). ``linear``, not ``matmul``: XNNPACK keeps linear from decomposition
    (a 4-D matmul, VisionGRU's NHWC LayerNorms, lowered with an ``expand`` of the column that ran on a portable
    kernel), while an ``mm`` makes its ConvertToLinearPass re-trace the whole delegated graph. The linear layer
    reads the tensor as it is: XNNPACK's fully-connected op takes any leading dims, and flattening them first
    cost two reshapes per mean (20 of the transformers ViT-Ti's 129 delegated ops).
    """

    def __init__(self, src: nn.LayerNorm):
        super().__init__()
        # eps stays a float too: callers read it as nn.LayerNorm's (nn.TransformerEncoderLayer compares them)
        self.weight, self.bias, self.eps = src.weight, src.bias, float(src.eps)
        # callers that read the norm's attributes (F.layer_norm(x, norm.normalized_shape, norm.weight, ...))
        self.normalized_shape, self.elementwise_affine = tuple(src.normalized_shape), src.elementwise_affine
        c = src.normalized_shape[-1]
        self.register_buffer("average", torch.full((1, c), 1.0 / c), persistent=False)
        # eps as a tensor in forward: a Python number added to a tensor costs ExecuTorch one more re-trace
        # of the whole program (its ScalarToTensorPass), which is skipped when no op takes one
        self.register_buffer("eps_tensor", torch.tensor(self.eps), persistent=False)

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.average)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - self._mean(x)
        y = d * torch.rsqrt(self._mean(d * d) + self.eps_tensor)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of an NCHW tensor computed in place: means over the channels, no transposes."""

    def __init__(self, src: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = src.weight, src.bias, float(src.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(1, keepdim=True)
        y = d * torch.rsqrt((d * d).mean(1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class ChannelsLastLayerNorm(nn.Module):
    """permute -> ``norm`` (a plain nn.LayerNorm, for the ``layernorm`` pass to rewrite) -> permute back."""

    def __init__(self, src: nn.LayerNorm):
        super().__init__()
        self.norm = nn.LayerNorm(src.normalized_shape, eps=src.eps, elementwise_affine=src.elementwise_affine,
                                 bias=src.bias is not None)
        self.norm.weight, self.norm.bias = src.weight, src.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# -------------------------------------------------------------------------------------------- rewriting

def _probe_equal(old: nn.Module, new: nn.Module, make_input) -> bool:
    """Does ``new`` compute what ``old`` does on a probe input (fp32, atol 1e-5)?"""
    try:
        with torch.no_grad():
            x = make_input()
            a, b = old(*x), new(*x)
    except Exception:
        return False
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return len(a) == len(b) and all(
        (p is None and q is None) or (p is not None and q is not None and p.shape == q.shape
                                      and torch.allclose(p.float(), q.float(), atol=PROBE_ATOL, rtol=1e-4))
        for p, q in zip(a, b))


def _replace_children(root: nn.Module, swap) -> int:
    """Replace every submodule ``c`` for which ``swap(c)`` returns a module; returns the count."""
    n = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = swap(child)
            if new is not None:
                setattr(parent, name, new)
                n += 1
    return n


@register_pass("attention", "attention in the form each target keeps fused (SDPA, on OpenVINO with q/k/v as three "
                            "matmuls; XNNPACK-whole bmm form on ExecuTorch)", order=20, variant=attention_variant)
def attention_pass(module: nn.Module, ctx: OptimizeContext) -> int:
    form, split = _attention_form(ctx.forms)
    gen = torch.Generator().manual_seed(0)

    def swap(child: nn.Module):
        if isinstance(child, (EdgeAttention, EdgeMultiheadAttention)):
            return None
        if _is_qkv_attention(child):
            new = EdgeAttention(child, form, split_qkv=split)
            dim = child.qkv.in_features
            ok = _probe_equal(child, new, lambda: (torch.randn(2, 5, dim, generator=gen),))
            return new if ok else None
        if isinstance(child, nn.MultiheadAttention) and _mha_supported(child):
            return EdgeMultiheadAttention(child, form)
        return None
    return _replace_children(module, swap)


@register_pass("layernorm2d", "channel LayerNorm of NCHW maps (timm's LayerNorm2d, VisionGRU's stem): means over "
                              "the channels on OpenVINO/ONNX (no transposes); on ExecuTorch a plain LayerNorm "
                              "the layernorm pass decomposes", order=29, variant=layernorm2d_variant)
def layernorm2d_pass(module: nn.Module, ctx: OptimizeContext) -> int:
    """Modules named ``LayerNorm2d`` that subclass nn.LayerNorm over one dim; each swap is checked on a probe."""
    form = layernorm2d_variant(ctx.forms)
    if form == "native":
        return 0
    make = ChannelsFirstLayerNorm if form == "channels-first" else ChannelsLastLayerNorm
    gen = torch.Generator().manual_seed(0)

    def swap(child: nn.Module):
        if not (isinstance(child, nn.LayerNorm) and type(child).__name__ == "LayerNorm2d"
                and len(child.normalized_shape) == 1):
            return None
        new = make(child)
        c = child.normalized_shape[0]
        return new if _probe_equal(child, new, lambda: (torch.randn(2, c, 3, 5, generator=gen),)) else None
    return _replace_children(module, swap)


@register_pass("layernorm", "LayerNorm with its two means as matmuls on ExecuTorch (XNNPACK delegates it; native_layer_norm "
                            "stays on portable kernels)", order=30, variant=layernorm_variant)
def layernorm_pass(module: nn.Module, ctx: OptimizeContext) -> int:
    if layernorm_variant(ctx.forms) != "decomposed":
        return 0

    def swap(child: nn.Module):
        if type(child) is nn.LayerNorm and len(child.normalized_shape) == 1:
            return EdgeLayerNorm(child)
        return None
    n = _replace_children(module, swap)
    _fold_block_norms(module)
    return n


def _fold_norm(norm: EdgeLayerNorm, linear: nn.Linear) -> nn.Linear:
    """The Linear that computes ``linear(norm(x))`` from the unscaled normalized x: W*g, W@b + c."""
    w = linear.weight.detach().double()
    g = None if norm.weight is None else norm.weight.detach().double()
    b = None if norm.bias is None else norm.bias.detach().double()
    bias = None if linear.bias is None else linear.bias.detach().double()
    if b is not None:
        bias = w @ b + (0 if bias is None else bias)
    return refit_linear(linear, w * g if g is not None else w, bias)


def _fold_block_norms(module: nn.Module) -> None:
    """In timm-layout pre-norm blocks, fold norm1's/norm2's scale and shift into attn.qkv / mlp.fc1.

    Saves a multiply and an add per LayerNorm (and their int8 conversions). A block is changed only
    when a probe input gives the same output with the folded copy (its norms must feed only those Linears).
    """
    def foldable(blk: nn.Module, norm: str, owner: str, linear: str) -> bool:
        n, lin = getattr(blk, norm, None), getattr(getattr(blk, owner, None), linear, None)
        return (isinstance(n, EdgeLayerNorm) and isinstance(lin, nn.Linear)
                and (n.weight is not None or n.bias is not None))

    for parent in list(module.modules()):
        for name, blk in list(parent.named_children()):
            folds = [f for f in (("norm1", "attn", "qkv"), ("norm2", "mlp", "fc1")) if foldable(blk, *f)]
            if not folds:
                continue
            folded = copy.deepcopy(blk)
            for norm_name, owner, linear in folds:
                norm, host = getattr(folded, norm_name), getattr(folded, owner)
                setattr(host, linear, _fold_norm(norm, getattr(host, linear)))
                norm.weight = norm.bias = None
            dim = getattr(blk, folds[0][0]).average.shape[-1]
            if _probe_equal(blk, folded, lambda: (torch.randn(2, 5, dim),)):
                setattr(parent, name, folded)


# ------------------------------------------------------------------------------------------ token dropping

_BLOCK_CHILDREN = {"norm1", "attn", "norm2", "mlp", "ls1", "ls2", "drop_path", "drop_path1", "drop_path2"}


class TokenDropBlock(nn.Module):
    """Runs ``block`` on all tokens, then keeps the class token and the ``keep`` patch tokens that the
    class token attended to most in this block (attention summed over heads), in their original order.

    With a pre-norm block of timm's layout (norm1/attn/norm2/mlp, optional ls*/drop_path*) the tokens
    are picked inside the block (``split``): keys and values still come from every token, but queries,
    the attention output projection and the MLP run on the kept tokens only. A dropped token's output
    is thrown away anyway, so the kept outputs are the same numbers (checked on a probe input when the
    pass installs it; otherwise the whole block runs and the rows are gathered after it).
    """

    def __init__(self, block: nn.Module, keep: int, num_prefix: int = 1, split: bool = False):
        super().__init__()
        self.block, self.keep, self.num_prefix, self.split = block, int(keep), int(num_prefix), bool(split)

    def _qkv(self, h: torch.Tensor):
        """[B, H, N, D] q, k, v of this block's attention on normed input ``h``, and the scale."""
        attn = self.block.attn
        B, N, C = h.shape
        H = attn.num_heads
        qkv = attn.qkv(h)
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, N, H, C // H).permute(0, 2, 1, 3) for i in range(3))
        q, k = getattr(attn, "q_norm", nn.Identity())(q), getattr(attn, "k_norm", nn.Identity())(k)
        return q, k, v, float(getattr(attn, "scale", (C // H) ** -0.5))

    @staticmethod
    def _cls_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
        B, H, N, D = k.shape
        s = torch.bmm((q[:, :, :1] * scale).reshape(B * H, 1, D), k.reshape(B * H, N, D).transpose(1, 2))
        return s.softmax(dim=-1).reshape(B, H, N).sum(dim=1)

    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] class-token attention of this block on its input ``x`` (summed over heads)."""
        attn = self.block.attn
        h = self.block.norm1(x)
        B, N, C = h.shape
        H, D = attn.num_heads, C // attn.num_heads
        w, bias = attn.qkv.weight, attn.qkv.bias   # only the class token's q and every token's k are needed
        q = F.linear(h[:, :1], w[:C], None if bias is None else bias[:C]).reshape(B, 1, H, D).permute(0, 2, 1, 3)
        k = F.linear(h, w[C:2 * C], None if bias is None else bias[C:2 * C]).reshape(B, N, H, D).permute(0, 2, 1, 3)
        q, k = getattr(attn, "q_norm", nn.Identity())(q), getattr(attn, "k_norm", nn.Identity())(k)
        return self._cls_scores(q, k, float(getattr(attn, "scale", D ** -0.5)))

    def _kept(self, score: torch.Tensor) -> torch.Tensor:
        """[B, prefix + keep] indices: the prefix tokens, then the top-``keep`` patches in token order."""
        B = score.shape[0]
        idx = torch.topk(score[:, self.num_prefix:], self.keep, dim=1).indices.sort(dim=1).values + self.num_prefix
        if self.num_prefix == 0:
            return idx
        prefix = torch.arange(self.num_prefix, device=idx.device, dtype=idx.dtype).unsqueeze(0).expand(B, -1)
        return torch.cat([prefix, idx], dim=1)

    @staticmethod
    def _rows(t: torch.Tensor, idx: torch.Tensor, dim: int = 1) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = idx.shape[1]
        view = [idx.shape[0]] + [1] * (t.dim() - 1)
        view[dim] = idx.shape[1]
        return torch.gather(t, dim, idx.view(view).expand(shape))

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        blk, attn = self.block, self.block.attn
        ident = nn.Identity()
        q, k, v, scale = self._qkv(blk.norm1(x))
        idx = self._kept(self._cls_scores(q, k, scale))
        o = attend(self._rows(q, idx, 2), k, v, scale, getattr(attn, "form", SDPA))   # kept queries, all keys
        B, H, n, D = o.shape
        o = getattr(attn, "norm", ident)(o.permute(0, 2, 1, 3).reshape(B, n, H * D))
        y = self._rows(x, idx) + getattr(blk, "drop_path1", getattr(blk, "drop_path", ident))(
            getattr(blk, "ls1", ident)(attn.proj(o)))
        return y + getattr(blk, "drop_path2", getattr(blk, "drop_path", ident))(
            getattr(blk, "ls2", ident)(blk.mlp(blk.norm2(y))))

    def _forward_whole(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._kept(self.cls_attention(x))
        return self._rows(self.block(x), idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_split(x) if self.split else self._forward_whole(x)

    @classmethod
    def install(cls, block: nn.Module, keep: int, num_prefix: int, tokens: int) -> "TokenDropBlock":
        """The split form when the block has timm's pre-norm layout and computes the same rows on a probe."""
        whole = cls(block, keep, num_prefix)
        names = {n for n, _ in block.named_children()}
        if not ({"norm1", "attn", "norm2", "mlp"} <= names <= _BLOCK_CHILDREN):
            return whole
        split = cls(block, keep, num_prefix, split=True)
        dim = block.attn.qkv.in_features
        return split if _probe_equal(whole, split, lambda: (torch.randn(2, tokens, dim),)) else whole


def _vit_parts(module: nn.Module) -> tuple[nn.Module, int] | None:
    """(blocks container, number of patch tokens) of a ViT with edge's / timm's structure, or None."""
    blocks, pe = getattr(module, "blocks", None), getattr(module, "patch_embed", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0 or pe is None:
        return None
    if not all(hasattr(b, "norm1") and _is_qkv_attention(getattr(b, "attn", nn.Identity())) for b in blocks):
        return None
    if getattr(module, "cls_token", None) is None or not hasattr(pe, "num_patches"):
        return None
    return blocks, int(pe.num_patches)


def default_drop_layer(depth: int) -> int:
    """After which block tokens are dropped by default: the second block (the first on a 1-2 block model)."""
    return 1 if depth > 2 else 0


@register_pass("token_drop", "keep the class token and the top-k patch tokens by class-token attention "
                             "(HiRED); lossy, needs keep_tokens", order=10, default=False, option="keep_tokens")
def token_drop_pass(module: nn.Module, ctx: OptimizeContext) -> tuple[int, dict[str, Any]]:
    keep = ctx.options.get("keep_tokens")
    if not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise UsageError(f"keep_tokens={keep!r} must be a number in (0, 1], e.g. 0.5 keeps half the patch tokens")
    vits = [m for m in module.modules() if _vit_parts(m) is not None]
    if not vits:
        raise UsageError("token dropping (keep_tokens) needs a ViT with a class token: a module with `blocks` "
                         "(each with norm1 and an attn owning qkv/proj/num_heads), `patch_embed.num_patches` "
                         "and `cls_token`; drop --keep-tokens for this model")
    info: dict[str, Any] = {"keep_ratio": float(keep), "lossy": True,
                            "method": "HiRED: class token + top-k patch tokens by class-token attention"}
    n = 0
    for vit in vits:
        blocks, patches = _vit_parts(vit)
        depth = len(blocks)
        layer = ctx.options.get("drop_layer")
        layer = default_drop_layer(depth) if layer is None else layer
        if not isinstance(layer, int) or not 0 <= layer < depth - 1:
            raise UsageError(f"drop_layer={layer!r} must be a block index in [0, {depth - 2}] (tokens are "
                             f"dropped after that block; the model has {depth} blocks)")
        k = max(1, int(round(keep * patches)))
        if k >= patches or isinstance(blocks[layer], TokenDropBlock):
            continue
        prefix = int(getattr(vit, "num_prefix_tokens", 1))   # timm: class token + register tokens
        blocks[layer] = TokenDropBlock.install(blocks[layer], k, prefix, patches + prefix)
        info.update(drop_layer=layer, depth=depth, tokens_before=patches + prefix, tokens_after=k + prefix,
                    split_block=blocks[layer].split,   # queries/MLP of the dropping block on kept tokens only
                    options={"keep_tokens": float(keep), "drop_layer": layer})   # to rebuild the reference
        n += 1
    return n, info
