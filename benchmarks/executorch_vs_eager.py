"""ExecuTorch (XNNPACK) against PyTorch eager, measured side by side in one run.

Converts a zoo model for the executorch target (optimize passes on, and with ``--raw`` also off, to show
what the passes buy in delegation), then times eager and every artifact in interleaved rounds (burn-in,
then a timed loop per round, so drift from other load on the machine hits every path alike) and prints
medians, ratios over eager, delegate calls, ops left on portable kernels and lowering times.

    python benchmarks/executorch_vs_eager.py --model vit_tiny --precisions fp32,int8
    python benchmarks/executorch_vs_eager.py --model vit_tiny_digits --precisions fp32,fp16,int8 --raw
    python benchmarks/executorch_vs_eager.py --model vit_tiny --precisions fp32,int8 --profile

``--profile`` adds, per artifact, where its time goes by the ETDump (ms per run per XNNPACK operator kind) and
the bound that sets: eager over the matrix-multiply kernels alone (GEMM, batched GEMM, convolution IGEMM) is
the most any ExecuTorch program with those kernels could gain over eager if everything else took no time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import edge
from edge.api import prepare
from edge.profile import EagerSession, format_kinds, op_kinds, summarize, time_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_tiny")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--raw", action="store_true", help="also convert with optimize=False (raw toolchain)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=40, help="timed iterations per path per round")
    ap.add_argument("--out", default=None, help="artifact folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the figures here as JSON")
    ap.add_argument("--profile", action="store_true", help="ETDump time per operator kind and the GEMM-only bound")
    ap.add_argument("--reuse", action="store_true", help="open artifacts already under --out instead of converting")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both eager (torch.set_num_threads) and XNNPACK's threadpool; on a loaded "
                         "machine 1 avoids OpenMP oversubscription stalls that make eager look far slower")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    out = Path(args.out or tempfile.mkdtemp(prefix="et-bench-"))
    precisions = args.precisions.split(",")
    prepared = prepare(args.model)
    x = [t.contiguous() for t in prepared.spec.example_inputs]
    arts = {}
    for optimize in ([True, False] if args.raw else [True]):
        prep = prepared if optimize else prepare(args.model, optimize=False)
        tag = "passes" if optimize else "raw"
        t0 = time.perf_counter()
        if args.reuse and all((out / tag / f"executorch-{p}" / "manifest.json").is_file() for p in precisions):
            from edge.artifact import Artifact
            for p in precisions:
                arts[f"executorch {p} ({tag})"] = Artifact.open(out / tag / f"executorch-{p}")
            continue
        for a in edge.convert_all(args.model, targets=["executorch"], precisions=precisions,
                                  out=out / tag, prepared=prep):
            arts[f"executorch {a.manifest.precision} ({tag})"] = a
        print(f"converted {tag}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    sessions = {"eager": EagerSession(prepared.spec.module.eval())}
    for name, a in arts.items():
        sessions[name] = edge.load(a.path, **({"threads": args.threads} if args.threads else {}))
    inputs = {n: (x if n == "eager" else [t.numpy() for t in x]) for n in sessions}
    samples: dict[str, list[float]] = {n: [] for n in sessions}
    for r in range(args.rounds):
        for n, s in sessions.items():
            _, ms = time_session(s, inputs[n], warmup=args.warmup if r == 0 else 3, iters=args.iters)
            samples[n] += ms
    eager = summarize(samples["eager"])["p50_ms"]

    print(f"\n{args.model}: batch 1, {args.rounds} interleaved rounds x {args.iters} iters, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':34} {'p50 ms':>8} {'mean ms':>8} {'x eager':>8} {'calls':>6} {'lower s':>8} {'cpu s':>6} "
          f"{'acc':>6}  portable ops")
    rows = []
    for n in sessions:
        st = summarize(samples[n])
        row = {"path": n, "p50_ms": st["p50_ms"], "mean_ms": st["mean_ms"], "speedup": eager / st["p50_ms"]}
        if n != "eager":
            m = arts[n].manifest
            d, o = m.details, next(iter(m.parity.get("outputs", {}).values()), {})
            row.update(delegate_calls=d["delegation"]["delegate_calls"], portable_ops=d["delegation"]["portable_ops"],
                       lowering_s=d["lowering_seconds"], lowering_cpu_s=d["lowering_cpu_seconds"],
                       accuracy=o.get("accuracy"), reference_accuracy=o.get("reference_accuracy"),
                       cosine=o.get("cosine"))
        rows.append(row)
        acc = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "-"
        ops = ", ".join(f"{k.replace('aten_', '').replace('_default', '')} x{v}"
                        for k, v in row.get("portable_ops", {}).items()) or ("-" if n == "eager" else "none")
        print(f"{n:34} {row['p50_ms']:8.3f} {row['mean_ms']:8.3f} {row['speedup']:7.2f}x "
              f"{row.get('delegate_calls', '-')!s:>6} {row.get('lowering_s', '-')!s:>8} "
              f"{row.get('lowering_cpu_s', '-')!s:>6} {acc:>6}  {ops}")
    ref = next((r.get("reference_accuracy") for r in rows if r.get("reference_accuracy") is not None), None)
    if ref is not None:
        print(f"PyTorch eager accuracy on the unseen test half: {ref:.4f}")
    if args.profile:
        for row in rows[1:]:
            row["kinds"] = profile_kinds(sessions[row["path"]], inputs[row["path"]], row["p50_ms"], eager)
    for s in sessions.values():
        if hasattr(s, "close"):
            s.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2, default=float))


def profile_kinds(session, inputs, p50_ms: float, eager_ms: float, iters: int = 20) -> list[dict]:
    """Print the ETDump time per XNNPACK operator kind and the GEMM-only bound; returns the kinds."""
    kinds = op_kinds(session.native_profile(session.prepare(*inputs), iters=iters, top=None), iters)
    total = sum(k["ms"] for k in kinds)
    gemm = sum(k["ms"] for k in kinds if "GEMM" in k["kind"])
    print(f"\n{session.artifact.manifest.precision}: ETDump ops {total:.3f} ms per run (wall p50 {p50_ms:.3f} ms); "
          f"matrix kernels alone {gemm:.3f} ms: eager / that = {eager_ms / gemm:.2f}x at most")
    print("\n".join(format_kinds(kinds)))
    return kinds


if __name__ == "__main__":
    main()
