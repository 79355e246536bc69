"""Calibration quality: int8 accuracy per calibration source, for every trained zoo model and quantizing target.

For each trained zoo model (vit_tiny_digits, visiongru_digits, gru_digits, vit_shapes) and each of OpenVINO
(NNCF), ONNX Runtime (static QDQ) and ExecuTorch (PT2E/XNNPACK) int8, the test accuracy of:

* fp32 (the PyTorch model),
* int8 calibrated on real held-out images (``--calib testset``: the first half of the test split),
* int8 calibrated on ``--calib datafree`` (images optimised from the model alone; one column per ``--methods``),
* int8 calibrated on ``--calib synthetic`` (random normal noise),

all measured on the second half of the test split (never used to calibrate), plus the seconds data-free generation
took. Every artifact goes through edge's own verification; one that fails it is reported with its accuracy (the
table says "FAILED"). The W4A8 row: ExecuTorch's 8da4w (int4 weights, int8 *dynamic* activations: quantized per
call, so calibration cannot change it) is shown for reference; no target here offers int4 weights with statically
calibrated int8 activations.

    python benchmarks/calibration_quality.py                         # all models, all targets
    python benchmarks/calibration_quality.py --smoke                 # vit_tiny_digits, onnx, short budget
    python benchmarks/calibration_quality.py --models vit_shapes --targets openvino --budget-s 60 --json out.json
    python benchmarks/calibration_quality.py --models vit_tiny_digits,vit_shapes --methods psaq,spdfq \
        --steps 150 --budget-s 100000 --no-w4a8                     # fixed steps: load-independent images

Accuracies do not depend on machine load; the generation seconds do (a budget cut stops at fewer steps).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("vit_tiny_digits", "visiongru_digits", "gru_digits", "vit_shapes")
TARGETS = ("openvino", "onnx", "executorch")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def _accuracy_of(art) -> tuple[float | None, float | None, bool]:
    """(accuracy, reference accuracy, passed) from an artifact's parity record (edge measured it on the unseen
    half of the test split)."""
    parity = art.manifest.parity or {}
    out = next(iter((parity.get("outputs") or {}).values()), {})
    return out.get("accuracy"), out.get("reference_accuracy"), bool(parity.get("passed"))


def _convert(prep, target: str, precision: str, out: Path, calib) -> dict:
    """Convert one cell; a failed verification still leaves the artifact (its accuracy is read), a failed
    conversion is reported as the error it raised."""
    import edge
    from edge.artifact import Artifact
    from edge.errors import EdgeError, VerificationError
    try:
        art = edge.convert(None, target=target, precision=precision, out=out, prepared=prep, calib=calib)
    except VerificationError:
        art = Artifact.open(out, check_hashes=False)
    except EdgeError as e:
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    acc, ref, passed = _accuracy_of(art)
    cal = art.manifest.details.get("calibration", {})
    return {"accuracy": acc, "reference_accuracy": ref, "passed": passed, "calibration_kind": cal.get("kind"),
            "judged_on": (art.manifest.parity or {}).get("input_kind")}


def run_model(name: str, targets: list[str], work: Path, budget_s: float, w4a8: bool, steps: int | None = None,
              methods: tuple[str, ...] = ("auto",)) -> dict:
    from edge.api import prepare
    from edge.calibration import generate
    row: dict = {"model": name, "cells": {}, "fp32": None, "datafree": {}}
    gens = {}
    for method in methods:
        t0 = time.perf_counter()
        kw = {"steps": steps} if steps else {}
        gen = generate(name, method=method, budget_s=budget_s, cache=False, **kw)   # afresh: its seconds measured
        gens[gen.method] = gen
        row["datafree"][gen.method] = {**gen.record(), "wall_s": round(time.perf_counter() - t0, 1)}
    prep = prepare(name)                                   # captured once per pass profile for every cell
    calibs = ["testset", *(f"datafree:{m}" for m in gens), "synthetic"]
    for calib in calibs:
        for t in targets:
            source = gens[calib.split(":", 1)[1]] if calib.startswith("datafree:") else calib
            cell = _convert(prep, t, "int8", work / name / calib.replace(":", "-") / t, source)
            row["cells"][f"{t}/{calib}"] = cell
            row["fp32"] = cell.get("reference_accuracy") or row["fp32"]
    if w4a8 and "executorch" in targets:
        row["cells"]["executorch/8da4w"] = _convert(prep, "executorch", "8da4w", work / name / "8da4w", None)
    return row


def _fmt(cell: dict | None) -> str:
    if not cell:
        return "-"
    if "error" in cell:
        return "error"
    acc = cell.get("accuracy")
    text = f"{acc * 100:.2f}" if acc is not None else "?"
    return text + ("" if cell.get("passed") else " FAILED")


def format_table(rows: list[dict], targets: list[str]) -> str:
    methods = list(dict.fromkeys(m for r in rows for m in r["datafree"]))
    head = ("| model | target | fp32 | int8 real | " + "".join(f"int8 {m} | " for m in methods) + "int8 noise | "
            + "".join(f"{m} - real | " for m in methods) + "generation: method, steps, s |")
    lines = [head, "|" + "---|" * (6 + 2 * len(methods))]
    for r in rows:
        gen = ", ".join(f"{g['method']} {g['steps']} {g['seconds']:.0f}" for g in r["datafree"].values())
        for t in targets:
            c = r["cells"]
            real = c.get(f"{t}/testset", {}).get("accuracy")
            dfs = [c.get(f"{t}/datafree:{m}", {}).get("accuracy") for m in methods]
            gaps = [f"{(df - real) * 100:+.2f}" if real is not None and df is not None else "-" for df in dfs]
            fp32 = f"{r['fp32'] * 100:.2f}" if r["fp32"] is not None else "-"
            lines.append(f"| {r['model']} | {t} | {fp32} | {_fmt(c.get(f'{t}/testset'))} | "
                         + "".join(f"{_fmt(c.get(f'{t}/datafree:{m}'))} | " for m in methods)
                         + f"{_fmt(c.get(f'{t}/synthetic'))} | " + "".join(f"{g} | " for g in gaps) + f"{gen} |")
    w4 = [r for r in rows if "executorch/8da4w" in r["cells"]]
    if w4:
        lines += ["", "W4A8: executorch 8da4w (int4 weights, int8 dynamic activations: no calibration input)",
                  "| model | fp32 | 8da4w |", "|---|---|---|"]
        lines += [f"| {r['model']} | {(r['fp32'] or 0) * 100:.2f} | {_fmt(r['cells']['executorch/8da4w'])} |"
                  for r in w4]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--budget-s", type=float, default=120.0, help="data-free generation budget per model")
    ap.add_argument("--steps", type=int, help="data-free generation steps (with a large --budget-s: the same "
                                              "images whatever the machine's load)")
    ap.add_argument("--methods", default="auto", help="data-free methods, one datafree column each "
                                                      "(e.g. psaq,spdfq; default: auto, the one edge picks)")
    ap.add_argument("--no-w4a8", action="store_true", help="skip the executorch 8da4w row")
    ap.add_argument("--smoke", action="store_true", help="vit_tiny_digits on onnx with a 20 s budget")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    models, targets = args.models.split(","), args.targets.split(",")
    if args.smoke:
        models, targets, args.budget_s, args.no_w4a8 = ["vit_tiny_digits"], ["onnx"], 20.0, True
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibq-") as tmp:
        for name in models:
            rows.append(run_model(name, targets, Path(tmp), args.budget_s, not args.no_w4a8, args.steps,
                                  tuple(m for m in args.methods.split(",") if m)))
            print(f"{name} done", file=sys.stderr, flush=True)
    print(f"CPU: {cpu_model()}; accuracy on the unseen half of each test split; "
          f"generation seconds measured under load (other jobs on the 2 cores)")
    print(format_table(rows, targets))
    errors = [(r["model"], k, c["error"]) for r in rows for k, c in r["cells"].items() if "error" in c]
    for model, cell, error in errors:
        print(f"error: {model} {cell}: {error}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
