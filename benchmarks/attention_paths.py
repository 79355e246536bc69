"""Attention / LayerNorm forms per target, with and without edge's optimize passes, side by side.

ExecuTorch: XNNPACK delegate calls and ops left on portable kernels (from the artifact's manifest) and
latency, for vit_tiny_digits and a 4-block dim-192 ViT at 224 (STACK.md's "22 delegate calls" model).
ONNX Runtime / OpenVINO: latency of the hand-written attention (fused_attn=False) as it is vs rewritten
to SDPA by the ``attention`` pass. Artifacts are benchmarked in interleaved rounds; medians of p50s.

    .venv/bin/python benchmarks/attention_paths.py [--rounds 3] [--targets executorch onnx openvino]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import edge
from edge.zoo import create_model
from edge.zoo.vit import VisionTransformer


def models() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    digits, _ = create_model("vit_tiny_digits", fused_attn=False)
    torch.manual_seed(0)
    vit4 = VisionTransformer(depth=4, fused_attn=False).eval()
    return {"vit_tiny_digits": (digits, torch.randn(1, 1, 32, 32)), "vit4_224": (vit4, torch.randn(1, 3, 224, 224))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--targets", nargs="+", default=["executorch", "onnx", "openvino"])
    ap.add_argument("--models", nargs="+", default=["vit_tiny_digits", "vit4_224"])
    args = ap.parse_args()
    arts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, x) in models().items():
            if name not in args.models:
                continue
            for target in args.targets:
                for opt in (False, True):
                    arts[(name, target, opt)] = edge.convert(model, example_inputs=(x,), target=target,
                                                             out=Path(tmp) / f"{name}-{target}-{opt}", optimize=opt)
        p50s: dict = {k: [] for k in arts}
        for _ in range(args.rounds):
            for k, art in arts.items():
                p50s[k].append(edge.benchmark(art.path, warmup=5, iters=args.iters, native_profile=False).p50_ms)
    print(f"\n{'model':16} {'target':10} {'passes':7} {'p50 ms':>8} {'speedup':>8}  delegation / forms")
    for (name, target, opt), art in arts.items():
        t, base = statistics.median(p50s[(name, target, opt)]), statistics.median(p50s[(name, target, False)])
        d = art.manifest.details
        forms = ", ".join(f"{r['pass']}={r['variant']}x{r['rewrites']}" for r in d.get("optimize_passes", [])
                          if r["rewrites"])
        extra = forms or "hand-written attention, nn.LayerNorm"
        if "delegation" in d:
            dl = d["delegation"]
            extra = (f"{dl['delegate_calls']} delegate call(s), portable: "
                     f"{', '.join(f'{k} x{v}' for k, v in dl['portable_ops'].items()) or 'none'}; {extra}")
        print(f"{name:16} {target:10} {'on' if opt else 'off':7} {t:8.3f} {base / t:7.2f}x  {extra}")


if __name__ == "__main__":
    main()
