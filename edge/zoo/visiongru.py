"""VisionGRU (arXiv 2412.18178): a hierarchical image backbone whose token mixer is a bidirectional minGRU.

Layout as in the paper's code (github.com/YangLiu9208/VisionGRU, ``vig/visionGRU.py``), with its
state-dict names so its checkpoints load: a conv stem to H/4 (Conv3x3 s2, LN, GELU, Conv3x3 s2, LN),
four stages C-2C-4C-8C joined by Conv3x3 s2 + LN, 2DGRU blocks

    y = DWConv3x3(LN(x));  x = x + minGRU_1(y) + flip(minGRU_2(flip(y)));  x = x + MLP(LN(x))

over tokens in row-major order (the backward pass reads them flipped in both H and W, i.e. the
sequence reversed), minGRU expansion 2 without biases, MLP ratio 4, mean-pool head. Any input
resolution works (the token grid follows the input).

:class:`MinGRU` is the reference: minGRU-pytorch's log-space parallel scan with ``torch.logcumsumexp``.
The ``mingru_scan`` optimize pass (edge/passes/recurrent.py) swaps in an exact chunked scan that
converts on every target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.zoo import register_model
from edge.zoo.digits import LABELS, PREPROCESSING, SIZE, test_set
from edge.zoo.vit import IMAGENET


def _log_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


class MinGRU(nn.Module):
    """minGRU (Feng et al. 2024) in minGRU-pytorch's layout: h_t = (1 - z_t) h_{t-1} + z_t g(h~_t).

    ``to_hidden_and_gate`` (no bias) gives h~ and the gate; ``to_out`` (no bias) projects the
    ``dim * expansion`` inner state back to ``dim``. The scan is the log-space one
    (Heinsen's: cumsum + logcumsumexp), exact in PyTorch but not convertible as such.
    """

    def __init__(self, dim: int, expansion_factor: float = 2.0):
        super().__init__()
        inner = int(dim * expansion_factor)
        self.to_hidden_and_gate = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False) if expansion_factor != 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.to_hidden_and_gate(x).chunk(2, dim=-1)
        log_coeffs = -F.softplus(gate)
        log_values = -F.softplus(-gate) + _log_g(hidden)
        a_star = log_coeffs.cumsum(dim=1)
        h = (a_star + torch.logcumsumexp(log_values - a_star, dim=1)).exp()
        return self.to_out(h)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's ``LayerNorm2d``: same parameters and names).

    Written as permute -> layer_norm -> permute; the ``layernorm2d`` pass swaps it for the form each
    target runs best (edge.passes.attention).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Tokenizer(nn.Module):
    """Conv stem to H/4: Conv3x3 s2 -> LN -> GELU -> Conv3x3 s2 -> LN."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, 2, 1)
        self.norm1 = LayerNorm2d(dim // 2, eps=1e-6)
        self.gelu = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, 2, 1)
        self.norm2 = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))          # NCHW


class Block2DGRU(nn.Module):
    """x + minGRU_fwd(y) + flip(minGRU_bwd(flip(y))), y = DWConv(LN(x)); then x + MLP(LN(x))."""

    def __init__(self, dim: int, expansion: float = 2.0, mlp_ratio: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dw_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.min_gru_1 = MinGRU(dim, expansion)
        self.min_gru_2 = MinGRU(dim, expansion)
        self.norm2 = nn.LayerNorm(dim)
        self.projection1 = nn.Linear(dim, dim * mlp_ratio)
        self.activation = nn.GELU()
        self.projection2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:   # x: [B, N, C], N = H * W
        B, N, C = x.shape
        # [B, N, C] <-> NCHW through NHWC views and 4-D permutes: OpenVINO runs the convolution on the
        # channels-last layout directly; a 3-D transpose [B, N, C] -> [B, C, N] became real Transposes in
        # front of the minGRU MatMuls (one VisionGRU-Ti stage-1 block at 512 px: 60.4 -> 53.8 ms)
        y = self.norm(x).reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)
        y = self.dw_conv(y).permute(0, 2, 3, 1).reshape(B, N, C)
        bwd = self.min_gru_2   # the mingru_scan pass makes it a reverse scan that reads y as it is
        x = x + self.min_gru_1(y) + (bwd(y) if getattr(bwd, "reverse", False) else bwd(y.flip(1)).flip(1))
        return x + self.projection2(self.activation(self.projection1(self.norm2(x))))


class GRUBlocks(nn.Module):
    """The four stages and the three Conv3x3 s2 + LN downsamplings between them; returns mean-pooled tokens."""

    def __init__(self, dim: int, depths: tuple[int, ...], expansion: float, mlp_ratio: int):
        super().__init__()
        dims = [dim * 2 ** i for i in range(len(depths))]
        self.layers = nn.ModuleList(nn.ModuleList(Block2DGRU(d, expansion, mlp_ratio) for _ in range(n))
                                    for n, d in zip(depths, dims))
        for i in range(1, len(depths)):
            setattr(self, f"conv{i}", nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1))
            setattr(self, f"norm{i}", LayerNorm2d(dims[i], eps=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: NCHW
        for i, blocks in enumerate(self.layers):
            if i:
                x = getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x))
            B, C, H, W = x.shape
            t = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
            for blk in blocks:
                t = blk(t, (H, W))
            x = t.reshape(B, H, W, C).permute(0, 3, 1, 2)
        return x.mean((2, 3), keepdim=True).flatten(1)   # keepdim: the mean XNNPACK delegates


class VisionGRU(nn.Module):
    def __init__(self, in_chans: int = 3, num_classes: int = 1000, dim: int = 72,
                 depths: tuple[int, ...] = (2, 2, 8, 2), expansion: float = 2.0, mlp_ratio: int = 4):
        super().__init__()
        self.tokenizer = Tokenizer(in_chans, dim)
        self.snake_gru = GRUBlocks(dim, tuple(depths), expansion, mlp_ratio)
        self.fc = nn.Linear(dim * 2 ** (len(depths) - 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.snake_gru(self.tokenizer(x)))


@register_model("visiongru_tiny", input_shape=(1, 3, 224, 224), num_classes=1000, preprocessing=IMAGENET,
                tags=("visiongru", "recurrent", "imagenet", "large"), test_shapes=[(1, 3, 64, 64)])
def visiongru_tiny(**kw) -> nn.Module:
    """VisionGRU-Ti (C=72, depths 2-2-8-2, 30M params), the paper's layout; any input resolution."""
    return VisionGRU(**{"dim": 72, "depths": (2, 2, 8, 2), **kw})


@register_model("visiongru_base", input_shape=(1, 3, 224, 224), num_classes=1000, preprocessing=IMAGENET,
                tags=("visiongru", "recurrent", "imagenet", "large"), test_shapes=[(1, 3, 64, 64)])
def visiongru_base(**kw) -> nn.Module:
    """VisionGRU-B (C=104, depths 2-2-15-2, 87M params), the paper's layout; any input resolution."""
    return VisionGRU(**{"dim": 104, "depths": (2, 2, 15, 2), **kw})


@register_model("visiongru_digits", input_shape=(1, 1, SIZE, SIZE), num_classes=10, preprocessing=PREPROCESSING,
                weights="visiongru_digits.safetensors", test_set=test_set, labels=LABELS,
                tags=("visiongru", "recurrent", "digits"))
def visiongru_digits(**kw) -> nn.Module:
    """A small VisionGRU (C=12, depths 1-1-2-1) trained on 32x32 digits (8x8 tokens in stage 1)."""
    return VisionGRU(**{"in_chans": 1, "num_classes": 10, "dim": 12, "depths": (1, 1, 2, 1), **kw})
