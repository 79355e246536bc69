"""One cell of the bench matrix as plain data, and the two steps every run makes for it.

:class:`CellSpec` says what to measure (model source, resolution, target, precision, device, settings); it is
JSON, so it crosses processes and Ray nodes and can be logged. :func:`convert_cell` turns it into an artifact
in a store (or reuses the one already there under the same cache key) and returns a conversion record;
:func:`bench_cell` measures that artifact on a device and returns the results cell. The local run
(:func:`edge.matrix.run_matrix`) and the Ray run (:mod:`edge.fleet`) call these same functions.

The cache key (:func:`artifact_key`) is the digest of what was lowered: the captured program's graph and
constants (so the weights), the optimize-pass record, target, precision, options, calibration, input shapes
and the versions of edge, torch and the backend, plus the converter's source. It is recorded in the manifest
(``details["cache_key"]``): an edited model file gives another program and is converted again.

Example:
    >>> spec = CellSpec(model="vit_tiny_digits", resolution=None, target="onnx", precision="fp32")
    >>> record = convert_cell(spec, PathStore("~/.cache/edge"))
    >>> cell = bench_cell(spec, record, LocalDevice())
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from edge.capture import program_digest
from edge.errors import EdgeError

# The results schema (results.json: a header with host_info() and settings, then one record per cell), used by
# the matrix, the fleet, the report and the phone app's server.
SCHEMA = "edge.bench/1"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"   # converted and spec-checked, but this machine cannot run it (CoreML off macOS)

# One row per cell, in this order, for results.csv (results.json holds these plus samples, profiles, placement).
CELL_FIELDS = [
    "id", "model", "resolution", "target", "precision", "device", "runtime", "status", "error", "cached",
    "artifact", "cache_key", "convert_s", "size_mb", "p50_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p90_ms",
    "p95_ms", "p99_ms", "throughput_per_s", "load_ms", "cold_load_ms", "warm_load_ms", "load_cache",
    "first_inference_ms", "peak_rss_mb", "base_rss_mb", "model_rss_mb", "rss_growth_mb", "placement", "warmup",
    "iters", "timer", "parity_passed", "cosine", "max_abs", "accuracy", "reference_accuracy", "node", "user_agent",
]


def host_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"hostname": platform.node(), "system": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count() or 1,
            "python": platform.python_version()}




@dataclasses.dataclass
class CellSpec:
    """What one cell measures. Plain data (:meth:`to_json` / :meth:`from_json`).

    Attributes:
        model: a zoo name, ``file.py:factory``, ``package.module:factory`` or a ``.pt2`` path.
        resolution: the square input size, or None for the size the source gives.
        device: the device that measures it (``local`` for the machine running the matrix).
        error: why the cell cannot run, found while planning (no work is done for it).
    """

    model: str
    resolution: int | None
    target: str
    precision: str
    device: str = "local"
    weights: str | None = None
    input_shapes: list[list[int]] | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    calib: str | None = None
    optimize: bool = True
    rebuild: bool = False
    warmup: int = 10
    iters: int = 100
    op_profile: bool = True
    error: str | None = None

    @property
    def id(self) -> str:
        head = f"{self.model}@{self.resolution}/{self.target}/{self.precision}"
        return head if self.device == "local" else f"{head}@{self.device}"

    @property
    def group(self) -> tuple:
        """Cells with equal groups share one resolved (and captured) model."""
        return (self.model, self.resolution, self.weights, json.dumps(self.input_shapes), self.optimize)

    @property
    def artifact_spec(self) -> tuple:
        """Cells with equal artifact specs share one artifact (the same conversion, measured on several devices)."""
        return (*self.group, self.target, self.precision, json.dumps(self.options, sort_keys=True, default=str),
                self.calib, self.rebuild)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CellSpec":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def new_cell(spec: CellSpec) -> dict[str, Any]:
    """An empty results cell for ``spec`` (every CSV field present)."""
    cell = {k: None for k in CELL_FIELDS}
    cell.update(id=spec.id, model=spec.model, resolution=spec.resolution, target=spec.target,
                precision=spec.precision, device=spec.device, cached=False, warmup=spec.warmup, iters=spec.iters)
    return cell


def error_text(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg if isinstance(e, EdgeError) else f"{type(e).__name__}: {msg.splitlines()[0]}"


# ---------------------------------------------------------------- the cache key

def _code_digest(obj: Any) -> str:
    try:
        src = inspect.getsourcefile(type(obj))
        return hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16] if src else "?"
    except (TypeError, OSError):
        return "?"


def cache_key(record: dict[str, Any]) -> str:
    """The 24-hex-digit key of a key record (everything that changes the artifact's bytes or its parity)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def artifact_key(spec: CellSpec, prep: Any, conv: Any, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(key, record) of the artifact ``spec`` asks for: the digest of what is lowered for it.

    Captures the program (the pipeline's own capture, cached per pass profile, reused by the conversion).
    """
    import platform

    import torch

    import edge
    module, program, passes = prep.program_for(spec.target)
    shapes = [list(t.shape) for t in prep.spec.example_inputs]
    src = prep.spec.source
    record = {"model": src.get("name"), "program": program_digest(program, module), "passes": passes,
              "weights": src.get("weights_sha256") or src.get("sha256") or src.get("weights"),
              "target": spec.target, "precision": spec.precision, "input_shapes": shapes, "options": options,
              "calib": spec.calib if spec.precision in conv.needs_calibration else None,
              "optimize": spec.optimize, "converter_code": _code_digest(conv),
              "versions": {"edge": edge.__version__, "torch": torch.__version__,
                           "python": platform.python_version(), **conv.backend_version()}}
    return cache_key(record), record


# ---------------------------------------------------------------- convert

_PREPARED: dict[tuple, Any] = {}


def forget_prepared() -> None:
    """Drop the kept model: a new run resolves its sources again (a model file may have been edited since)."""
    _PREPARED.clear()


def _prepared(spec: CellSpec) -> Any:
    """The resolved model of ``spec``'s group, kept for the next cells of the same group in this process."""
    from edge.resolution import prepared
    if spec.group not in _PREPARED:
        _PREPARED.clear()   # one model at a time: a matrix runs its groups one after the other
        _PREPARED[spec.group] = prepared(spec.model, spec.resolution, weights=spec.weights,
                                         input_shapes=spec.input_shapes, optimize=spec.optimize)
    return _PREPARED[spec.group]


def _dir_size_mb(path: Path, files: dict[str, str]) -> float:
    total = 0
    for rel in files:
        p = path / rel
        total += p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 2**20


def _parity_fields(parity: dict[str, Any] | None) -> dict[str, Any]:
    from edge.parity import ParityReport
    report = ParityReport.from_dict(parity)
    first = report.first_output
    return {"parity_passed": report.passed, "cosine": first.get("cosine"), "max_abs": first.get("max_abs"),
            "accuracy": first.get("accuracy"), "reference_accuracy": first.get("reference_accuracy")}


def convert_cell(spec: CellSpec, store: Any) -> dict[str, Any]:
    """Convert and verify the artifact ``spec`` asks for, or reuse the one ``store`` has under its key.

    Never raises for a bad cell: the record's ``status`` is ``failed`` with the ``error``. The record
    holds the key, the artifact's path in the store (and its packed bytes when the store sends them),
    ``cached``, ``convert_s``, the runtime, size and parity figures.
    """
    import socket
    rec: dict[str, Any] = {"key": None, "status": STATUS_FAILED, "error": spec.error, "cached": False,
                           "convert_s": None, "artifact": None, "packed": None, "node": socket.gethostname(),
                           "resolution": spec.resolution}
    if spec.error:
        return rec
    try:
        import edge
        from edge.artifact import STATUS_CHECKED_SPEC, Artifact
        from edge.converters import get_converter
        prep = _prepared(spec)
        first = prep.spec.example_inputs[0]
        if first.ndim == 4:
            rec["resolution"] = int(first.shape[-1])
        conv = get_converter(spec.target)
        conv.check_precision(spec.precision)
        options = conv.resolve_options(spec.options)
        key, record = artifact_key(spec, prep, conv, options)
        rec["key"] = key
        path = None if spec.rebuild else store.get(key)
        rec["cached"] = path is not None
        if path is None:
            t0 = time.perf_counter()
            store.dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=store.dir, prefix=f".{key}.build-") as tmp:
                art = edge.convert(None, target=spec.target, precision=spec.precision, out=Path(tmp) / "a",
                                   prepared=prep, calib=spec.calib, options=options)
                art.manifest.details["cache_key"] = {"key": key, "record": record}
                art.write_manifest()
                path = store.put(key, art.path)
            rec["convert_s"] = time.perf_counter() - t0
        m = Artifact.open(path).manifest
        rec.update(artifact=str(path), runtime=m.runtime, size_mb=_dir_size_mb(path, m.files),
                   manifest_status=m.status, **_parity_fields(m.parity))
        if m.status == STATUS_CHECKED_SPEC:
            rec.update(status=STATUS_SKIPPED, error=f"converted, not run: {m.parity.get('skipped', 'cannot run here')}")
        else:
            rec.update(status=STATUS_OK, error=None)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # recorded in the cell; the other cells still run
        rec.update(status=STATUS_FAILED, error=error_text(e))
        if not isinstance(e, EdgeError):
            rec["traceback"] = traceback.format_exc(limit=6)
    return rec


# ---------------------------------------------------------------- bench

RECORD_TO_CELL = ("cached", "convert_s", "artifact", "runtime", "size_mb", "parity_passed", "cosine", "max_abs",
                  "accuracy", "reference_accuracy", "resolution", "traceback")


def bench_cell(spec: CellSpec, record: dict[str, Any], device: Any) -> dict[str, Any]:
    """The results cell of ``spec``: its conversion ``record`` measured on ``device`` (never raises for a bad cell).

    The device fetches the artifact (checked by hash), checks the backend versions it was built with
    against its own, then measures it (:meth:`edge.devices.Device.bench`).
    """
    cell = new_cell(spec)
    cell["cache_key"] = record.get("key")
    cell.update({k: record.get(k) for k in RECORD_TO_CELL if record.get(k) is not None})
    cell["id"] = CellSpec.from_json({**spec.to_json(), "resolution": cell["resolution"]}).id
    if record["status"] != STATUS_OK:
        cell.update(status=record["status"], error=record["error"])
        return cell
    try:
        cell.update(device.bench(spec, record))
        cell["status"] = STATUS_OK
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        cell.update(status=STATUS_FAILED, error=error_text(e))
    return cell
