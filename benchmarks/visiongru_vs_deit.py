"""VisionGRU-Ti vs DeiT-S as resolution grows: latency and peak memory on one runtime, side by side.

Both models are converted by edge (VisionGRU gets the chunked minGRU scan from the ``mingru_scan``
pass; DeiT-S keeps its attention, built with ``img_size`` = the resolution so its position
embedding fits). Memory: each artifact alone, peak RSS during load + a few runs minus the RSS
before loading (the model's own cost). Latency: both artifacts loaded, timed in interleaved rounds
(``--rounds``; medians of the round medians), so this machine's drift hits both alike.
Attention grows with tokens squared, the scan linearly: the ratio should grow with resolution.

Run:  .venv/bin/python benchmarks/visiongru_vs_deit.py [--target openvino] [--sizes 224,512,1024] [--iters 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import edge
from edge.profile import rss_mb, time_interleaved
from edge.zoo import create_model


def convert(name: str, size: int, target: str, tmp: Path, args):
    """(artifact, conversion seconds, peak MiB of the artifact alone: load + a few runs)."""
    kw = {"img_size": size} if name.startswith("deit") else {}
    model, _ = create_model(name, pretrained=False, **kw)
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    art = edge.convert(model, example_inputs=(x,), target=target, out=tmp / f"{name}-{size}", verify=args.verify)
    conv_s = time.perf_counter() - t
    del model
    gc.collect()
    base = rss_mb()[0]
    rep = edge.benchmark(art.path, warmup=1, iters=2, native_profile=False)
    return art, conv_s, rep.peak_rss_mb - base


def run_size(size: int, args, tmp: Path) -> dict[str, tuple[float, float, float]]:
    """Per model: (p50 ms from interleaved rounds, MiB, conversion seconds)."""
    made = {name: convert(name, size, args.target, tmp, args) for name in ("visiongru_tiny", "deit_small")}
    sessions = {name: edge.load(art.path) for name, (art, _, _) in made.items()}
    inputs = {name: [torch.randn(1, 3, size, size).numpy()] for name in made}
    try:
        stats = time_interleaved(sessions, inputs, rounds=args.rounds, warmup=args.warmup, iters=args.iters)
    finally:
        for s in sessions.values():
            s.close()
    for art, _, _ in made.values():
        shutil.rmtree(art.path, ignore_errors=True)
    return {name: (statistics.median(stats[name]["round_medians"]), mb, conv_s)
            for name, (_, conv_s, mb) in made.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="openvino")
    ap.add_argument("--sizes", default="224,512,1024")
    ap.add_argument("--iters", type=int, default=5, help="timed runs per model per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--verify", action="store_true", help="also run the parity check (slow at 1024 px)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vgru_deit_"))
    print(f"target {args.target}, batch 1, warmup {args.warmup}, {args.rounds} rounds x {args.iters} iters, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'px':>5} | {'VisionGRU-Ti ms':>15} {'MiB':>7} | {'DeiT-S ms':>10} {'MiB':>7} | "
          f"{'speed ratio':>11} {'mem ratio':>9}")
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            r = run_size(size, args, tmp)
            (g_ms, g_mb, g_c), (d_ms, d_mb, d_c) = r["visiongru_tiny"], r["deit_small"]
            print(f"{size:5d} | {g_ms:15.1f} {g_mb:7.0f} | {d_ms:10.1f} {d_mb:7.0f} | {d_ms / g_ms:10.2f}x "
                  f"{d_mb / max(g_mb, 1e-9):8.2f}x   (convert s: {g_c:.0f} / {d_c:.0f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
