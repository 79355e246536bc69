"""``python -m edge.probe``: measure one artifact in a clean process that imports only its runtime.

Run by :class:`edge.devices.LocalDevice` for every bench cell. Reads a JSON job on stdin (``artifact``,
``warmup``, ``iters``, ``native_profile``) and answers one marked JSON line on stdout. The process imports
edge's artifact reader, numpy and the runtime (not torch, unless the runtime itself needs it, and not
edge's converters), so its memory is what a deployment of the model costs:

- ``base_rss_mb``: the process with the runtime imported and no model; ``peak_rss_mb``: its high-water mark
  while the model was loaded and run; ``model_rss_mb``: the difference, what the model adds.
- ``cold_load_ms``: the first load with no runtime cache (OpenVINO: an empty compiled-model cache);
  ``warm_load_ms``: loading again with the cache the first load wrote (OpenVINO: a cache hit; ONNX Runtime
  and ExecuTorch have no compiled-model cache, so it is a second load in a warm process); ``first_inference_ms``
  and the steady-state statistics after ``warmup`` calls.
- ``placement`` (:mod:`edge.placement`) and, with ``native_profile``, the runtime's per-op table, so a runtime
  that crashes in its profiler takes this process down, not the run.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from typing import Any

HEAVY = ("torch", "executorch", "openvino", "onnxruntime", "coremltools", "edge.converters", "edge.api")


def _inputs(manifest: Any) -> list[Any]:
    import numpy as np
    rng = np.random.default_rng(0)
    return [rng.standard_normal(t.concrete_shape(1)).astype(t.dtype) for t in manifest.inputs]


def _cache_options(runtime: str, cache_dir: str) -> tuple[dict[str, Any], str]:
    """Options that make the first load cold and the second warm, and what "warm" means for this runtime."""
    if runtime == "openvino":
        return {"cache_dir": cache_dir}, "compiled-model cache: first load empty (miss), second load a hit"
    return {}, f"{runtime} keeps no compiled-model cache: warm is a second load in the same process"


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """The cell fields of one artifact (see the module docstring)."""
    from edge.artifact import Artifact
    from edge.profile import reset_peak_rss, rss_mb, summarize, time_session
    from edge.runtimes import RUNTIMES
    art = Artifact.open(job["artifact"])
    cls = RUNTIMES.get(art.manifest.runtime)
    for mod in cls.requires:   # imported before the baseline: the baseline is "runtime loaded, no model"
        importlib.import_module(mod)
    inputs = _inputs(art.manifest)
    warmup, iters = int(job.get("warmup", 10)), int(job.get("iters", 100))
    with tempfile.TemporaryDirectory(prefix="edge-probe-") as tmp:
        options, cache_note = _cache_options(cls.name, tmp)
        reset_peak_rss()
        base = rss_mb()[0]
        session = cls(art, **options)
        loaded = rss_mb()[0]
        cold = session.load_ms
        xs = session.prepare(*inputs)
        first, samples = time_session(session, xs, warmup=warmup, iters=iters)
        now, peak = rss_mb()
        details = dict(session.load_details)
        session.close()
        del session
        warm = cls(art, **options)
        fields = {"warm_load_ms": warm.load_ms, "load_cache": cache_note,
                  "warm_cache": warm.load_details.get("cache")}
        from edge.placement import placement
        fields["placement"] = placement(warm, xs)
        fields["op_profile"] = warm.native_profile(xs, iters=min(iters, 20)) if job.get("native_profile") else None
        warm.close()
    stats = summarize(samples)
    fields.update(stats, runtime=cls.name, load_ms=cold, cold_load_ms=cold, first_inference_ms=first,
                  warmup=warmup, iters=iters, samples_ms=samples, timer=cls.timer,
                  throughput_per_s=1e3 / stats["mean_ms"], peak_rss_mb=peak, base_rss_mb=base,
                  model_rss_mb=peak - base, rss_growth_mb=now - loaded, load_details=details,
                  process_imports=sorted(m for m in HEAVY if m in sys.modules))
    return fields


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # whatever the runtime prints goes to stderr, never into the answer
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())
    try:
        answer: dict[str, Any] = {"fields": measure(job)}
    except Exception as e:  # reported as the cell's error; a native crash ends the process instead
        from edge.cells import error_text
        answer = {"error": error_text(e)}
    from edge.artifact import _json_default
    out.write("@@edge-probe " + json.dumps(answer, default=_json_default) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
