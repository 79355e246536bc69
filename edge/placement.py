"""Where each op of an artifact runs, and in what precision: the placement table of a bench cell.

One function per runtime, read from the runtime itself where it tells (not from what the converter meant):

- ONNX Runtime: the execution provider of every node, from one profiled run (ORT's own profiler).
- OpenVINO: the layer type, kernel (``primitiveType``: ``brgconv_avx512_f32``, ``ref_any_f32``) and runtime
  precision of every layer of the compiled model (``get_runtime_model()``); reference kernels (``ref_*``) are
  the plugin's portable fallback.
- ExecuTorch: the ops inside XNNPACK delegates vs the ops left on portable kernels, from the lowered program
  (the converter's delegation summary in the manifest, computed on the program the runtime loads).

Each returns ``{"unit", "total", "delegated", "to", "where", "precision", "rows", "summary"}`` where
``summary`` reads like "11 of 12 nodes on CPUExecutionProvider".

Example:
    >>> with edge.load("out/m") as s:
    ...     print(placement(s, s.prepare(x))["summary"])
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from typing import Any, Callable, Sequence


def _table(unit: str, to: str, rows: list[dict[str, Any]], delegated: int, extra: str = "") -> dict[str, Any]:
    where = Counter(r["where"] for r in rows)
    precision = Counter(r["precision"] for r in rows if r.get("precision"))
    summary = f"{delegated} of {len(rows)} {unit} {to}"
    if precision:
        summary += "; " + ", ".join(f"{p} x{n}" for p, n in precision.most_common())
    return {"unit": unit, "to": to, "total": len(rows), "delegated": delegated, "where": dict(where),
            "precision": dict(precision), "rows": rows, "summary": summary + extra}


def _onnxruntime(session: Any, inputs: Sequence[Any]) -> dict[str, Any]:
    import onnxruntime as ort
    providers = session._providers()
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort.InferenceSession(str(session.artifact.main_path),
                                    session._session_options(os.path.join(tmp, "ort")), providers=providers)
        sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs)})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    rows, seen = [], set()
    for ev in events:
        name, args = ev.get("name", ""), ev.get("args", {})
        if ev.get("cat") == "Node" and name.endswith("_kernel_time") and name not in seen:
            seen.add(name)
            rows.append({"op": name[: -len("_kernel_time")], "type": args.get("op_name", "?"),
                         "where": args.get("provider", "?")})
    first = providers[0]
    return _table("nodes", f"on {first}", rows, sum(r["where"] == first for r in rows))


def _openvino(session: Any, inputs: Sequence[Any]) -> dict[str, Any]:
    rows = []
    for op in session.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        get = lambda k: info[k].astype(str) if k in info else None   # noqa: E731
        layer = get("layerType")
        if layer in ("Input", "Output", "Const"):
            continue
        kernel = get("primitiveType") or "?"
        rows.append({"op": op.get_friendly_name(), "type": layer, "kernel": kernel, "precision": get("runtimePrecision"),
                     "where": "reference" if kernel.startswith("ref") else "optimized"})
    return _table("layers", "on optimized kernels (the rest on reference kernels)", rows,
                  sum(r["where"] == "optimized" for r in rows))


def _executorch(session: Any, inputs: Sequence[Any]) -> dict[str, Any] | None:
    d = session.artifact.manifest.details.get("delegation")
    if not d:
        return None
    rows = [{"op": op, "type": op, "where": "portable", "count": n} for op, n in d.get("portable_ops", {}).items()]
    rows.insert(0, {"op": "XNNPACK delegates", "type": "delegate", "where": "xnnpack",
                    "count": d.get("delegated_nodes", 0), "calls": d.get("delegate_calls")})
    total = int(d.get("delegated_nodes", 0)) + int(d.get("portable_nodes", 0))
    calls = d.get("delegate_calls_per_run", d.get("delegate_calls"))
    return {"unit": "ops", "to": "delegated to XNNPACK", "total": total, "delegated": int(d.get("delegated_nodes", 0)),
            "where": {"xnnpack": int(d.get("delegated_nodes", 0)), "portable": int(d.get("portable_nodes", 0))},
            "precision": {}, "rows": rows,
            "summary": f"{d.get('delegated_nodes', 0)} of {total} ops delegated to XNNPACK in {calls} delegate "
                       f"call(s); portable: " + (", ".join(f"{k} x{v}" for k, v in d.get("portable_ops", {}).items())
                                                 or "none")}


PLACEMENT: dict[str, Callable[[Any, Sequence[Any]], dict[str, Any] | None]] = {
    "onnxruntime": _onnxruntime, "openvino": _openvino, "executorch": _executorch}


def placement(session: Any, inputs: Sequence[Any]) -> dict[str, Any] | None:
    """The placement table of an open session (None when its runtime does not say where ops run)."""
    fn = PLACEMENT.get(session.name)
    return fn(session, inputs) if fn else None
