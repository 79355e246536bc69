"""Soak: 100,000 inferences through ``edge.load(...).run`` on each CPU runtime; prints RSS growth and errors.

Each runtime runs in its own process (so one runtime's memory does not hide another's), on an artifact of the
bundled ``vit_tiny_digits`` model (ONNX Runtime, OpenVINO, ExecuTorch) converted and verified first. The RSS
baseline is taken after 1,000 warm-up runs (allocators and caches settle); the goal is growth under 5% over the
remaining runs. Inputs alternate between numpy arrays and torch tensors, and every 1,000th output is checked
against the first output for the same input (a drifting result would be a bug too).

Run:
    .venv/bin/python benchmarks/soak.py                 # 100,000 runs per runtime
    .venv/bin/python benchmarks/soak.py --runs 5000     # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIMES = {"onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch"}
SAMPLES = 10


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(path: str, runs: int, warmup: int) -> dict:
    """Run ``runs`` inferences in this process; RSS sampled SAMPLES times after the warm-up."""
    import numpy as np
    import torch

    import edge
    session = edge.load(path)
    rng = np.random.default_rng(0)
    shape = session.inputs[0].concrete_shape(1)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    tensors = [torch.from_numpy(x.copy()) for x in inputs]
    first = [session.run(x)[0].copy() for x in inputs]
    errors: list[str] = []
    for i in range(warmup):
        session.run(inputs[i % 4])
    base = rss_mb()
    samples = []
    t0 = time.perf_counter()
    every = max(1, runs // SAMPLES)
    for i in range(runs):
        x = tensors[i % 4] if i % 2 else inputs[i % 4]
        try:
            out = session.run(x)[0]
        except Exception as e:  # recorded, and the soak goes on: the count is the result
            errors.append(f"run {i}: {type(e).__name__}: {e}")
            continue
        if i % 1000 == 0 and not np.array_equal(out, first[i % 4]):
            errors.append(f"run {i}: output differs from the first run on the same input "
                          f"(max |diff| {float(np.abs(out - first[i % 4]).max()):.3g})")
        if (i + 1) % every == 0:
            samples.append(round(rss_mb(), 1))
    seconds = time.perf_counter() - t0
    session.close()
    return {"runs": runs, "seconds": seconds, "rss_base_mb": base, "rss_samples_mb": samples,
            "rss_final_mb": samples[-1] if samples else base,
            "growth_pct": 100 * ((samples[-1] if samples else base) - base) / base, "errors": errors[:10],
            "error_count": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--child", nargs=2, metavar=("ARTIFACT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        Path(args.child[1]).write_text(json.dumps(soak(args.child[0], args.runs, args.warmup)))
        return
    import edge
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"soak: {args.runs:,} runs per runtime after {args.warmup:,} warm-up runs, vit_tiny_digits, CPU {cpu}")
    print(f"{'runtime':<12} {'runs':>8} {'s':>7} {'us/run':>7} {'RSS base':>9} {'RSS end':>8} {'growth':>7} "
          f"{'errors':>6}  RSS samples (MiB)")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes.split(","):
            target = RUNTIMES[runtime]
            art = edge.convert("vit_tiny_digits", target=target, out=Path(tmp) / target)
            out = Path(tmp) / f"{runtime}.json"
            r = subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--warmup", str(args.warmup),
                                "--child", str(art.path), str(out)], capture_output=True, text=True)
            if r.returncode != 0:
                failed = True
                print(f"{runtime:<12} crashed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
                continue
            d = json.loads(out.read_text())
            failed |= d["growth_pct"] >= 5 or d["error_count"] > 0
            print(f"{runtime:<12} {d['runs']:>8,} {d['seconds']:>7.1f} {1e6 * d['seconds'] / d['runs']:>7.1f} "
                  f"{d['rss_base_mb']:>8.1f}M {d['rss_final_mb']:>7.1f}M {d['growth_pct']:>6.2f}% "
                  f"{d['error_count']:>6}  {d['rss_samples_mb']}")
            for e in d["errors"]:
                print(f"    {e}")
    print("goal: RSS growth < 5% and no error on every runtime:", "MISSED" if failed else "met")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
