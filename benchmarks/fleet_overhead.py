"""The bench matrix locally and on a one-node Ray cluster, side by side: does Ray change the numbers?

The same matrix (artifacts converted once beforehand, so both paths only measure) runs in alternating
rounds, locally (``run_matrix``) and on a loopback Ray cluster whose head offers the device ``local-cpu``
(``run_matrix(..., ray=...)``). Per cell it prints the median over rounds of each path's p50 and their ratio
(goal: within 5%, i.e. Ray adds no timing noise: both measure in the same clean child process), and the
wall-clock of a whole run on each path (Ray's overhead: actor start, object transfer, scheduling).

    .venv/bin/python benchmarks/fleet_overhead.py [--models vit_tiny_digits,gru_digits] [--targets onnx,openvino]
    .venv/bin/python benchmarks/fleet_overhead.py --smoke      # tiny model, 2 rounds: proves the script works
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SMOKE_MODEL = """import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make():
    return Net()
"""


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_tiny_digits,gru_digits")
    ap.add_argument("--targets", default="onnx,openvino")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="a tiny factory model on onnx, 2 rounds of 30 iterations")
    args = ap.parse_args()
    from edge.fleet import loopback_cluster
    from edge.matrix import run_matrix
    with tempfile.TemporaryDirectory() as tmp:
        kw = {"models": args.models.split(","), "targets": args.targets.split(","), "input_shapes": None}
        if args.smoke:
            (Path(tmp) / "smoke.py").write_text(SMOKE_MODEL)
            kw = {"models": [f"{tmp}/smoke.py:make"], "targets": ["onnx"], "input_shapes": [(1, 3, 32, 32)]}
            args.rounds, args.iters = 2, 30
        common = dict(targets=kw["targets"], input_shapes=kw["input_shapes"], cache_dir=f"{tmp}/cache", warmup=10,
                      iters=args.iters, op_profile=False)
        run_matrix(kw["models"], **{**common, "iters": 1})   # convert once: the rounds below only measure
        t0 = time.perf_counter()
        with loopback_cluster({}, head_device="local-cpu", head_cpus=1) as cluster:
            start_s = time.perf_counter() - t0
            p50: dict[str, dict[str, list[float]]] = {}
            wall: dict[str, list[float]] = {"local": [], "ray": []}
            for r in range(args.rounds):
                order = ["local", "ray"] if r % 2 == 0 else ["ray", "local"]   # alternate who goes first
                for path in order:
                    t = time.perf_counter()
                    res = run_matrix(kw["models"], **common, ray=cluster.address if path == "ray" else None)
                    wall[path].append(time.perf_counter() - t)
                    for c in res["cells"]:
                        key = c["id"].rsplit("@local-cpu", 1)[0]
                        if c["status"] == "ok":
                            p50.setdefault(key, {"local": [], "ray": []})[path].append(c["p50_ms"])
                        else:
                            print(f"  {path} {c['id']}: {c['status']}: {c['error']}")
    print(f"CPU: {cpu_model()}; {args.rounds} rounds x {args.iters} iterations per cell, local and Ray alternating")
    print("timings measured under load (other jobs share this machine): compare the ratios, not the values")
    print(f"{'cell':<48} {'local p50':>10} {'ray p50':>10} {'ray/local':>10}  within 5%")
    worst = 0.0
    for key, v in p50.items():
        if not v["local"] or not v["ray"]:
            continue
        lo, ra = statistics.median(v["local"]), statistics.median(v["ray"])
        worst = max(worst, abs(ra / lo - 1))
        print(f"{key[-48:]:<48} {lo:>8.3f}ms {ra:>8.3f}ms {ra / lo:>10.3f}  {'yes' if abs(ra / lo - 1) <= 0.05 else 'NO'}")
    wl, wr = statistics.median(wall["local"]), statistics.median(wall["ray"])
    print(f"wall-clock per run (median): local {wl:.1f} s, Ray {wr:.1f} s (x{wr / wl:.2f}, +{wr - wl:.1f} s); "
          f"cluster start {start_s:.1f} s (once)")
    print(f"largest per-cell p50 difference: {worst:.1%}")


if __name__ == "__main__":
    main()
