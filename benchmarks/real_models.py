"""Hugging Face families through edge and through each raw toolchain, side by side in one run.

For every family of ``edge.zoo.hf`` and each of ONNX Runtime, OpenVINO and ExecuTorch: edge's status (verified /
refused with the reason / the capture route used), ExecuTorch's delegate calls and ops on portable kernels (edge and
raw), and with ``--time`` the latency of edge's artifact against the raw toolchain's artifact of the same model
(``torch.onnx.export(dynamo=True)`` + ORT, ``openvino.convert_model(module)`` under the f32 hint,
``torch.export`` + ``to_edge_transform_and_lower(XnnpackPartitioner)``), timed in interleaved rounds.

Three sessions per family and target are timed together: ``edge ms`` is edge's artifact run by edge's runtime
wrapper (``edge.load(...).run``: input checks, numpy in and out), ``art ms`` is edge's artifact run by the same raw
call as the raw toolchain's artifact (``raw ms``). ``raw/art`` compares the two artifacts (> 1: edge's is faster);
``wrap us`` is what the wrapper adds per call (``benchmarks/runtime_overhead.py`` measures it alone), which
only shows on the small variants' sub-millisecond models. It is negative on OpenVINO: the raw call is
``infer()``, which runs on the calling thread, and edge's wrapper uses ``start_async`` + ``wait`` (faster; see
runtimes/openvino.py).

    python benchmarks/real_models.py                              # status and delegation, small variants
    python benchmarks/real_models.py --families vit,swin --time   # plus latency edge / raw
    python benchmarks/real_models.py --large --time --rounds 5    # the large variants (224 px)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import edge
from edge.errors import EdgeError
from edge.profile import time_interleaved
from edge.zoo.hf import FAMILIES, build

TARGETS = ("onnx", "openvino", "executorch")


class RawSession:
    """``run(*numpy) -> outputs`` around a runtime object the raw toolchain made."""

    def __init__(self, fn):
        self.run = fn

    def synchronize(self) -> None:
        pass


def open_onnx(path) -> RawSession:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return RawSession(lambda *a: sess.run(None, dict(zip(names, a))))


def raw_onnx(model, x, folder: Path) -> RawSession:
    p = folder / "raw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, dynamo=True, verbose=False).save(str(p))
    return open_onnx(p)


def open_openvino(model_or_xml) -> RawSession:
    import openvino as ov
    req = ov.Core().compile_model(model_or_xml if not isinstance(model_or_xml, Path) else str(model_or_xml), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
                                  ).create_infer_request()

    def run(*a):
        req.infer(list(a))
        return [req.get_output_tensor(0).data.copy()]
    return RawSession(run)


def raw_openvino(model, x, folder: Path) -> RawSession:
    import openvino as ov
    with torch.no_grad():
        return open_openvino(ov.convert_model(model, example_input=x))


def raw_executorch(model, x, folder: Path) -> tuple[RawSession, dict]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from edge.converters.executorch import delegation_summary
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, x)
        mgr = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        summary = delegation_summary(mgr.exported_program().graph_module)
        p = folder / "raw.pte"
        p.write_bytes(mgr.to_executorch().buffer)
    return open_executorch(p), summary


def open_executorch(path) -> RawSession:
    from executorch.runtime import Runtime
    method = Runtime.get().load_program(str(path)).load_method("forward")
    return RawSession(lambda *a: method.execute([torch.from_numpy(t) for t in a]))


RAW = {"onnx": raw_onnx, "openvino": raw_openvino, "executorch": raw_executorch}
# edge's artifact opened the way the raw toolchain's is, so that the two artifacts are timed by the same call
OPEN = {"onnx": open_onnx, "openvino": open_openvino, "executorch": open_executorch}


def short(msg: str, n: int = 110) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[:n - 3] + "..."


def ops_text(portable: dict) -> str:
    return ", ".join(f"{k.replace('aten_', '').replace('_default', '')} x{v}" for k, v in portable.items()) or "none"


def run_family(name: str, args, folder: Path) -> list[dict]:
    model, x = build(name, large=args.large)
    rows = []
    for target in args.targets:
        row: dict = {"family": name, "target": target}
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                art = edge.convert(model, target=target, example_inputs=x, out=folder / f"{name}-{target}")
            m = art.manifest
            row.update(status=m.status, path=str(art.path), route=m.details.get("capture", {}).get("route", "torch.export"))
            if target == "executorch":
                d = m.details["delegation"]
                row.update(calls=d["delegate_calls"], portable=d["portable_ops"])
        except EdgeError as e:
            row.update(status="refused", reason=short(e, 300))
        row["edge_s"] = round(time.perf_counter() - t0, 1)
        if args.raw or args.time:
            try:
                raw_dir = folder / f"{name}-{target}-raw"
                raw_dir.mkdir()
                got = RAW[target](model, x, raw_dir)
                if isinstance(got, tuple):
                    got, summary = got
                    row.update(raw_calls=summary["delegate_calls"], raw_portable=summary["portable_ops"])
            except Exception as e:  # the raw toolchain's failure is a result here, not an error
                row["raw_status"] = "failed: " + short(f"{type(e).__name__}: {e}", 200)
            else:
                try:   # an artifact the raw toolchain built may still fail when run (OpenVINO's pooling check)
                    got.run(*[t.numpy() for t in x])
                    row["_raw"] = got
                except Exception as e:
                    row["raw_status"] = "failed at run: " + short(f"{type(e).__name__}: {e}", 200)
        rows.append(row)
    if args.time:
        sessions, inputs = {}, {}
        for r in rows:
            if r.get("status") == "verified" and "_raw" in r:
                sessions[(r["target"], "edge")] = edge.load(r["path"])
                main = edge.Artifact.open(r["path"]).main_path
                sessions[(r["target"], "edge artifact")] = OPEN[r["target"]](Path(main))
                sessions[(r["target"], "raw")] = r["_raw"]
        xs = [t.numpy() for t in x]
        stats = time_interleaved(sessions, {k: xs for k in sessions}, rounds=args.rounds, warmup=args.warmup,
                                 iters=args.iters) if sessions else {}
        ms = {k: statistics.median(v["round_medians"]) for k, v in stats.items()}
        for r in rows:
            e, a, w = (ms.get((r["target"], k)) for k in ("edge", "edge artifact", "raw"))
            if e and a and w:
                r.update(edge_ms=e, edge_artifact_ms=a, raw_ms=w, speedup=w / a, wrapper_us=(e - a) * 1e3)
    for r in rows:
        r.pop("_raw", None)
    return rows


def print_table(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"{'family':12} {'target':10} {'edge':10} {'et calls':>8} {'raw calls':>9} {'edge ms':>8} {'art ms':>8} "
              f"{'raw ms':>8} {'raw/art':>8} {'wrap us':>8}  notes")
    for r in rows:
        notes = []
        if r.get("status") == "refused":
            notes.append(r["reason"])
        if r.get("route", "torch.export") != "torch.export":
            notes.append(f"route: {r['route']}")
        if r["target"] == "executorch" and r.get("status") != "refused":
            notes.append(f"portable: {ops_text(r.get('portable', {}))}")
            if "raw_portable" in r:
                notes.append(f"raw portable: {sum(r['raw_portable'].values())} ops")
        if "raw_status" in r:
            notes.append(f"raw {r['raw_status']}")
        f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"   # noqa: E731
        print(f"{r['family']:12} {r['target']:10} {r['status']:10} {r.get('calls', '-')!s:>8} "
              f"{r.get('raw_calls', '-')!s:>9} {f('edge_ms', '8.3f'):>8} {f('edge_artifact_ms', '8.3f'):>8} "
              f"{f('raw_ms', '8.3f'):>8} {f('speedup', '7.2f'):>8} {f('wrapper_us', '8.1f'):>8}  {'; '.join(notes)}")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--large", action="store_true", help="the large variants (224 px) instead of the small ones")
    ap.add_argument("--raw", action="store_true", help="build the raw toolchain's artifacts (delegation counts)")
    ap.add_argument("--time", action="store_true", help="time edge's and the raw artifacts side by side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.targets = args.targets.split(",")
    warnings.simplefilter("ignore")
    sys.stdout.reconfigure(line_buffering=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-real-") as tmp:
        for name in args.families.split(","):
            got = run_family(name, args, Path(tmp))
            rows += got
            print_table(got, header=not rows[:-len(got)])   # each family as it is done: a long run shows progress
    print(f"\n{cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{'large' if args.large else 'small'} variants; latency: median of {args.rounds} interleaved rounds' medians "
          f"({args.iters} runs each)")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
