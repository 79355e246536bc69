"""Benchmark a matrix of models x resolutions x targets x precisions (x devices) in one run.

Three plain-data steps (:mod:`edge.cells`): :func:`plan_cells` makes the cross product and rejects what needs
no work to reject; ``convert_cell`` converts and verifies each distinct artifact once, or reuses the one the
cache holds under its key (the digest of what was lowered); ``bench_cell`` measures it on a device. This
module runs them on this machine; :mod:`edge.fleet` runs the same functions on a Ray cluster
(``run_matrix(..., ray="auto")``). A failed cell records its error and the run goes on; each cell is written
to ``out/results.json`` as it finishes, so a killed run keeps what it measured.

Example:
    >>> from edge.matrix import run_matrix
    >>> results = run_matrix(["vit_tiny_digits"], targets=["onnx"], precisions=["fp32", "int8"])
    >>> [c["p50_ms"] for c in results["cells"]]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from edge.cells import (CELL_FIELDS, SCHEMA, STATUS_FAILED, STATUS_OK, STATUS_SKIPPED,  # noqa: F401 (re-exported)
                        CellSpec, bench_cell, convert_cell, host_info)
from edge.errors import UsageError
from edge.progress import console
from edge.resolution import ResolutionError, native_resolution  # noqa: F401 (re-exported)

def default_cache_dir() -> Path:
    """``$EDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/edge``, else ``~/.cache/edge``."""
    if os.environ.get("EDGE_CACHE_DIR"):
        return Path(os.environ["EDGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge"


def available_targets() -> dict[str, str | None]:
    """Every registered target -> None if it can convert and run here, else the reason it cannot."""
    from edge.converters import TARGETS, get_converter
    out: dict[str, str | None] = {}
    for name in TARGETS.names():
        try:
            conv = get_converter(name)
        except Exception as e:  # a target module not written yet, or a broken plugin
            out[name] = f"target {name!r} cannot be loaded: {type(e).__name__}: {e}"
            continue
        missing = conv.missing()
        out[name] = (f"{missing} is not installed (pip install 'edge[{conv.extra}]')" if missing
                     else conv.can_execute())
    return out


# ---------------------------------------------------------------- plan

def plan_cells(models: Sequence[str], *, targets: Sequence[str], precisions: Sequence[str] = ("fp32",),
               resolutions: Sequence[int | None] = (None,), devices: dict[str, dict[str, Any]] | None = None,
               avail: dict[str, str | None] | None = None, **settings: Any) -> list[CellSpec]:
    """The cross product models x resolutions x targets x precisions x devices as :class:`CellSpec` s.

    Cells that can be rejected without work carry their ``error``: a target not installed here, a precision
    the target lacks, a device that cannot run the target, a resolution a model cannot take.

    Args:
        devices: device name -> its :meth:`edge.devices.Device.info` (``targets`` it runs); default ``local``.
        avail: :func:`available_targets` of the converting machine (computed when None).
        **settings: CellSpec fields shared by every cell (weights, input_shapes, options, calib, optimize,
            rebuild, warmup, iters, op_profile).
    """
    from edge.converters import get_converter
    from edge.resolution import is_zoo
    avail = available_targets() if avail is None else avail
    devices = devices or {"local": {"targets": avail}}
    precisions_of = {t: get_converter(t).precisions for t in targets if avail.get(t) is None}
    cells = []
    for model in models:
        zoo = is_zoo(model)
        known = None
        if not zoo and ":" not in model and not model.endswith(".pt2"):
            from edge.errors import EdgeError
            from edge.zoo import get_entry
            try:
                get_entry(model)
            except EdgeError as e:   # an unknown name: its cells fail with the did-you-mean, the others run
                known = str(e)
        for res in resolutions:
            error = known
            if not error and zoo and res is not None and native_resolution(model) is None:
                error = (f"{model} does not take a square image input, so --resolutions cannot apply; "
                         f"bench it without --resolutions")
            shown = res if res is not None else native_resolution(model) if zoo else _shape_resolution(
                settings.get("input_shapes"))
            for target in targets:
                for precision in precisions:
                    why = error or avail[target]
                    if why is None and precision not in precisions_of[target]:
                        why = (f"unknown precision for target {target!r}: {precision!r}; choose one of: "
                               f"{', '.join(precisions_of[target])}")
                    for dev, info in devices.items():
                        runs = (info.get("targets") or {})
                        cant = None if runs.get(target, "not offered") is None else (
                            f"device {dev} cannot run {target}: {runs.get(target, 'it does not offer it')}")
                        cells.append(CellSpec(model=model, resolution=shown, target=target, precision=precision,
                                              device=dev, error=why or cant, **settings))
    return cells


def _shape_resolution(shapes: Sequence[Sequence[int]] | None) -> int | None:
    """H of the first input when it is a square image [N, C, H, H], else None."""
    first = list(shapes[0]) if shapes else []
    return int(first[-1]) if len(first) == 4 and first[-1] == first[-2] else None


# ---------------------------------------------------------------- run log

class RunLog:
    """Collects finished cells, writes each to ``out/results.json`` at once, reports done/running/failed."""

    def __init__(self, total: int, header: dict[str, Any], out: str | Path | None,
                 report: Callable[[int, int, dict[str, Any]], None] | None, show: bool):
        self.total, self.header, self.report, self.show = total, header, report, show
        self.out = Path(out) if out else None
        self.cells: list[dict[str, Any]] = []
        self.running: set[str] = set()

    def started(self, cell_id: str) -> None:
        self.running.add(cell_id)

    def finished(self, cell: dict[str, Any]) -> None:
        self.running.discard(cell["id"])
        self.cells.append(cell)
        if self.out is not None:   # the run so far, valid for `edge report` if the run is killed now
            from edge.artifact import write_json_atomic
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "results.json", {**self.header, "complete": False, "cells": self.cells})
        if self.report:
            self.report(len(self.cells), self.total, cell)
        if self.show:
            failed = sum(c["status"] == STATUS_FAILED for c in self.cells)
            print(f"[{len(self.cells)}/{self.total} done, {len(self.running)} running, {failed} failed] "
                  f"{progress_text(cell)}", file=console(), flush=True)


def progress_text(cell: dict[str, Any]) -> str:
    what = f"{cell['id']}"
    if cell["status"] != STATUS_OK:
        return f"{what:<44} {cell['status'].upper()}: {cell['error']}"
    tail = f"p50 {cell['p50_ms']:.3f} ms"
    if cell.get("model_rss_mb") is not None:
        tail += f"  model +{cell['model_rss_mb']:.0f} MiB"
    if cell.get("accuracy") is not None:
        tail += f"  acc {cell['accuracy']:.4f}"
    if (cell.get("placement") or {}).get("summary"):
        tail += f"  [{cell['placement']['summary'].split(';')[0]}]"
    tail += "  (cached)" if cell["cached"] else f"  (converted in {cell['convert_s'] or 0:.1f}s)"
    return f"{what:<44} {tail}"


# ---------------------------------------------------------------- the run

def run_matrix(models: Sequence[str], *, targets: Sequence[str] | None = None,
               precisions: Sequence[str] = ("fp32",), resolutions: Sequence[int | None] = (None,),
               cache_dir: str | Path | None = None, warmup: int = 10, iters: int = 100, calib: Any = None,
               options: dict[str, Any] | None = None, rebuild: bool = False, op_profile: bool = True,
               optimize: bool = True, isolate: bool = True, weights: str | None = None,
               input_shapes: Sequence[Sequence[int]] | None = None, out: str | Path | None = None,
               ray: str | None = None, devices: Sequence[str] | None = None,
               progress: Callable[[int, int, dict[str, Any]], None] | bool | None = None) -> dict[str, Any]:
    """Convert (or reuse), verify and benchmark every cell of models x resolutions x targets x precisions.

    Args:
        models: zoo names, ``file.py:factory``, ``package.module:factory`` or ``.pt2`` files.
        targets: target names; None means every target that can run on this machine.
        precisions: precisions to try on every target (a target without one gets a failed cell).
        resolutions: square input sizes; None in the list means the model's own size.
        weights / input_shapes: as ``edge convert --weights / --input-shape``, for factory models.
        cache_dir: artifact cache (default :func:`default_cache_dir`).
        rebuild: convert again even when the cache has the artifact.
        optimize: run edge's optimize passes (``edge convert --no-optimize`` when False).
        isolate: convert each model/resolution in a child process, so a backend crash fails its cells only
            (every cell is measured in a clean child process in any case).
        op_profile: run the runtime's per-op profiler in every cell (inside the cell's process).
        out: folder where results.json grows cell by cell while the run goes.
        ray: a Ray address (``auto``, ``ray://head:10001``) to run on a cluster (:mod:`edge.fleet`).
        devices: with ``ray``, the devices to measure on (default: every device the cluster offers).
        progress: a callback ``(done, total, cell)``, or True to print one line per cell on stderr.

    Returns:
        The results dict (``schema``, ``created``, ``host``, ``settings``, ``cells``, ``conversions``,
        ``op_profile``), ready for :func:`edge.report.write_all`.
    """
    import edge
    from edge.artifact import now_iso

    if not models:
        raise UsageError("name at least one model, e.g. `edge bench vit_tiny_digits --targets onnx`")
    if warmup < 0 or iters < 1:
        raise UsageError(f"--warmup must be >= 0 and --iters >= 1 (got {warmup}, {iters})")
    for r in resolutions:
        if r is not None and (not isinstance(r, int) or r <= 0):
            raise UsageError(f"resolution {r!r} must be a positive integer like 224")
    if devices and not ray:
        raise UsageError("--devices names devices of a Ray cluster; add --ray auto (or ray://HOST:PORT)")
    avail = available_targets()
    if targets is None:
        targets = [t for t, why in avail.items() if why is None]
    for t in targets:
        if t not in avail:
            from edge.errors import UnknownNameError
            raise UnknownNameError("target", t, avail)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    settings = {"weights": str(weights) if weights else None,
                "input_shapes": [list(s) for s in input_shapes] if input_shapes else None,
                "options": options or {}, "calib": str(calib) if calib is not None else None,
                "optimize": optimize, "rebuild": rebuild, "warmup": warmup, "iters": iters, "op_profile": op_profile}
    header = {"schema": SCHEMA, "created": now_iso(), "host": host_info(),
              "settings": {"models": list(models), "targets": list(targets), "precisions": list(precisions),
                           "resolutions": list(resolutions), "warmup": warmup, "iters": iters,
                           "optimize": optimize, "weights": settings["weights"],
                           "input_shapes": settings["input_shapes"],
                           "targets_not_run": {t: why for t, why in avail.items() if why and t not in targets},
                           "cache_dir": str(cache), "calib": settings["calib"], "ray": ray,
                           "versions": {"edge": edge.__version__, **_torch_version()}},
              "op_profile": None}
    report = progress if callable(progress) else None
    if ray:
        from edge.fleet import run_on_ray
        return run_on_ray(models, targets=targets, precisions=precisions, resolutions=resolutions, avail=avail,
                          settings=settings, header=header, cache=Path(cache_dir) if cache_dir else None,
                          address=ray, devices=devices, out=out, report=report, show=progress is True)
    specs = plan_cells(models, targets=targets, precisions=precisions, resolutions=resolutions, avail=avail,
                       **settings)
    log = RunLog(len(specs), header, out, report, progress is True)
    records = _run_local(specs, cache, log, isolate)
    return finish(header, log.cells, records)


def finish(header: dict[str, Any], cells: list[dict[str, Any]],
           conversions: list[dict[str, Any]]) -> dict[str, Any]:
    """The results dict of a run: its cells, the conversions it made, the slowest cell's per-op table."""
    ok = [c for c in cells if c["status"] == STATUS_OK and c.get("op_profile")]
    prof = None
    if ok:
        c = max(ok, key=lambda c: c["p50_ms"])
        prof = {"cell": c["id"], "runtime": c["runtime"], "iters": min(c["iters"], 20), "rows": c["op_profile"],
                "error": None}
    return {**header, "complete": True, "cells": cells, "conversions": conversions, "op_profile": prof}


def conversion_summary(spec_ids: list[str], record: dict[str, Any]) -> dict[str, Any]:
    """What results.json keeps of one conversion (the cells that share it, where and how long it ran)."""
    return {"key": record.get("key"), "cells": spec_ids, "status": record["status"], "cached": record.get("cached"),
            "convert_s": record.get("convert_s"), "node": record.get("node"), "error": record.get("error")}


def _run_local(specs: list[CellSpec], cache: Path, log: RunLog, isolate: bool) -> list[dict[str, Any]]:
    """Each model/resolution group: its distinct artifacts converted (in a worker process when ``isolate``),
    then every cell measured on this machine, one at a time, each in a clean process."""
    from edge.cells import forget_prepared
    from edge.devices import LocalDevice
    from edge.store import PathStore
    forget_prepared()
    device = LocalDevice("local", cache_dir=cache)
    store = PathStore(cache)
    groups: dict[tuple, list[CellSpec]] = {}
    for s in specs:
        groups.setdefault(s.group, []).append(s)
    conversions = []
    for group in groups.values():
        distinct: dict[tuple, CellSpec] = {}
        for s in group:
            distinct.setdefault(s.artifact_spec, s)
        todo = list(distinct.values())
        records = convert_isolated(todo, store) if isolate else [convert_cell(s, store) for s in todo]
        by_spec = dict(zip(distinct, records))
        for key, rec in by_spec.items():
            conversions.append(conversion_summary([s.id for s in group if s.artifact_spec == key], rec))
        for s in group:
            log.started(s.id)
            log.finished(bench_cell(s, by_spec[s.artifact_spec], device))
    return conversions


# ---------------------------------------------------------------- the conversion worker

_MARK_START, _MARK_RECORD = "@@edge-convert-start ", "@@edge-convert-record "


def convert_isolated(specs: list[CellSpec], store: Any) -> list[dict[str, Any]]:
    """:func:`edge.cells.convert_cell` of each spec in a child process (they share one capture), so a backend that
    crashes the interpreter costs the records of the cell it was converting; the child restarts for the rest."""
    from edge.devices import exit_text
    results: dict[int, dict[str, Any]] = {}
    remaining = list(range(len(specs)))
    while remaining:
        job = {"specs": [specs[i].to_json() for i in remaining], "store": str(store.root)}
        proc = subprocess.Popen([sys.executable, "-m", "edge.matrix"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        proc.stdin.write(json.dumps(job, default=str))
        proc.stdin.close()
        current, done = None, []
        for line in proc.stdout:
            if line.startswith(_MARK_START):
                current = remaining[int(line[len(_MARK_START):])]
            elif line.startswith(_MARK_RECORD):
                results[current] = json.loads(line[len(_MARK_RECORD):])
                done.append(current)
                current = None
            else:   # what native libraries print goes to stderr (the CLI's backend log), never into the results
                sys.stderr.write(line)
        rc = proc.wait()
        remaining = [i for i in remaining if i not in done]
        if current is not None:   # it died inside this cell
            spec = specs[current]
            results[current] = {"key": None, "status": STATUS_FAILED, "cached": False, "resolution": spec.resolution,
                                "error": f"the conversion worker died during this cell ({exit_text(rc)}): the "
                                         f"backend crashed the process; the other cells ran in a new worker. "
                                         f"Reproduce it alone with `edge convert {spec.model} -t {spec.target} "
                                         f"-p {spec.precision} -o out/x` to see the backend's message"}
            remaining.remove(current)
        elif remaining:   # died before starting a cell (import error): every cell left fails the same way
            for i in remaining:
                results[i] = {"key": None, "status": STATUS_FAILED, "cached": False, "resolution": specs[i].resolution,
                              "error": f"the conversion worker exited ({exit_text(rc)}) before converting this cell"}
            break
    return [results[i] for i in range(len(specs))]


def _worker_main() -> None:
    """``python -m edge.matrix``: convert the specs of the JSON job on stdin, one marked line per record."""
    from edge.store import PathStore
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # anything else written to stdout (Python or native) goes to stderr
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())
    store = PathStore(job["store"])
    for i, d in enumerate(job["specs"]):
        out.write(f"{_MARK_START}{i}\n")
        out.flush()
        out.write(_MARK_RECORD + json.dumps(convert_cell(CellSpec.from_json(d), store), default=str) + "\n")
        out.flush()


def _torch_version() -> dict[str, str]:
    import torch
    return {"torch": torch.__version__}


# ---------------------------------------------------------------- CLI helpers

def split_list(text: str | None) -> list[str] | None:
    """``"onnx,openvino"`` -> ``["onnx", "openvino"]``; None stays None."""
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_resolutions(text: str | None) -> list[int | None]:
    """``"224,512"`` -> ``[224, 512]``; None -> ``[None]`` (each model's native size)."""
    if not text:
        return [None]
    out: list[int | None] = []
    for part in split_list(text) or []:
        if part in ("native", "default"):
            out.append(None)
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise UsageError(f"--resolutions {part!r} is not an integer; write it like 224,512") from None
        if out[-1] <= 0:
            raise UsageError(f"--resolutions {part!r} must be positive")
    return out


def are_artifacts(paths: Sequence[str]) -> bool:
    """True if every path is an artifact folder, False if none is; a mix is a UsageError."""
    kinds = [(Path(p) / "manifest.json").is_file() for p in paths]
    if all(kinds):
        return True
    if not any(kinds):
        for p in paths:   # a folder or path that is not a model source: say what is wrong with it as an artifact
            if ":" not in p and not p.endswith(".pt2") and (Path(p).is_dir() or "/" in p):
                from edge.artifact import Artifact
                Artifact.open(p)
            elif ":" not in p and not p.endswith(".pt2"):
                from edge.zoo import get_entry
                get_entry(p)   # unknown model names are bad input, before any work starts
        return False
    raise UsageError("`edge bench` takes either artifact folders or model names, not both: "
                     + ", ".join(f"{p} ({'artifact' if k else 'model'})" for p, k in zip(paths, kinds)))


if __name__ == "__main__":
    _worker_main()
