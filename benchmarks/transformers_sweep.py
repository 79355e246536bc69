"""A sweep of transformers vision models outside the corpus: does edge convert each on every target?

The corpus (edge/zoo/hf.py, tests/test_hf_corpus.py) holds the families edge is tested on. This script tries the
others transformers ships, built from small configs with random weights (no hub download), as a held-out set
would: image classifiers, dense-prediction and detection heads. For each model and target it prints edge's status
(verified / spec-checked, or the error's first line) and on ExecuTorch the delegate calls and the ops left on
portable kernels. Families that needed a fix were moved into the corpus; this is how they were found.

Run:
  .venv/bin/python benchmarks/transformers_sweep.py                       # every model, every target
  .venv/bin/python benchmarks/transformers_sweep.py --models detr,dpt --targets executorch
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

S = 32   # input resolution of most models here
VIT = dict(image_size=S, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


class Main(nn.Module):
    """The model's main output tensor: logits, a depth map, a reconstruction, heatmaps or the last hidden state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        for key in ("logits", "predicted_depth", "reconstruction", "heatmaps"):
            if getattr(out, key, None) is not None:
                return getattr(out, key)
        return out.last_hidden_state


def _models() -> dict[str, Callable[[], tuple[Any, Any, tuple[int, int]]]]:
    """name -> () -> (model class, config, input size)."""
    import transformers as T

    def cls(c: str, **kw: Any) -> Callable:
        return lambda: (getattr(T, f"{c}ForImageClassification"), getattr(T, f"{c}Config")(num_labels=10, **kw),
                        (S, S))
    return {
        "bit": cls("Bit", embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_groups=8),
        "clip": lambda: (T.CLIPForImageClassification, T.CLIPConfig(vision_config=VIT, text_config=TEXT, num_labels=10),
                         (S, S)),
        "data2vec_vision": cls("Data2VecVision", use_relative_position_bias=True, **VIT),
        "dinov2_registers": cls("Dinov2WithRegisters", **{**VIT, "image_size": 64}),
        "donut_swin": cls("DonutSwin", image_size=S, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                          window_size=4),
        "focalnet": cls("FocalNet", image_size=S, patch_size=4, embed_dim=16, depths=[1, 1], focal_levels=[2, 2]),
        "hgnetv2": lambda: (T.HGNetV2ForImageClassification, T.HGNetV2Config(num_labels=10), (64, 64)),
        "hiera": lambda: (T.HieraForImageClassification, T.HieraConfig(
            image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], embed_dim=16,
            num_heads=[1, 2], depths=[1, 1], query_stride=[2, 2], masked_unit_size=[4, 4], mlp_ratio=2.0,
            num_query_pool=1, num_labels=10), (64, 64)),
        "ijepa": cls("IJepa", **VIT),
        "mobilenetv1": cls("MobileNetV1", image_size=S, depth_multiplier=0.25),
        "pplcnet": cls("PPLCNet"),
        "pvt": cls("Pvt", image_size=S, num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                   hidden_sizes=[16, 32], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2],
                   mlp_ratios=[2, 2]),
        "pvtv2": cls("PvtV2", image_size=S, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                     hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                     mlp_ratios=[2, 2]),
        "siglip": lambda: (T.SiglipForImageClassification, T.SiglipConfig(vision_config=VIT, text_config=TEXT,
                                                                          num_labels=10), (S, S)),
        "swiftformer": cls("SwiftFormer", image_size=S, depths=[1, 1, 1, 1], embed_dims=[16, 16, 32, 32]),
        "swinv2": cls("Swinv2", image_size=S, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                      window_size=4),
        "textnet": cls("TextNet"),
        "vit_msn": cls("ViTMSN", **VIT),
        "dpt": lambda: (T.DPTForDepthEstimation, T.DPTConfig(
            backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
            **{**VIT, "num_hidden_layers": 4}), (S, S)),
        "glpn": lambda: (T.GLPNForDepthEstimation, T.GLPNConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
            decoder_hidden_size=16), (S, S)),
        "segformer_segmentation": lambda: (T.SegformerForSemanticSegmentation, T.SegformerConfig(
            hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
            decoder_hidden_size=32, num_labels=5), (S, S)),
        "mobilevit_segmentation": lambda: (T.MobileViTForSemanticSegmentation, T.MobileViTConfig(
            image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            aspp_out_channels=16, num_labels=5), (64, 64)),
        "mobilenetv2_segmentation": lambda: (T.MobileNetV2ForSemanticSegmentation, T.MobileNetV2Config(
            image_size=64, depth_multiplier=0.25, num_labels=5), (64, 64)),
        "upernet": lambda: (T.UperNetForSemanticSegmentation, T.UperNetConfig(
            backbone_config=T.ConvNextConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                             out_features=["stage1", "stage2", "stage3", "stage4"]),
            hidden_size=16, auxiliary_in_channels=48, num_labels=5, use_auxiliary_head=False), (64, 64)),
        "swin2sr": lambda: (T.Swin2SRForImageSuperResolution, T.Swin2SRConfig(
            image_size=16, embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4, upscale=2), (16, 16)),
        "yolos": lambda: (T.YolosForObjectDetection, T.YolosConfig(
            image_size=[S, S], num_detection_tokens=5, num_labels=5, **{k: v for k, v in VIT.items()
                                                                         if k != "image_size"}), (S, S)),
        "vitpose": lambda: (T.VitPoseForPoseEstimation, T.VitPoseConfig(backbone_config=T.VitPoseBackboneConfig(
            image_size=[64, 48], patch_size=[8, 8], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, out_indices=[2]), num_labels=4), (64, 48)),
        "detr": lambda: (T.DetrForObjectDetection, T.DetrConfig(
            use_timm_backbone=False, use_pretrained_backbone=False,
            backbone_config=T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                           out_features=["stage4"]),
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, num_labels=5), (64, 64)),
    }


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    from edge.zoo.hf import non_degenerate
    model_cls, cfg, (h, w) = _models()[name]()
    torch.manual_seed(0)
    model = Main(model_cls(cfg)).eval()
    x = (torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1)),)
    non_degenerate(model, x)
    return model, x


def convert(model: nn.Module, x: tuple, target: str) -> str:
    import edge
    with tempfile.TemporaryDirectory() as d:
        try:
            art = edge.convert(model, target=target, example_inputs=x, out=Path(d) / "a")
        except Exception as e:   # the sweep reports every failure, whatever its kind
            return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        out = art.manifest.status
        if target == "executorch":
            d = art.manifest.details["delegation"]
            portable = ", ".join(f"{k} x{v}" for k, v in d["portable_ops"].items())
            out += f"; {d['delegate_calls']} call(s)" + (f"; portable: {portable}" if portable else "")
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all", help="comma list, or all")
    ap.add_argument("--targets", default="onnx,openvino,executorch,coreml")
    args = ap.parse_args()
    names = list(_models()) if args.models == "all" else args.models.split(",")
    warnings.filterwarnings("ignore")
    for name in names:
        t0 = time.perf_counter()
        try:
            model, x = build(name)
        except Exception as e:   # a config this transformers version rejects
            print(f"{name:26s} build failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
            continue
        for target in args.targets.split(","):
            print(f"{name:26s} {target:11s} {convert(model, x, target)}", flush=True)
        print(f"{name:26s} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
