"""The runtime wrapper's overhead over a raw onnxruntime.InferenceSession.run, and ONNX Runtime vs PyTorch eager.

Measured side by side in one run, interleaved in rounds so machine noise hits all three alike.
Goal: wrapper overhead at most 2% or 20 us on the median; ORT faster than eager (the raw toolchain gave ~2x on a small ViT).

    .venv/bin/python benchmarks/runtime_overhead.py [--model vit_tiny_digits] [--iters 300]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

import edge


def timed(fn, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_tiny_digits")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        art = edge.convert(args.model, target="onnx", out=f"{tmp}/m")
        session = edge.load(art.path)
        module, _ = edge.create_model(args.model)
        x = edge.api.default_inputs(art)[0]
        xt = torch.from_numpy(x)
        raw = session.sess
        feed = {raw.get_inputs()[0].name: x}
        outs = [o.name for o in raw.get_outputs()]
        paths = {"raw InferenceSession.run": lambda: raw.run(outs, feed),
                 "edge session.run": lambda: session.run(x),
                 "PyTorch eager": lambda: module(xt)}
        samples: dict[str, list[float]] = {k: [] for k in paths}
        with torch.inference_mode():
            for fn in paths.values():   # burn-in
                timed(fn, 20)
            # raw and wrapped alternate call by call, so load from other processes hits both alike
            for _ in range(args.iters):
                for name in ("raw InferenceSession.run", "edge session.run"):
                    samples[name] += timed(paths[name], 1)
            for _ in range(args.rounds):
                samples["PyTorch eager"] += timed(paths["PyTorch eager"], max(args.iters // (4 * args.rounds), 5))
    med = {k: float(np.median(v)) for k, v in samples.items()}
    print(f"model {args.model}, input {list(x.shape)}, {args.iters} iterations each, medians:")
    for k, v in med.items():
        print(f"  {k:<26} {v * 1e3:9.1f} us")
    raw_ms, wrap_ms, eager_ms = med["raw InferenceSession.run"], med["edge session.run"], med["PyTorch eager"]
    over_us = (wrap_ms - raw_ms) * 1e3
    print(f"wrapper overhead: {over_us:+.1f} us ({(wrap_ms / raw_ms - 1) * 100:+.2f}%)  "
          f"goal <= 20 us or 2%: {'met' if over_us <= 20 or wrap_ms / raw_ms <= 1.02 else 'NOT met'}")
    print(f"ONNX Runtime (edge) vs PyTorch eager: {eager_ms / wrap_ms:.2f}x faster")


if __name__ == "__main__":
    main()
