"""VisionGRU-Ti vs DeiT-S as resolution grows: latency and peak memory on one runtime, side by side.

Both models are converted by edge (VisionGRU gets the chunked minGRU scan from the ``mingru_scan``
pass; DeiT-S keeps its attention, built with ``img_size`` = the resolution so its position
embedding fits) and benchmarked with edge.benchmark in this process, one after the other.
Memory: peak RSS during load + timed runs minus the RSS before loading (the model's own cost).
Attention grows with tokens squared, the scan linearly: the ratio should grow with resolution.

Run:  .venv/bin/python benchmarks/visiongru_vs_deit.py [--target openvino] [--sizes 224,512,1024] [--iters 5]
"""
from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch

import edge
from edge.profile import rss_mb
from edge.zoo import create_model


def run(name: str, size: int, target: str, tmp: Path, args) -> tuple[float, float, float]:
    kw = {"img_size": size} if name.startswith("deit") else {}
    model, _ = create_model(name, pretrained=False, **kw)
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    art = edge.convert(model, example_inputs=(x,), target=target, out=tmp / f"{name}-{size}", verify=args.verify)
    conv_s = time.perf_counter() - t
    del model
    gc.collect()
    base = rss_mb()[0]
    rep = edge.benchmark(art.path, warmup=args.warmup, iters=args.iters, native_profile=False)
    shutil.rmtree(art.path, ignore_errors=True)
    return rep.p50_ms, rep.peak_rss_mb - base, conv_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="openvino")
    ap.add_argument("--sizes", default="224,512,1024")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--verify", action="store_true", help="also run the parity check (slow at 1024 px)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vgru_deit_"))
    print(f"target {args.target}, batch 1, warmup {args.warmup}, iters {args.iters}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'px':>5} | {'VisionGRU-Ti ms':>15} {'MiB':>7} | {'DeiT-S ms':>10} {'MiB':>7} | "
          f"{'speed ratio':>11} {'mem ratio':>9}")
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            g_ms, g_mb, g_c = run("visiongru_tiny", size, args.target, tmp, args)
            d_ms, d_mb, d_c = run("deit_small", size, args.target, tmp, args)
            print(f"{size:5d} | {g_ms:15.1f} {g_mb:7.0f} | {d_ms:10.1f} {d_mb:7.0f} | {d_ms / g_ms:10.2f}x "
                  f"{d_mb / max(g_mb, 1e-9):8.2f}x   (convert s: {g_c:.0f} / {d_c:.0f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
