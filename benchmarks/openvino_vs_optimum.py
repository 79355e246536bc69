"""edge's OpenVINO fp32 / int8 vs Hugging Face Optimum-Intel's on the ViT-Ti shape, side by side in one run.

Issue 6 sets its int8 goal (>= 4x over eager) from Optimum-Intel 2.1 on another machine (fp32 1.9x, static
int8 3.3x under the f32 hint, 4.0x under bf16). This script measures Optimum on the machine at hand, so the
comparison does not depend on which CPU the figures came from:

- Optimum: a ``transformers`` ViT with ViT-Ti's shape (192 wide, 12 layers, 3 heads, 224 px, random weights),
  exported with ``OVModelForImageClassification.from_pretrained(export=True)`` and quantized with
  ``OVQuantizer`` + ``OVQuantizationConfig`` (its static int8 defaults) on the calibration edge uses by
  default (64 random-normal images). Its IRs come with a dynamic batch; they are reshaped to [1, 3, 224, 224]
  (the faster case for Optimum) and compiled with the config edge's runtime uses.
- edge: ``vit_tiny`` converted as ``edge convert`` does (fp32 and int8), run through ``edge.load``.
- eager: edge's ``vit_tiny`` in PyTorch (the 1x of every ratio), and the transformers ViT for reference.

All rows are timed in interleaved rounds with the same timer, under each INFERENCE_PRECISION_HINT asked for.
Each int8 row also gives the output cosine to its own fp32 eager model on the timing input.

Optimum-Intel is not an edge dependency. Install it beside the project with the first pip command in
``benchmarks/optimum_peers.py`` (into .bench-deps/optimum; it reuses .venv's torch, openvino and nncf; nothing in
.venv changes; the export runs in a subprocess with that folder first on its path) and run:

    .venv/bin/python benchmarks/openvino_vs_optimum.py
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import edge
from edge.profile import EagerSession, time_interleaved
from optimum_peers import DEPS as PEER_DEPS
from optimum_peers import IrSession, cosine, run_peer

DEPS = PEER_DEPS["openvino"]


def optimum_irs(out: Path, deps: Path) -> tuple[torch.nn.Module, Path, Path]:
    """(the transformers ViT, Optimum's fp32 IR, Optimum's static int8 IR), exported in Optimum's environment."""
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                    image_size=224, patch_size=16, num_labels=1000, layer_norm_eps=1e-6)
    hf = ViTForImageClassification(cfg).eval()
    hf.save_pretrained(out / "hf")
    got = run_peer("openvino", out / "hf", out, deps=deps)
    if "error" in got:
        print(f"error: {got['error']}", file=sys.stderr)
        raise SystemExit(2)
    return hf, Path(got["openvino_fp32"]), Path(got["openvino_int8"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hints", default="f32,bf16", help="INFERENCE_PRECISION_HINTs to time every IR under")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--deps", default=str(DEPS), help="folder holding optimum-intel and transformers (see above)")
    args = ap.parse_args()
    from edge.zoo import create_model
    hints = [h.strip() for h in args.hints.split(",") if h.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        hf, opt_fp32, opt_int8 = optimum_irs(out, Path(args.deps))
        model, _ = create_model("vit_tiny")
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32))
        arts = {a.manifest.precision: a for a in edge.convert_all(model, example_inputs=(x,), targets=["openvino"],
                                                                  precisions=["fp32", "int8"], out=out / "edge")}
        calib = arts["int8"].manifest.details.get("calibration") or {}
        print(f"edge int8 calibration: {calib.get('kind')}, {calib.get('samples')} samples")
        sessions = {"eager fp32 (edge vit_tiny)": EagerSession(model),
                    "eager fp32 (transformers ViT)": EagerSession(hf)}
        for hint in hints:   # edge's artifacts are checked under each hint before they are timed
            for p in ("fp32", "int8") if hint != "f32" else ():
                edge.verify(arts[p].path, model, runtime_options={"precision_hint": hint})
            sessions[f"optimum fp32 ({hint})"] = IrSession(opt_fp32, hint)
            sessions[f"optimum int8 ({hint})"] = IrSession(opt_int8, hint)
            for p in ("fp32", "int8"):
                sessions[f"edge {p} ({hint})"] = edge.load(arts[p].path, precision_hint=hint, cache_dir=False)
        inputs = {k: [x] if k.startswith("eager") else [x.numpy()] for k in sessions}
        with torch.inference_mode():
            ref = {"optimum": hf(x).logits.numpy(), "edge": model(x).numpy()}
        stats = time_interleaved(sessions, inputs, rounds=args.rounds, warmup=args.warmup, iters=args.iters)
        eager = stats["eager fp32 (edge vit_tiny)"]["p50_ms"]
        print(f"\nViT-Ti shape [1, 3, 224, 224], torch threads {torch.get_num_threads()}, medians over {args.rounds} "
              f"interleaved rounds x {args.iters}; x = eager (edge vit_tiny) / path")
        for k, v in stats.items():
            tool = k.split()[0]
            cos = (f"  cosine to its eager {cosine(sessions[k].run(*inputs[k])[0], ref[tool]):.4f}"
                   if "int8" in k else "")
            print(f"  {k:<30} p50 {v['p50_ms']:7.3f} ms  x{eager / v['p50_ms']:5.2f}   rounds "
                  f"{min(v['round_medians']):.2f}-{max(v['round_medians']):.2f}{cos}")
        for hint in hints:
            e8, o8 = stats[f"edge int8 ({hint})"]["p50_ms"], stats[f"optimum int8 ({hint})"]["p50_ms"]
            e32, o32 = stats[f"edge fp32 ({hint})"]["p50_ms"], stats[f"optimum fp32 ({hint})"]["p50_ms"]
            print(f"  {hint} hint: edge int8 x{o8 / e8:.2f} faster than Optimum int8; edge fp32 x{o32 / e32:.2f} vs "
                  f"Optimum fp32")
        for s in sessions.values():
            if hasattr(s, "close"):
                s.close()


if __name__ == "__main__":
    main()
