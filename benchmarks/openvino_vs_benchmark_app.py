"""edge.benchmark on an OpenVINO artifact vs OpenVINO's own ``benchmark_app``, back to back.

Per round: ``edge.benchmark(artifact)`` (our session: synchronous ``infer`` from Python, f32 hint),
then ``benchmark_app -m model.xml -d CPU -hint latency`` as a user would type it (no precision flag:
the plugin's default, bf16 on CPUs with BF16), then the same with ``-infer_precision f32`` (the
like-for-like precision), then also with ``-api async``. The latency hint's default is the sync API,
which runs the graph on the calling thread; under load on this 2-core machine that was ~7x slower
for a 0.5 ms model than the async path edge's session uses (see runtimes/openvino.py). Medians of the per-round medians are compared; the goal is agreement within 10%.

    .venv/bin/python benchmarks/openvino_vs_benchmark_app.py                      # vit_tiny_digits + vit_tiny, fp32
    .venv/bin/python benchmarks/openvino_vs_benchmark_app.py --models vit_tiny --precision int8 --rounds 5
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import edge


def benchmark_app_path() -> str:
    exe = Path(sys.executable).with_name("benchmark_app")
    return str(exe) if exe.exists() else (shutil.which("benchmark_app") or "benchmark_app")


def run_benchmark_app(xml: Path, seconds: float, extra: list[str]) -> dict[str, float | str]:
    cmd = [benchmark_app_path(), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-t", str(int(seconds)), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    text = out.stdout + out.stderr
    res: dict[str, float | str] = {}
    for key, label in {"median_ms": "Median", "average_ms": "Average", "min_ms": "Min"}.items():
        m = re.search(rf"{label}:\s+([\d.]+) (ms|us)", text)   # sub-millisecond figures come in us
        if m:
            res[key] = float(m.group(1)) / (1e3 if m.group(2) == "us" else 1.0)
    for key in ("INFERENCE_PRECISION_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS"):
        m = re.search(rf"\s{key}:\s+(.+)", text)
        if m:
            res[key] = re.sub(r"<Type: '(\w+)'>", r"\1", m.group(1).strip())
    if "median_ms" not in res:
        raise RuntimeError(f"no median in benchmark_app output:\n{text[-2000:]}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit_tiny_digits", "vit_tiny"])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200, help="edge.benchmark timed iterations per round")
    ap.add_argument("--seconds", type=int, default=5, help="benchmark_app -t per round")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            art = edge.convert(name, target="openvino", precision=args.precision, out=Path(tmp) / name)
            xml = art.path / "model.xml"
            rows: dict[str, list[dict]] = {"edge.benchmark (f32 hint)": [], "benchmark_app (default hint)": [],
                                           "benchmark_app -infer_precision f32": [],
                                           "benchmark_app -infer_precision f32 -api async": []}
            for _ in range(args.rounds):
                r = edge.benchmark(art.path, warmup=20, iters=args.iters, native_profile=False, cache_dir=False)
                rows["edge.benchmark (f32 hint)"].append(
                    {"median_ms": r.p50_ms, "min_ms": r.min_ms, "average_ms": r.mean_ms,
                     "INFERENCE_PRECISION_HINT": r.load_details["inference_precision"],
                     "INFERENCE_NUM_THREADS": r.load_details["compiled_properties"].get("INFERENCE_NUM_THREADS")})
                rows["benchmark_app (default hint)"].append(run_benchmark_app(xml, args.seconds, []))
                rows["benchmark_app -infer_precision f32"].append(
                    run_benchmark_app(xml, args.seconds, ["-infer_precision", "f32"]))
                rows["benchmark_app -infer_precision f32 -api async"].append(
                    run_benchmark_app(xml, args.seconds, ["-infer_precision", "f32", "-api", "async"]))
            print(f"\n== {name} openvino/{args.precision}: {args.rounds} back-to-back rounds "
                  f"(edge {args.iters} iters, benchmark_app -t {args.seconds:g} s)")
            med = {k: statistics.median(r["median_ms"] for r in v) for k, v in rows.items()}
            for k, v in rows.items():
                per = ", ".join(f"{r['median_ms']:.3f}" for r in v)
                mins = min(r.get("min_ms", float("nan")) for r in v)
                print(f"  {k:<46} median {med[k]:8.3f} ms  min {mins:7.3f}  precision "
                      f"{v[0].get('INFERENCE_PRECISION_HINT')}  threads {v[0].get('INFERENCE_NUM_THREADS')}  "
                      f"(round medians {per})")
            ours = med["edge.benchmark (f32 hint)"]
            for k in list(rows)[1:]:
                diff = ours / med[k] - 1
                print(f"  edge.benchmark vs {k}: {diff * 100:+.1f}% ({'within' if abs(diff) <= 0.10 else 'OUTSIDE'} 10%)")


if __name__ == "__main__":
    main()
