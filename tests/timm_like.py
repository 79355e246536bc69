"""timm-style modules written here by structure (timm cannot be imported: it needs torchvision, which has no CPU
wheel for this torch). Same parameters and forward as timm's ``Attention`` (fused / unfused) and Swin's
``WindowAttention`` (relative position bias gathered from a table by an index buffer, optional shift mask)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """timm.models.vision_transformer.Attention."""

    def __init__(self, dim: int, num_heads: int = 2, qkv_bias: bool = True, fused_attn: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = self.k_norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                attn = attn + attn_mask
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class WindowAttention(nn.Module):
    """timm.models.swin_transformer.WindowAttention: windows of ``window`` x ``window`` tokens."""

    def __init__(self, dim: int, num_heads: int = 2, window: int = 4, fused_attn: bool = True):
        super().__init__()
        self.num_heads, self.window, self.fused_attn = num_heads, window, fused_attn
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, num_heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window - 1
        rel[:, :, 1] += window - 1
        rel[:, :, 0] *= 2 * window - 1
        self.register_buffer("relative_position_index", rel.sum(-1), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def _get_rel_pos_bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn_mask = self._get_rel_pos_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn_mask = (attn_mask.unsqueeze(1) + mask.view(1, nw, 1, N, N)).expand(B_ // nw, -1, -1, -1, -1)
            attn_mask = attn_mask.reshape(-1, self.num_heads, N, N)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + attn_mask
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B_, N, -1))


class LayerNorm2d(nn.LayerNorm):
    """timm.layers.LayerNorm2d: LayerNorm over the channels of an NCHW map (permute, F.layer_norm, permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class WindowBlock(nn.Module):
    """Patch embedding, a LayerNorm2d, shifted-window attention (roll, windows, bias, mask), GroupNorm, a head."""

    def __init__(self, dim: int = 16, window: int = 4, size: int = 8, fused_attn: bool = True, classes: int = 5):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.norm = LayerNorm2d(dim)
        self.attn = WindowAttention(dim, 2, window, fused_attn)
        self.gn = nn.GroupNorm(1, dim)
        self.head = nn.Linear(dim, classes)
        self.window, self.shift = window, window // 2
        side = size // 2
        img = torch.zeros(1, side, side, 1)
        cnt = 0
        for h in (slice(0, -window), slice(-window, -self.shift), slice(-self.shift, None)):
            for w in (slice(0, -window), slice(-window, -self.shift), slice(-self.shift, None)):
                img[:, h, w, :] = cnt
                cnt += 1
        win = self._windows(img).squeeze(-1)
        mask = win.unsqueeze(1) - win.unsqueeze(2)
        self.register_buffer("attn_mask", mask.masked_fill(mask != 0, -100.0), persistent=False)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        w = self.window
        return x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x))
        B, C, H, W = x.shape
        t = torch.roll(x.permute(0, 2, 3, 1), shifts=(-self.shift, -self.shift), dims=(1, 2))
        t = self.attn(self._windows(t), mask=self.attn_mask)
        w = self.window
        t = t.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        t = torch.roll(t, shifts=(self.shift, self.shift), dims=(1, 2)).permute(0, 3, 1, 2)
        return self.head(self.gn(x + t).mean((2, 3)))


class TinyTimmViT(nn.Module):
    """Tokens through timm-style Attention blocks with a custom LayerNorm call; class token; head."""

    def __init__(self, dim: int = 16, depth: int = 2, fused_attn: bool = True, classes: int = 5):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(Attention(dim, 2, fused_attn=fused_attn) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        for norm, blk in zip(self.norms, self.blocks):
            t = t + blk(F.layer_norm(t, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
        return self.head(t[:, 0])
