"""A conformance corpus of Hugging Face transformers vision families (and EnCodec's encoder), built from configs.

Not registered in the zoo (transformers is a dev/bench dependency, not one of edge's): tests and benchmarks build
these with :func:`build`. Every model is a small random-init variant made non-degenerate (default init gives
MobileViT logits ~1e-40 and EfficientNet ~1e-30): norm affines are perturbed and BatchNorm statistics are set from a
few random batches, so outputs are of order 1. The wrapper returns the logits tensor (``last_hidden_state`` for
EnCodec's encoder output). No hub download: configs only.

timm cannot be imported here (it needs torchvision, which has no CPU wheel for this torch); timm-style modules
(``Attention`` fused/unfused, ``WindowAttention``) are written by structure in ``tests/timm_like.py``.

Example:
    >>> from edge.zoo.hf import build, FAMILIES
    >>> model, inputs = build("vit")
    >>> model(*inputs).shape
    torch.Size([1, 10])
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

IMG = 32          # the small variants' input resolution (large: 224)
CLASSES = 10


def _img(size: int, channels: int = 3) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(1)),)


def _vit_like(config_cls: Any, model_cls: Any, large: bool) -> tuple[Any, Any, tuple]:
    """ViT and DeiT share their configuration's fields: ViT-Ti when large, a 2-layer width-32 model otherwise."""
    s = 224 if large else IMG
    cfg = config_cls(image_size=s, patch_size=16 if large else 8, hidden_size=192 if large else 32,
                     num_hidden_layers=12 if large else 2, num_attention_heads=3 if large else 2,
                     intermediate_size=768 if large else 64, num_labels=CLASSES)
    return model_cls, cfg, _img(s)


def _vit(large: bool) -> tuple[Any, Any, tuple]:
    from transformers import ViTConfig, ViTForImageClassification
    return _vit_like(ViTConfig, ViTForImageClassification, large)


def _deit(large: bool):
    from transformers import DeiTConfig, DeiTForImageClassification
    return _vit_like(DeiTConfig, DeiTForImageClassification, large)


def _dinov2(large: bool):
    from transformers import Dinov2Config, Dinov2ForImageClassification
    s = 224 if large else IMG
    cfg = Dinov2Config(image_size=518 if large else 64, patch_size=14 if large else 8,
                       hidden_size=384 if large else 32, num_hidden_layers=12 if large else 2,
                       num_attention_heads=6 if large else 2, num_labels=CLASSES)
    return Dinov2ForImageClassification, cfg, _img(s)


def _beit(large: bool):
    from transformers import BeitConfig, BeitForImageClassification
    s = 224 if large else IMG
    cfg = BeitConfig(image_size=s, patch_size=16 if large else 8, hidden_size=192 if large else 32,
                     num_hidden_layers=12 if large else 2, num_attention_heads=3 if large else 2,
                     intermediate_size=768 if large else 64, use_relative_position_bias=True,
                     use_mean_pooling=True, num_labels=CLASSES)
    return BeitForImageClassification, cfg, _img(s)


def _swin(large: bool):
    from transformers import SwinConfig, SwinForImageClassification
    s = 224 if large else IMG
    cfg = SwinConfig(image_size=s, patch_size=4 if large else 2, embed_dim=96 if large else 16,
                     depths=[2, 2, 6, 2] if large else [2, 1], num_heads=[3, 6, 12, 24] if large else [2, 4],
                     window_size=7 if large else 4, num_labels=CLASSES)
    return SwinForImageClassification, cfg, _img(s)


def _convnext(large: bool, v2: bool = False):
    import transformers as T
    cfg_cls = T.ConvNextV2Config if v2 else T.ConvNextConfig
    model_cls = T.ConvNextV2ForImageClassification if v2 else T.ConvNextForImageClassification
    s = 224 if large else IMG
    cfg = cfg_cls(hidden_sizes=[96, 192, 384, 768] if large else [16, 32], depths=[3, 3, 9, 3] if large else [1, 1],
                  num_stages=4 if large else 2, num_labels=CLASSES)
    return model_cls, cfg, _img(s)


def _mobilevit(large: bool, v2: bool = False):
    import transformers as T
    s = 256 if large else 64
    if v2:
        cfg = T.MobileViTV2Config(image_size=s, width_multiplier=1.0 if large else 0.5, num_labels=CLASSES)
        return T.MobileViTV2ForImageClassification, cfg, _img(s)
    cfg = T.MobileViTConfig(image_size=s, hidden_sizes=[144, 192, 240] if large else [32, 40, 48],
                            neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640] if large else [8, 16, 24, 32, 40, 48, 96],
                            num_labels=CLASSES)
    return T.MobileViTForImageClassification, cfg, _img(s)


def _efficientnet(large: bool):
    from transformers import EfficientNetConfig, EfficientNetForImageClassification
    s = 224 if large else 64
    cfg = EfficientNetConfig(image_size=s, width_coefficient=1.0 if large else 0.25,
                             depth_coefficient=1.0 if large else 0.2, hidden_dim=1280 if large else 320,
                             num_labels=CLASSES)
    return EfficientNetForImageClassification, cfg, _img(s)


def _resnet(large: bool):
    from transformers import ResNetConfig, ResNetForImageClassification
    cfg = ResNetConfig(embedding_size=64 if large else 16, hidden_sizes=[256, 512, 1024, 2048] if large else [16, 32],
                       depths=[3, 4, 6, 3] if large else [1, 1], layer_type="bottleneck" if large else "basic",
                       num_labels=CLASSES)
    return ResNetForImageClassification, cfg, _img(224 if large else IMG)


def _regnet(large: bool):
    from transformers import RegNetConfig, RegNetForImageClassification
    cfg = RegNetConfig(embedding_size=32 if large else 16, hidden_sizes=[32, 64, 160, 384] if large else [16, 32],
                       depths=[1, 3, 7, 12] if large else [1, 1], groups_width=16 if large else 8, num_labels=CLASSES)
    return RegNetForImageClassification, cfg, _img(224 if large else IMG)


def _poolformer(large: bool):
    from transformers import PoolFormerConfig, PoolFormerForImageClassification
    cfg = PoolFormerConfig(hidden_sizes=[64, 128, 320, 512] if large else [16, 32, 48, 64],
                           depths=[2, 2, 6, 2] if large else [1, 1, 1, 1], num_labels=CLASSES)
    return PoolFormerForImageClassification, cfg, _img(224 if large else IMG)


def _levit(large: bool):
    from transformers import LevitConfig, LevitForImageClassification
    s = 224 if large else 64
    cfg = LevitConfig(image_size=s, hidden_sizes=[128, 256, 384] if large else [32, 48, 64],
                      num_attention_heads=[4, 6, 8] if large else [2, 3, 4], depths=[4, 4, 4] if large else [1, 1, 1],
                      key_dim=[16, 16, 16] if large else [8, 8, 8], num_labels=CLASSES)
    return LevitForImageClassification, cfg, _img(s)


def _cvt(large: bool):
    from transformers import CvtConfig, CvtForImageClassification
    # depth[i] > i: transformers 5.5 indexes stage i's drop-path rates by the stage number
    cfg = CvtConfig(embed_dim=[64, 192, 384] if large else [16, 32, 48], depth=[1, 2, 10] if large else [1, 2, 3],
                    num_heads=[1, 3, 6] if large else [1, 2, 2], drop_path_rate=[0.0, 0.0, 0.0], num_labels=CLASSES)
    return CvtForImageClassification, cfg, _img(224 if large else IMG)


def _mobilenetv2(large: bool):
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    s = 224 if large else 64
    cfg = MobileNetV2Config(image_size=s, depth_multiplier=1.0 if large else 0.25, num_labels=CLASSES)
    return MobileNetV2ForImageClassification, cfg, _img(s)


def _segformer(large: bool):
    from transformers import SegformerConfig, SegformerForImageClassification
    cfg = SegformerConfig(hidden_sizes=[32, 64, 160, 256] if large else [16, 24, 32, 48],
                          depths=[2, 2, 2, 2] if large else [1, 1, 1, 1],
                          num_attention_heads=[1, 2, 5, 8] if large else [1, 1, 2, 2], num_labels=CLASSES)
    return SegformerForImageClassification, cfg, _img(224 if large else IMG)


def _encodec(large: bool):
    from transformers import EncodecConfig, EncodecModel
    cfg = EncodecConfig(num_filters=32 if large else 8, hidden_size=128 if large else 16, upsampling_ratios=[8, 5, 4, 2]
                        if large else [4, 2], num_lstm_layers=2 if large else 1)
    length = 24000 if large else 800
    return EncodecModel, cfg, (torch.randn(1, 1, length, generator=torch.Generator().manual_seed(1)),)


def _dinov2_registers(large: bool):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification
    s = 224 if large else IMG   # both below the configured size: the position table is resized (antialiased)
    cfg = Dinov2WithRegistersConfig(image_size=518 if large else 64, patch_size=14 if large else 8,
                                    hidden_size=384 if large else 32, num_hidden_layers=12 if large else 2,
                                    num_attention_heads=6 if large else 2, intermediate_size=1536 if large else 64,
                                    num_labels=CLASSES)
    return Dinov2WithRegistersForImageClassification, cfg, _img(s)


def _focalnet(large: bool):
    from transformers import FocalNetConfig, FocalNetForImageClassification
    s = 224 if large else IMG
    cfg = FocalNetConfig(image_size=s, patch_size=4, embed_dim=96 if large else 16,
                         depths=[2, 2, 6, 2] if large else [1, 1], focal_levels=[2, 2, 2, 2] if large else [2, 2],
                         num_labels=CLASSES)
    return FocalNetForImageClassification, cfg, _img(s)


def _swiftformer(large: bool):
    from transformers import SwiftFormerConfig, SwiftFormerForImageClassification
    s = 224 if large else IMG
    cfg = SwiftFormerConfig(image_size=s, depths=[3, 3, 6, 4] if large else [1, 1, 1, 1],
                            embed_dims=[48, 56, 112, 220] if large else [16, 16, 32, 32], num_labels=CLASSES)
    return SwiftFormerForImageClassification, cfg, _img(s)


def _pplcnet(large: bool):
    from transformers import PPLCNetConfig, PPLCNetForImageClassification
    cfg = PPLCNetConfig(scale=1.0 if large else 0.25, num_labels=CLASSES)
    return PPLCNetForImageClassification, cfg, _img(224 if large else IMG)


def _hiera(large: bool):
    from transformers import HieraConfig, HieraForImageClassification
    if large:   # Hiera-Tiny
        cfg = HieraConfig(depths=[1, 2, 7, 2], num_labels=CLASSES)
        return HieraForImageClassification, cfg, _img(224)
    cfg = HieraConfig(image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], embed_dim=16,
                      num_heads=[1, 2], depths=[1, 1], query_stride=[2, 2], masked_unit_size=[4, 4], mlp_ratio=2.0,
                      num_query_pool=1, num_labels=CLASSES)
    return HieraForImageClassification, cfg, _img(64)


# name -> builder(large) -> (model class, config, example inputs)
FAMILIES: dict[str, Callable[[bool], tuple]] = {
    "vit": _vit, "deit": _deit, "swin": _swin, "convnext": _convnext,
    "convnextv2": lambda large: _convnext(large, v2=True), "mobilevit": _mobilevit,
    "mobilevitv2": lambda large: _mobilevit(large, v2=True), "dinov2": _dinov2, "beit": _beit,
    "efficientnet": _efficientnet, "resnet": _resnet, "regnet": _regnet, "poolformer": _poolformer,
    "levit": _levit, "cvt": _cvt, "mobilenetv2": _mobilenetv2, "segformer": _segformer, "encodec": _encodec,
    # added after the first 18, from a sweep of transformers' other image classifiers: each needed a fix
    "dinov2_registers": _dinov2_registers, "focalnet": _focalnet, "swiftformer": _swiftformer, "pplcnet": _pplcnet,
    "hiera": _hiera,
}


class Logits(nn.Module):
    """``model(x).logits`` (EnCodec: the encoder's output; PP-LCNet: its head's ``last_hidden_state``) as one tensor:
    what edge converts."""

    def __init__(self, model: nn.Module, encoder_only: bool = False):
        super().__init__()
        self.model, self.encoder_only = (model.encoder if encoder_only else model), encoder_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.encoder_only:
            return out
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state   # PP-LCNet


def non_degenerate(model: nn.Module, inputs: tuple, *, seed: int = 0, batches: int = 3) -> None:
    """Perturb norm affines (in place) and set BatchNorm statistics from a few random batches near ``inputs``."""
    gen = torch.Generator().manual_seed(seed)
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    with torch.no_grad():
        for m in model.modules():
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            is_norm = isinstance(m, norms) or "norm" in type(m).__name__.lower()
            if is_norm and isinstance(w, torch.Tensor) and w.dim() == 1:
                w.copy_(1 + 0.2 * torch.randn(w.shape, generator=gen))
                if isinstance(b, torch.Tensor) and b.shape == w.shape:
                    b.copy_(0.1 * torch.randn(b.shape, generator=gen))
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None   # cumulative average over the batches
            model.train()
            for _ in range(batches):
                model(*(torch.randn((4, *t.shape[1:]), generator=gen) for t in inputs))
            model.eval()


def build(name: str, *, large: bool = False, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(eval module returning one tensor, example inputs) of family ``name`` (:data:`FAMILIES`)."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; available: {', '.join(FAMILIES)}")
    model_cls, cfg, inputs = FAMILIES[name](large)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Logits(model_cls(cfg), encoder_only=name == "encodec").eval()
        non_degenerate(model, inputs, seed=seed)
    finally:
        torch.random.set_rng_state(state)
    return model, inputs
