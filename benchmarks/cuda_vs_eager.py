"""The cuda target (AOTInductor) against PyTorch eager, side by side in one run.

Builds the artifact with ``edge.convert`` (so it is verified against eager first), then times, on the
same inputs and device: eager fp32 (the baseline), eager in the artifact's precision (to separate
what the precision gives from what compilation gives), and the artifact through ``edge.benchmark``.
On CUDA every timing is a CUDA-event measurement with synchronization around it; on the CPU perf_counter.

    python benchmarks/cuda_vs_eager.py --model vit_base --batch 32 --precision fp16 --device cuda
    OMP_NUM_THREADS=1 python benchmarks/cuda_vs_eager.py --model vit_tiny_digits --batch 1 --precision fp32 --device cpu

On a shared CPU, pin the thread count (OMP_NUM_THREADS): eager's many small parallel regions suffer
far more from oversubscription than the compiled package. On the H200 machine (torch 2.11+cu130) start
Python with LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libstdc++.so.6 (see runtimes/aoti.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import edge
from edge.zoo import create_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def time_eager(model: torch.nn.Module, x: torch.Tensor, *, warmup: int, iters: int, device: str) -> list[float]:
    """Per-call ms of ``model(x)``: burn-in, then a timed loop (CUDA events, synchronized)."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        samples = []
        for _ in range(iters):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                model(x)
                samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", nargs="+", default=["fp16"], choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", default=None, help="artifact folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--no-verify", action="store_true", help="skip the parity check of the artifacts")
    ap.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    args = ap.parse_args()
    import edge.progress
    edge.progress.ENABLED = not args.quiet

    model, entry = create_model(args.model)
    shape = (args.batch, *entry.input_shapes[0][1:])
    torch.manual_seed(0)
    x = torch.randn(shape)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"{args.model} batch {args.batch} on {name}; torch {torch.__version__}; "
          f"{args.warmup} warmup + {args.iters} timed calls each; timer "
          f"{'cuda-event' if args.device == 'cuda' else 'perf_counter'}")

    out_root = Path(args.out or tempfile.mkdtemp(prefix="edge-cuda-"))
    results = {"model": args.model, "batch": args.batch, "device": name, "torch": torch.__version__, "artifacts": {}}
    arts = {}
    for prec in args.precision:   # build (and verify) everything first, so the timings below run back to back
        t0 = time.perf_counter()
        arts[prec] = edge.convert(args.model, target="cuda", precision=prec, out=out_root / f"{args.model}-{prec}",
                                  input_shapes=[shape], options={"device": args.device}, verify=not args.no_verify)
        parity = arts[prec].manifest.parity.get("outputs", {}).get("output", {})
        results["artifacts"][prec] = {"build_and_verify_s": time.perf_counter() - t0,
                                      "status": arts[prec].manifest.status, "cosine": parity.get("cosine"),
                                      "max_abs": parity.get("max_abs")}
        print(f"  built+verified {prec} in {time.perf_counter() - t0:.1f}s: status {arts[prec].manifest.status}, "
              f"cosine {parity.get('cosine', float('nan')):.6f}, max_abs {parity.get('max_abs', float('nan')):.3g}")

    xd = x.to(dev)
    rows = []
    base = statistics.median(time_eager(model.to(dev), xd, warmup=args.warmup, iters=args.iters, device=args.device))
    rows.append(("eager fp32", base))
    results["eager_fp32_ms"] = base
    for prec in args.precision:
        if prec != "fp32":
            low = create_model(args.model)[0].to(dev, DTYPES[prec])
            ms = statistics.median(time_eager(low, xd.to(DTYPES[prec]), warmup=args.warmup, iters=args.iters,
                                              device=args.device))
            rows.append((f"eager {prec}", ms))
            del low
        rep = edge.benchmark(arts[prec].path, warmup=args.warmup, iters=args.iters, inputs=[x.numpy()],
                             native_profile=False)
        rows.append((f"aoti {prec} (edge artifact)", rep.p50_ms))
        results["artifacts"][prec].update({"p50_ms": rep.p50_ms, "mean_ms": rep.mean_ms, "timer": rep.timer,
                                           "load_details": rep.load_details,
                                           "speedup_vs_eager_fp32": base / rep.p50_ms})
        print(f"  {prec}: {rep.load_details}")
    print(f"\n{'path':<30} {'median ms':>10} {'vs eager fp32':>14}")
    for label, ms in rows:
        print(f"{label:<30} {ms:10.3f} {base / ms:13.2f}x")
    results["rows"] = [{"path": label, "median_ms": ms, "speedup_vs_eager_fp32": base / ms} for label, ms in rows]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
