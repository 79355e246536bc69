"""Benchmark a matrix of models x resolutions x targets x precisions in one run.

Each (model, resolution) is resolved and captured once (``edge.api.prepare``) and shared by every
target of the run. Artifacts live in a content-addressed cache keyed by the model, its weights, the
target, precision, input shape, options and the versions of edge, torch, the backend and the
converter's source, so a second run converts nothing it already has. Every cell is verified by
``edge.convert`` and measured with ``edge.benchmark`` (the same :class:`~edge.profile.LatencyReport`
statistics for every cell). A failed cell records its error and the run goes on.

Example:
    >>> from edge.matrix import run_matrix
    >>> results = run_matrix(["vit_tiny_digits"], targets=["onnx"], precisions=["fp32", "int8"])
    >>> [c["p50_ms"] for c in results["cells"]]
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from edge.errors import EdgeError, UsageError
from edge.progress import console

SCHEMA = "edge.bench/1"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"   # converted and spec-checked, but this machine cannot run it (CoreML off macOS)

# One row per cell, in this order, for results.csv (results.json holds these plus samples_ms).
CELL_FIELDS = [
    "id", "model", "resolution", "target", "precision", "runtime", "status", "error", "cached", "artifact",
    "cache_key", "convert_s", "size_mb", "p50_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p90_ms", "p95_ms",
    "p99_ms", "throughput_per_s", "load_ms", "first_inference_ms", "peak_rss_mb", "rss_growth_mb", "warmup",
    "iters", "timer", "parity_passed", "cosine", "max_abs", "accuracy", "reference_accuracy", "device",
    "user_agent",
]


class ResolutionError(UsageError):
    """The model cannot be built at the requested input resolution."""


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


# ---------------------------------------------------------------- models at a resolution

def _weights_digest(entry: Any, weights: str | None) -> str:
    from edge.sources import file_sha256
    from edge.zoo import WEIGHTS_DIR
    if weights:
        return file_sha256(Path(weights))
    if entry is not None and entry.weights:
        path = WEIGHTS_DIR / entry.weights
        return file_sha256(path) if path.is_file() else f"missing:{entry.weights}"
    return "random-init:seed0"


def native_resolution(model: str) -> int | None:
    """The zoo model's default square input size, or None (not a zoo model, or not an image input)."""
    from edge.zoo import get_entry, list_models
    if model not in list_models():
        return None
    shape = get_entry(model).input_shapes[0]
    return int(shape[-1]) if len(shape) == 4 and shape[-1] == shape[-2] else None


def _resample_grid(t: Any, new_shape: tuple[int, ...]) -> Any:
    """Resample a [1, prefix + g*g, D] position table to [1, prefix + G*G, D] (bicubic, as timm does).

    Returns None when the shapes are not of that form, so the caller can report why it cannot adapt.
    """
    import math

    import torch.nn.functional as F
    if t.ndim != 3 or len(new_shape) != 3 or t.shape[0] != 1 or t.shape[2] != new_shape[2]:
        return None
    for prefix in (0, 1, 2):
        g, G = math.isqrt(t.shape[1] - prefix), math.isqrt(new_shape[1] - prefix)
        if g * g == t.shape[1] - prefix and G * G == new_shape[1] - prefix and g > 0:
            grid = t[:, prefix:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(G, G), mode="bicubic", align_corners=False)
            return __import__("torch").cat([t[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, G * G, -1)], dim=1)
    return None


def model_at(model: str, resolution: int | None, *, weights: str | None = None):
    """A :class:`edge.sources.ModelSpec` of ``model`` taking ``resolution`` x ``resolution`` inputs.

    At the zoo model's native size this is ``edge.sources.resolve``. At another size the factory is
    called with ``img_size=resolution``; bundled weights are loaded and any position table whose
    patch grid changed is resampled bicubically (recorded in ``source["resampled"]``); the test set
    is resized to the new size so accuracy is still measured. A model whose factory cannot change
    its size raises :class:`ResolutionError` naming why.
    """
    import torch

    from edge.sources import ModelSpec, example_from_shapes, resolve
    native = native_resolution(model)
    torch.manual_seed(0)   # random-init zoo models (vit_tiny) get the same weights every run
    if resolution is None or resolution == native:
        return resolve(model, weights=weights)
    if native is None:
        from edge.zoo import list_models
        if model in list_models():
            raise ResolutionError(f"{model} does not take a square image input, so --resolutions cannot apply; "
                                  f"bench it without --resolutions")
        return resolve(model, weights=weights, input_shapes=[(1, 3, resolution, resolution)])
    from edge.zoo import create_model, get_entry
    entry = get_entry(model)
    try:
        module, _ = create_model(model, pretrained=False, img_size=resolution)
    except TypeError as e:
        raise ResolutionError(f"{model} cannot change its input resolution: its factory does not take "
                              f"img_size ({e}); bench it at its native {native}px") from None
    source: dict[str, Any] = {"kind": "zoo", "name": model, "weights": entry.weights, "img_size": resolution}
    if entry.weights or weights:
        if weights:
            from edge.sources import load_state_dict
            sd = load_state_dict(weights)
            source["weights"] = str(weights)
        else:
            sd = create_model(model)[0].state_dict()
        target = module.state_dict()
        resampled = []
        for key, value in list(sd.items()):
            if key in target and tuple(target[key].shape) != tuple(value.shape):
                new = _resample_grid(value, tuple(target[key].shape))
                if new is None:
                    raise ResolutionError(
                        f"{model}'s weights do not fit {resolution}px: {key} has shape {list(value.shape)}, the "
                        f"{resolution}px model needs {list(target[key].shape)} and it is not a position table "
                        f"that can be resampled; bench it at its native {native}px")
                sd[key] = new
                resampled.append(key)
        module.load_state_dict(sd)
        source["resampled"] = resampled
    C = entry.input_shapes[0][1]
    shape = (entry.input_shapes[0][0], C, resolution, resolution)
    test_set = None
    if entry.test_set is not None:
        def test_set(_orig=entry.test_set, _r=resolution):
            import numpy as np
            import torch.nn.functional as F
            x, y = _orig()
            x = F.interpolate(torch.from_numpy(np.asarray(x)), size=(_r, _r), mode="bilinear", align_corners=False)
            return x.numpy(), y
    pre = dict(entry.preprocessing)
    if pre:
        pre["size"] = [resolution, resolution]
    entry = dataclasses.replace(entry, input_shapes=[shape], test_set=test_set, preprocessing=pre)
    example = example_from_shapes([shape])
    if test_set is not None:
        example = (torch.as_tensor(test_set()[0][: shape[0]]),)
    return ModelSpec(module=module.eval(), example_inputs=example, source=source, info=entry.info(), entry=entry)


# ---------------------------------------------------------------- the cache

def _code_digest(obj: Any) -> str:
    try:
        src = inspect.getsourcefile(type(obj))
        return hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16] if src else "?"
    except (TypeError, OSError):
        return "?"


def cache_key(*, model: str, weights_digest: str, target: str, precision: str, input_shapes: list,
              options: dict[str, Any], versions: dict[str, str], code: str, calib: Any = None,
              optimize: bool = True) -> tuple[str, dict]:
    """(sha256 hex, the record hashed): everything that changes the artifact's bytes or its parity."""
    record = {"model": model, "weights": weights_digest, "target": target, "precision": precision,
              "input_shapes": [list(s) for s in input_shapes], "options": options, "versions": versions,
              "converter_code": code, "calib": str(calib) if calib is not None else None, "optimize": optimize}
    blob = json.dumps(record, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), record


def _cached_artifact(path: Path):
    """The verified artifact at ``path`` if it is complete and unchanged, else None."""
    from edge.artifact import STATUS_CHECKED_SPEC, STATUS_VERIFIED, Artifact
    if not (path / "manifest.json").is_file():
        return None
    try:
        art = Artifact.open(path)
    except EdgeError:
        return None
    return art if art.manifest.status in (STATUS_VERIFIED, STATUS_CHECKED_SPEC) else None


def _dir_size_mb(art: Any) -> float:
    total = 0
    for rel in art.manifest.files:
        p = art.file(rel)
        total += p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 2**20


# ---------------------------------------------------------------- the run

def _error_text(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg if isinstance(e, EdgeError) else f"{type(e).__name__}: {msg.splitlines()[0]}"


def _parity_fields(parity: dict[str, Any]) -> dict[str, Any]:
    outs = parity.get("outputs") or {}
    first = next(iter(outs.values()), {})
    return {"parity_passed": parity.get("passed"), "cosine": first.get("cosine"), "max_abs": first.get("max_abs"),
            "accuracy": first.get("accuracy"), "reference_accuracy": first.get("reference_accuracy")}


def _print_progress(done: int, total: int, cell: dict[str, Any]) -> None:
    what = f"{cell['model']}@{cell['resolution']} {cell['target']}/{cell['precision']}"
    if cell["status"] == STATUS_OK:
        tail = f"p50 {cell['p50_ms']:.3f} ms  peak RSS {cell['peak_rss_mb']:.0f} MiB"
        if cell.get("accuracy") is not None:
            tail += f"  acc {cell['accuracy']:.4f}"
        tail += "  (cached)" if cell["cached"] else f"  (converted in {cell['convert_s']:.1f}s)"
    else:
        tail = f"{cell['status'].upper()}: {cell['error']}"
    print(f"[{done}/{total}] {what:<44} {tail}", file=console(), flush=True)


def run_matrix(models: Sequence[str], *, targets: Sequence[str] | None = None,
               precisions: Sequence[str] = ("fp32",), resolutions: Sequence[int | None] = (None,),
               cache_dir: str | Path | None = None, warmup: int = 10, iters: int = 100, calib: Any = None,
               options: dict[str, Any] | None = None, rebuild: bool = False, op_profile: bool = True,
               optimize: bool = True, isolate: bool = True,
               progress: Callable[[int, int, dict[str, Any]], None] | bool | None = None) -> dict[str, Any]:
    """Convert (or reuse), verify and benchmark every cell of models x resolutions x targets x precisions.

    Args:
        models: zoo names (or ``file.py:factory``; those need ``resolutions``).
        targets: target names; None means every target that can run on this machine.
        precisions: precisions to try on every target (a target without one gets a failed cell).
        resolutions: square input sizes; None in the list means the model's native size.
        cache_dir: artifact cache (default :func:`default_cache_dir`).
        rebuild: convert again even when the cache has the artifact.
        optimize: run edge's optimize passes (``edge convert --no-optimize`` when False).
        isolate: run each model/resolution in a child process, so a backend crash fails one cell only.
        op_profile: run the runtime's per-op profiler on the slowest cell.
        progress: a callback ``(done, total, cell)``, or True to print one line per cell on stderr.

    Returns:
        The results dict (``schema``, ``created``, ``host``, ``settings``, ``cells``, ``op_profile``),
        ready for :func:`edge.report.write_all`.
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
    avail = available_targets()
    if targets is None:
        targets = [t for t, why in avail.items() if why is None]
    for t in targets:
        if t not in avail:
            from edge.errors import UnknownNameError
            raise UnknownNameError("target", t, avail)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    report = progress if callable(progress) else (_print_progress if progress else None)
    host = host_info()
    total = len(models) * len(resolutions) * len(targets) * len(precisions)
    cells: list[dict[str, Any]] = []

    def emit(cell: dict[str, Any]) -> None:
        cells.append(cell)
        if report:
            report(len(cells), total, cell)

    run_opts = {"cache": cache, "warmup": warmup, "iters": iters, "calib": calib, "options": options or {},
                "rebuild": rebuild, "optimize": optimize}
    pairs = [(t, p) for t in targets for p in precisions]
    for model in models:
        for res in resolutions:
            if isolate:
                _run_group_isolated(model, res, pairs, run_opts, emit)
            else:
                _run_group(model, res, pairs, avail, host, emit, **run_opts)
    results = {"schema": SCHEMA, "created": now_iso(), "host": host,
               "settings": {"models": list(models), "targets": list(targets), "precisions": list(precisions),
                            "resolutions": [r for r in resolutions], "warmup": warmup, "iters": iters,
                            "optimize": optimize,
                            "targets_not_run": {t: why for t, why in avail.items() if why and t not in targets},
                            "cache_dir": str(cache), "calib": str(calib) if calib is not None else None,
                            "versions": {"edge": edge.__version__, **_torch_version()}},
               "cells": cells, "op_profile": None}
    if op_profile:
        results["op_profile"] = slowest_op_profile(cells)
    return results


def _run_group(model: str, res: int | None, pairs: list[tuple[str, str]], avail: dict[str, str | None],
               host: dict[str, Any], emit: Callable[[dict[str, Any]], None], *, cache: Path, warmup: int, iters: int,
               calib: Any, options: dict[str, Any], rebuild: bool, optimize: bool,
               started: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Every (target, precision) cell of one model at one resolution, captured once, in this process."""
    import edge
    from edge.api import Prepared
    from edge.artifact import STATUS_CHECKED_SPEC
    from edge.converters import get_converter
    base = {"model": model, "resolution": res if res is not None else native_resolution(model)}
    prep, spec_error = None, None
    try:
        spec = model_at(model, res)
        prep = Prepared(spec, False, optimize, (), {}, {})
        if spec.example_inputs[0].ndim == 4:
            base["resolution"] = int(spec.example_inputs[0].shape[-1])
    except Exception as e:
        spec_error = _error_text(e)
    for target, precision in pairs:
        cell = {**{k: None for k in CELL_FIELDS}, **base, "target": target, "precision": precision,
                "cached": False, "device": host["cpu"]}
        cell["id"] = f"{model}@{cell['resolution']}/{target}/{precision}"
        if spec_error or avail[target]:
            cell.update(status=STATUS_FAILED, error=spec_error or avail[target])
            emit(cell)
            continue
        if started:
            started(cell)
        try:
            _run_cell(cell, prep, target, precision, get_converter, cache, warmup=warmup, iters=iters, calib=calib,
                      options=options, rebuild=rebuild, checked_spec=STATUS_CHECKED_SPEC, benchmark=edge.benchmark)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # recorded in the table; the other cells still run
            cell.update(status=STATUS_FAILED, error=_error_text(e))
            if not isinstance(e, EdgeError):
                cell["traceback"] = traceback.format_exc(limit=6)
        emit(cell)


_MARK_START, _MARK_CELL = "@@edge-matrix-start ", "@@edge-matrix-cell "


def _exit_text(rc: int) -> str:
    import signal
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _run_group_isolated(model: str, res: int | None, pairs: list[tuple[str, str]], run_opts: dict[str, Any],
                        emit: Callable[[dict[str, Any]], None]) -> None:
    """:func:`_run_group` in a child process, so a backend that crashes the interpreter (a native abort in a
    converter or runtime) costs one failed cell, not the run. The child is restarted for the cells left."""
    import subprocess
    remaining = list(pairs)
    while remaining:
        job = {"model": model, "res": res, "pairs": remaining,
               **{k: (str(v) if k == "cache" else v) for k, v in run_opts.items()}}
        proc = subprocess.Popen([sys.executable, "-m", "edge.matrix"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        proc.stdin.write(json.dumps(job, default=str))
        proc.stdin.close()
        current = None
        for line in proc.stdout:
            if line.startswith(_MARK_START):
                current = json.loads(line[len(_MARK_START):])
            elif line.startswith(_MARK_CELL):
                cell = json.loads(line[len(_MARK_CELL):])
                remaining.remove((cell["target"], cell["precision"]))
                current = None
                emit(cell)
            else:   # what native libraries print goes to stderr (the CLI's backend log), never into the results
                sys.stderr.write(line)
        rc = proc.wait()
        if current is not None:   # it died inside this cell
            current.update(status=STATUS_FAILED, error=f"the benchmark worker died during this cell "
                           f"({_exit_text(rc)}): the backend crashed the process; the other cells ran in a new "
                           f"worker. Reproduce it alone with `edge convert {model} -t {current['target']} "
                           f"-p {current['precision']} -o out/x` to see the backend's message")
            remaining.remove((current["target"], current["precision"]))
            emit(current)
        elif remaining:   # died before starting a cell (import error): every cell left fails the same way
            for target, precision in remaining:
                cell = {**{k: None for k in CELL_FIELDS}, "model": model, "resolution": res, "target": target,
                        "precision": precision, "cached": False, "status": STATUS_FAILED,
                        "id": f"{model}@{res}/{target}/{precision}",
                        "error": f"the benchmark worker exited ({_exit_text(rc)}) before running this cell"}
                emit(cell)
            return


def _worker_main() -> None:
    """``python -m edge.matrix``: run one group from the JSON job on stdin, one marked line per cell on stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # anything else written to stdout (Python or native) goes to stderr
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())

    def line(mark: str, cell: dict[str, Any]) -> None:
        out.write(mark + json.dumps(cell, default=str) + "\n")
        out.flush()

    _run_group(job["model"], job["res"], [tuple(p) for p in job["pairs"]], available_targets(), host_info(),
               lambda c: line(_MARK_CELL, c), cache=Path(job["cache"]), warmup=job["warmup"], iters=job["iters"],
               calib=job["calib"], options=job["options"], rebuild=job["rebuild"], optimize=job["optimize"],
               started=lambda c: line(_MARK_START, c))


def _torch_version() -> dict[str, str]:
    import torch
    return {"torch": torch.__version__}


def _run_cell(cell: dict[str, Any], prep: Any, target: str, precision: str, get_converter: Callable, cache: Path,
              *, warmup: int, iters: int, calib: Any, options: dict[str, Any], rebuild: bool, checked_spec: str,
              benchmark: Callable) -> None:
    import platform as _platform

    import torch

    import edge
    conv = get_converter(target)
    conv.check_precision(precision)
    opts = conv.resolve_options(options)
    spec = prep.spec
    versions = {"edge": edge.__version__, "torch": torch.__version__, "python": _platform.python_version(),
                **conv.backend_version()}
    key, record = cache_key(model=spec.name, weights_digest=_weights_digest(spec.entry, spec.source.get("weights")
                                                                            if spec.source.get("kind") != "zoo"
                                                                            else None),
                            target=target, precision=precision,
                            input_shapes=[tuple(t.shape) for t in spec.example_inputs], options=opts,
                            versions=versions, code=_code_digest(conv),
                            calib=calib if precision in conv.needs_calibration else None,
                            optimize=prep.optimize)
    if spec.source.get("resampled") is not None:
        key = hashlib.sha256((key + json.dumps(spec.source, sort_keys=True, default=str)).encode()).hexdigest()
    path = cache / "artifacts" / key[:24]
    cell["cache_key"] = key[:24]
    art = None if rebuild else _cached_artifact(path)
    cell["cached"] = art is not None
    if art is None:
        t0 = time.perf_counter()
        art = edge.convert(None, target=target, precision=precision, out=path, prepared=prep, calib=calib,
                           options=opts)
        cell["convert_s"] = time.perf_counter() - t0
        (cache / "artifacts" / f"{key[:24]}.key.json").write_text(json.dumps(record, indent=1, default=str))
    m = art.manifest
    cell.update(artifact=str(path), runtime=m.runtime, size_mb=_dir_size_mb(art), **_parity_fields(m.parity))
    if m.status == checked_spec:
        cell.update(status=STATUS_SKIPPED, error=f"converted, not run: {m.parity.get('skipped', 'cannot run here')}")
        return
    rep = benchmark(path, warmup=warmup, iters=iters, native_profile=False)
    d = rep.to_json(samples=True)
    for k in ("p50_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p90_ms", "p95_ms", "p99_ms", "throughput_per_s",
              "load_ms", "first_inference_ms", "peak_rss_mb", "rss_growth_mb", "warmup", "iters", "timer",
              "samples_ms"):
        cell[k] = d[k]
    cell["status"] = STATUS_OK


def slowest_op_profile(cells: list[dict[str, Any]], iters: int = 20) -> dict[str, Any] | None:
    """The runtime's own per-op table for the slowest measured cell (None if no cell ran)."""
    ok = [c for c in cells if c["status"] == STATUS_OK and c.get("artifact") and c.get("p50_ms") is not None]
    if not ok:
        return None
    cell = max(ok, key=lambda c: c["p50_ms"])
    import edge
    from edge.api import default_inputs
    try:
        with edge.load(cell["artifact"]) as session:
            rows = session.native_profile(session.prepare(*default_inputs(session.artifact)), iters=iters)
    except Exception as e:   # the report says why the breakdown is missing
        return {"cell": cell["id"], "rows": None, "error": _error_text(e)}
    return {"cell": cell["id"], "runtime": cell["runtime"], "iters": iters, "rows": rows,
            "error": None if rows else f"the {cell['runtime']} runtime has no per-op profiler"}


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
