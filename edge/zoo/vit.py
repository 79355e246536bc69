"""ViT / DeiT with timm's state-dict names, so a timm or DeiT checkpoint loads with ``--weights``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.zoo import register_model

IMAGENET = {"size": [224, 224], "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "scale": 1 / 255}


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.num_patches = (img_size // patch) ** 2
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """timm's Attention: ``fused_attn`` picks SDPA, else the hand-written q @ k^T -> softmax -> @ v."""

    def __init__(self, dim: int, num_heads: int, fused_attn: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, fused_attn: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A plain ViT (class token, learned position embedding, pre-norm blocks, class-token head)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
                 fused_attn: bool = True):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, fused_attn) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


def _vit(**kw) -> VisionTransformer:
    return VisionTransformer(**kw)


@register_model("vit_tiny", input_shape=(1, 3, 224, 224), num_classes=1000, preprocessing=IMAGENET,
                tags=("vit", "imagenet"))
def vit_tiny(**kw) -> nn.Module:
    """ViT-Ti/16 at 224 (5.7M params), timm's vit_tiny_patch16_224 layout."""
    return _vit(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **kw})


@register_model("deit_tiny", input_shape=(1, 3, 224, 224), num_classes=1000, preprocessing=IMAGENET,
                tags=("vit", "imagenet"), same_as="vit_tiny")
def deit_tiny(**kw) -> nn.Module:
    """DeiT-Ti/16 at 224 (5.7M params), timm's deit_tiny_patch16_224 layout."""
    return _vit(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **kw})


@register_model("deit_small", input_shape=(1, 3, 224, 224), num_classes=1000, preprocessing=IMAGENET,
                tags=("vit", "imagenet", "large"))
def deit_small(**kw) -> nn.Module:
    """DeiT-S/16 at 224 (22M params), timm's deit_small_patch16_224 layout."""
    return _vit(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kw})


@register_model("vit_base", input_shape=(1, 3, 224, 224), num_classes=1000, preprocessing=IMAGENET,
                tags=("vit", "imagenet", "large"))
def vit_base(**kw) -> nn.Module:
    """ViT-B/16 at 224 (86M params), timm's vit_base_patch16_224 layout."""
    return _vit(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kw})
