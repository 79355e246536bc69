"""Accuracy-aware int8 (``--max-drop``) against plain int8, and against NNCF's own accuracy control, in one run.

For each trained zoo model (test split: the first half calibrates, the second half is held out) and each target
(onnx, openvino, executorch): edge's int8 without and with ``--max-drop POINTS``: accuracy on the held-out half,
the modules kept in float, and latency of both, timed in interleaved rounds (``edge.profile.time_interleaved``).
Beside edge's OpenVINO artifacts, ``nncf.quantize_with_accuracy_control`` on the same fp32 IR, the same
calibration half, validated on the same held-out half with the same budget: accuracy, quantizers removed,
latency (same rounds) and the time it took.

    .venv/bin/python benchmarks/accuracy_aware.py                      # every trained zoo model
    .venv/bin/python benchmarks/accuracy_aware.py --fast               # the same table in minutes (see --fast)
    .venv/bin/python benchmarks/accuracy_aware.py --smoke              # vit_tiny_digits, few rounds (proves it works)

``--fast`` converts each cell once: the all-int8 accuracy is the ``--max-drop`` run's round 0 (the same
quantization, measured on the same held-out half), and the all-int8 latency is the one that run measured side by
side with its result (a second conversion is made only when ``--max-drop`` fails); every model is captured once;
timing takes 3 rounds of 20 calls.

Latencies depend on the CPU (its model is printed) and on the load: quote them with that context.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import edge
from edge.profile import time_interleaved

MODELS = ["vit_tiny_digits", "gru_digits", "visiongru_digits", "vit_shapes"]
TARGETS = ["onnx", "openvino", "executorch"]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
                    platform.processor())
    except OSError:
        return platform.processor()


class OvModel:
    """An OpenVINO model compiled like edge's session (f32 hint), with the ``run`` the timer calls."""

    def __init__(self, model: Any):
        import openvino as ov
        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()

    def run(self, *xs: np.ndarray) -> list[np.ndarray]:
        self.request.start_async(list(xs), share_inputs=True)
        self.request.wait()
        return [self.request.get_output_tensor(0).data.copy()]

    def synchronize(self) -> None:
        pass


def accuracy(run, x: np.ndarray, y: np.ndarray) -> float:
    got = np.concatenate([np.asarray(run(x[i:i + 1])[0]).argmax(-1) for i in range(len(x))])
    return float((got == y).mean())


def nncf_accuracy_control(fp32_xml: Path, calib: np.ndarray, x: np.ndarray, y: np.ndarray, max_drop: float,
                          transformer: bool) -> tuple[Any, float]:
    import nncf
    import openvino as ov
    model = ov.Core().read_model(str(fp32_xml))
    name = model.inputs[0].get_any_name()

    def validate(compiled, data) -> float:
        hits = [int(np.argmax(compiled({name: a})[0]) == label) for a, label in data]
        return float(np.mean(hits))

    t0 = time.perf_counter()
    q = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda a: {name: a}),
        nncf.Dataset([(x[i:i + 1], y[i]) for i in range(len(x))]), validate, max_drop=max_drop / 100.0,
        subset_size=len(calib), preset=nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    return q, time.perf_counter() - t0


def fake_quantizers(model: Any) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def plain_int8(name: str, target: str, out: Path, row: dict, prep: Any) -> Any:
    """All-int8 (no fallback), its accuracy and parity in ``row``; returns the artifact (failed ones too), or
    None when the conversion itself failed (the error goes to ``row["int8_error"]``)."""
    t0 = time.perf_counter()
    try:
        plain = edge.convert(name, target=target, precision="int8", out=out / name / f"{target}-int8",
                             prepared=prep)
        row["int8_accuracy"] = plain.manifest.parity["outputs"]["output"]["accuracy"]
    except edge.errors.VerificationError as e:
        from edge.artifact import Artifact
        plain = Artifact.open(out / name / f"{target}-int8")
        row["int8_accuracy"] = plain.manifest.parity["outputs"]["output"].get("accuracy")
        row["int8_parity"] = f"failed: {e}"
    except edge.errors.EdgeError as e:
        plain, row["int8_error"] = None, f"{type(e).__name__}: {str(e)[:300]}"
    row["int8_seconds"] = round(time.perf_counter() - t0, 1)
    return plain


def fast_cell(name: str, target: str, out: Path, row: dict, args, prep: Any) -> Any:
    """One conversion: ``--max-drop``; all-int8 figures from its round 0 (and its side-by-side latency)."""
    t0 = time.perf_counter()
    try:
        aa = edge.convert(name, target=target, precision="int8", max_drop=args.max_drop,
                          out=out / name / f"{target}-int8-aa", prepared=prep)
    except edge.errors.EdgeError as e:
        row["aa_error"] = str(e)[:400]
        row["aa_seconds"] = round(time.perf_counter() - t0, 1)
        if str(e).startswith("--max-drop"):   # out of layers: the all-int8 figures from a plain conversion
            plain_int8(name, target, out, row, prep)
        else:                                 # the conversion itself failed: a plain one fails the same way
            row["int8_error"] = row["aa_error"]
        return None
    rec = aa.manifest.details["accuracy_aware"]
    first = rec["rounds"][0]
    row.update(aa_accuracy=aa.manifest.parity["outputs"]["output"]["accuracy"], kept_float=rec["kept_float"],
               rounds=len(rec["rounds"]), metric=rec["metric"], aa_seconds=round(time.perf_counter() - t0, 1),
               int8_accuracy=first["metric"] / 100.0)
    if not first["parity_passed"]:
        row["int8_parity"] = "failed"
    lat = rec.get("latency_cost")
    if lat:   # measured side by side by the --max-drop run itself
        row.update(int8_p50_ms=lat["all_int8_ms"], aa_p50_ms=lat["with_float_layers_ms"], latency_how=lat["how"])
    return aa


def bench_model(name: str, out: Path, args) -> list[dict]:
    from edge.api import prepare
    from edge.zoo import get_entry
    entry = get_entry(name)
    x_all, y_all = (np.asarray(a) for a in entry.test_set())
    half = len(x_all) // 2
    x, y = x_all[half:], y_all[half:]
    rows, sessions, inputs = [], {}, {}
    prep = prepare(name) if args.fast else None
    fp32 = edge.convert(name, target="openvino", out=out / name / "openvino-fp32", prepared=prep)
    ref_acc = fp32.manifest.parity["outputs"]["output"]["reference_accuracy"]
    for target in args.targets:
        row: dict[str, Any] = {"model": name, "target": target, "fp32_accuracy": ref_acc}
        print(f"{name} {target} ...", file=sys.stderr, flush=True)
        if args.fast:
            aa = fast_cell(name, target, out, row, args, prep)
            if aa is not None and ("aa_p50_ms" not in row or target == "openvino"):   # timed here (OpenVINO:
                sessions[(name, target, "aa")] = edge.load(aa.path)                     # beside NNCF's)
            rows.append(row)
            continue
        plain = plain_int8(name, target, out, row, None)
        t0 = time.perf_counter()
        try:
            aa = edge.convert(name, target=target, precision="int8", max_drop=args.max_drop,
                              out=out / name / f"{target}-int8-aa")
            rec = aa.manifest.details["accuracy_aware"]
            row.update(aa_accuracy=aa.manifest.parity["outputs"]["output"]["accuracy"],
                       kept_float=rec["kept_float"], rounds=len(rec["rounds"]), metric=rec["metric"])
            sessions[(name, target, "aa")] = edge.load(aa.path)
        except edge.errors.EdgeError as e:
            row["aa_error"] = str(e)[:400]
        row["aa_seconds"] = round(time.perf_counter() - t0, 1)
        if plain is not None:
            sessions[(name, target, "int8")] = edge.load(plain.path, allow_failed=True)
        rows.append(row)
    if "openvino" in args.targets and not args.no_nncf:
        import openvino as ov
        row = {"model": name, "target": "openvino (NNCF accuracy control)", "fp32_accuracy": ref_acc}
        try:
            transformer = any(op.get_type_name() in ("Softmax", "ScaledDotProductAttention")
                              for op in ov.Core().read_model(str(fp32.main_path)).get_ops())
            q, seconds = nncf_accuracy_control(fp32.main_path, x_all[:half][:64], x, y, args.max_drop, transformer)
            ses = OvModel(q)
            row.update(aa_accuracy=accuracy(ses.run, x, y), aa_seconds=round(seconds, 1),
                       fake_quantize_ops=fake_quantizers(q))
            # edge's all-int8 IR: with --fast, the --max-drop artifact when it kept nothing in float
            plain_dir = out / name / "openvino-int8"
            if not plain_dir.is_dir() and not next(r for r in rows if r["target"] == "openvino").get("kept_float"):
                plain_dir = out / name / "openvino-int8-aa"
            if plain_dir.is_dir():
                row["int8_fake_quantize_ops"] = fake_quantizers(ov.Core().read_model(str(plain_dir / "model.xml")))
            sessions[(name, "openvino", "nncf-ac")] = ses
        except Exception as e:  # report NNCF's failure in the table, keep the rest of the run
            row["aa_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
    xs = [x[:1]]
    timing = time_interleaved(sessions, {k: xs for k in sessions}, rounds=args.rounds, warmup=5, iters=args.iters)
    for row in rows:
        t = "openvino" if row["target"].startswith("openvino (") else row["target"]
        if row["target"].startswith("openvino ("):
            row["aa_p50_ms"] = timing.get((name, t, "nncf-ac"), {}).get("p50_ms")
            # beside it: edge's plain int8, or with --fast edge's --max-drop result (timed in the same rounds)
            row["int8_p50_ms"] = timing.get((name, t, "aa" if args.fast else "int8"), {}).get("p50_ms")
        elif "aa_p50_ms" not in row:
            key = "aa" if args.fast else "int8"
            row["int8_p50_ms"] = timing.get((name, t, key), {}).get("p50_ms")
            row["aa_p50_ms"] = timing.get((name, t, "aa"), {}).get("p50_ms")
    for s in sessions.values():
        if hasattr(s, "close"):
            s.close()
    return rows


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<17} {'target':<33} {'fp32':>6} {'int8':>6} {'aa':>6} {'int8 ms':>8} {'aa ms':>8} "
             f"{'aa/int8':>7} {'s':>6}  kept in float"]
    for r in rows:
        ratio = (r["aa_p50_ms"] / r["int8_p50_ms"]) if r.get("aa_p50_ms") and r.get("int8_p50_ms") else None
        kept = r.get("kept_float")
        kept = (", ".join(kept) or "none") if kept is not None else (
            f"{r['int8_fake_quantize_ops'] - r['fake_quantize_ops']} of {r['int8_fake_quantize_ops']} quantizers "
            f"removed" if "fake_quantize_ops" in r and "int8_fake_quantize_ops" in r else r.get("aa_error", "-")[:120])
        lines.append(f"{r['model']:<17} {r['target']:<33} {_f(r.get('fp32_accuracy'), '.4f'):>6} "
                     f"{_f(r.get('int8_accuracy'), '.4f') + ('!' if r.get('int8_parity') else ''):>6} "
                     f"{_f(r.get('aa_accuracy'), '.4f'):>6} "
                     f"{_f(r.get('int8_p50_ms'), '.3f'):>8} {_f(r.get('aa_p50_ms'), '.3f'):>8} "
                     f"{_f(ratio, '.2f'):>7} {_f(r.get('aa_seconds'), '.0f'):>6}  {kept}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--max-drop", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--no-nncf", action="store_true", help="skip NNCF's quantize_with_accuracy_control")
    p.add_argument("--smoke", action="store_true", help="vit_tiny_digits only, 2 rounds of 20 iterations")
    p.add_argument("--fast", action="store_true", help="one conversion per cell (see the module docstring), "
                                                       "3 timing rounds of 20 calls")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if args.smoke:
        args.models, args.rounds, args.iters = "vit_tiny_digits", 2, 20
    if args.fast:
        args.rounds, args.iters = 3, 20
    args.targets = [t for t in args.targets.split(",") if t]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-aa-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            t0 = time.perf_counter()
            rows += bench_model(name, Path(tmp), args)
            print(f"{name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            if args.json:    # after every model, so a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    print(f"CPU: {cpu_model()}; accuracy on the held-out half of each test split; latency p50 of "
          f"{args.rounds} interleaved rounds x {args.iters} calls, batch 1; aa = --max-drop {args.max_drop}")
    print(table(rows))
    print("! = all-int8 failed edge's parity check" + ("; --fast: a cell that kept layers in float shows the "
          "latency its --max-drop run measured side by side (7 interleaved rounds x 20 calls)" if args.fast else ""))


if __name__ == "__main__":
    main()
