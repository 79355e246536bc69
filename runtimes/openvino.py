"""OpenVINO CPU session: explicit inference precision, performance hint, a model cache, per-layer counters.

The CPU plugin's default inference precision on CPUs with BF16 (Zen 4/5, Sapphire Rapids) is bf16:
an fp32 IR then differs from PyTorch by ~1e-2. The session therefore always sets
``INFERENCE_PRECISION_HINT`` (``f32`` unless told otherwise) and records it in ``load_details``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import UsageError
from edge.runtimes.base import Session, op_table

HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
PRECISION_HINTS = ("f32", "bf16", "f16")
SMALL_INPUT_BYTES = 1 << 20   # inputs up to this size are copied into the request's buffers (_run)


def default_cache_dir() -> Path:
    base = os.environ.get("EDGE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge")
    return Path(base) / "openvino"


def _precision_of(exec_type: str) -> str | None:
    """``brgemm_avx512_I8`` -> ``i8``; ``jit_avx512_FP32`` -> ``f32`` (the CPU plugin's kernel suffix)."""
    tail = exec_type.rsplit("_", 1)[-1].upper()
    return {"I8": "i8", "U8": "u8", "FP32": "f32", "F32": "f32", "BF16": "bf16", "FP16": "f16", "F16": "f16",
            "I32": "i32", "I64": "i64"}.get(tail)


class OpenVinoSession(Session):
    """Options:

    - ``hint``: ``latency`` (default), ``throughput``, ``cumulative_throughput`` (PERFORMANCE_HINT).
    - ``precision_hint``: ``f32`` (default), ``bf16``, ``f16`` (INFERENCE_PRECISION_HINT).
    - ``streams`` / ``threads``: NUM_STREAMS / INFERENCE_NUM_THREADS (default: the hint decides).
    - ``device``: OpenVINO device name (default ``CPU``).
    - ``cache_dir``: compiled-model cache (default ``~/.cache/edge/openvino``; ``False`` disables it).
    - ``snippets``: ``0`` turns off the CPU plugin's snippets (SNIPPETS_MODE=DISABLE: element-wise chains are
      not JIT-compiled into fused subgraphs). Measured on a VisionGRU-Ti IR at 224 px (thousands of element-wise
      ops; the scan's steps split with one Split per chunk level): RSS after compiling 470 -> 323 MiB.
    """

    name = "openvino"
    OPTIONS = {"hint": str, "precision_hint": str, "streams": str, "threads": int, "device": str, "cache_dir": object,
               "snippets": int}
    extra = "openvino"
    requires = ("openvino",)
    NUMERIC_OPTIONS = {"precision_hint": "f32"}

    @classmethod
    def numeric_variants(cls) -> list[dict[str, Any]]:
        """The bf16 hint where the CPU has bf16 kernels (the CPU plugin's own default there)."""
        import openvino as ov
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return [{"precision_hint": "bf16"}] if "BF16" in caps else []

    @classmethod
    def judged_precision(cls, precision: str, options: dict[str, Any]) -> str:
        """An fp32 / fp16-weight IR under the bf16 or f16 hint computes in that precision."""
        hint = str(options.get("precision_hint") or "f32").lower()
        return {"bf16": "bf16", "f16": "fp16"}.get(hint, precision) if precision in ("fp32", "fp16") else precision

    def _config(self, perf_count: bool = False) -> dict[str, str]:
        hint = str(self.options.get("hint") or "latency").lower()
        if hint not in HINTS:
            raise UsageError(f"openvino hint {hint!r} is not one of {', '.join(HINTS)}")
        prec = str(self.options.get("precision_hint") or "f32").lower()
        if prec not in PRECISION_HINTS:
            raise UsageError(f"openvino precision_hint {prec!r} is not one of {', '.join(PRECISION_HINTS)}")
        cfg = {"PERFORMANCE_HINT": HINTS[hint], "INFERENCE_PRECISION_HINT": prec}
        if self.options.get("streams") is not None:
            cfg["NUM_STREAMS"] = str(self.options["streams"])
        if self.options.get("threads") is not None:
            cfg["INFERENCE_NUM_THREADS"] = str(int(self.options["threads"]))
        if self.options.get("snippets") not in (None, 0, 1):
            raise UsageError(f"openvino snippets {self.options['snippets']!r} is not 0 (off) or 1 (on, the default)")
        if self.options.get("snippets") == 0:
            cfg["SNIPPETS_MODE"] = "DISABLE"
        if perf_count:
            cfg["PERF_COUNT"] = "YES"
        return cfg

    def _load(self) -> None:
        import openvino as ov
        self._device = str(self.options.get("device") or "CPU")
        self.core = ov.Core()
        cache = self.options.get("cache_dir", None)
        cache_dir = None if cache is False else Path(cache) if cache else default_cache_dir()
        cfg = self._config()
        before = 0
        if cache_dir is not None:
            cache_dir = cache_dir / self._cache_folder(cfg)
            cache_dir.mkdir(parents=True, exist_ok=True)
            before = sum(1 for _ in cache_dir.iterdir())
        if cache_dir is not None:
            cfg["CACHE_DIR"] = str(cache_dir)
        t0 = time.perf_counter()
        self.compiled = self.core.compile_model(str(self.artifact.main_path), self._device, cfg)
        compile_ms = (time.perf_counter() - t0) * 1e3
        self.request = self.compiled.create_infer_request()
        self._n_out = len(self.compiled.outputs)
        # static inputs of at most SMALL_INPUT_BYTES in all: _run copies them into the request's own
        # buffers (prepare() has checked their shapes and dtypes); otherwise it binds the caller's arrays
        self._in_views = []
        if all(not p.get_partial_shape().is_dynamic for p in self.compiled.inputs):
            views = [self.request.get_input_tensor(i).data for i in range(len(self.compiled.inputs))]
            if sum(v.nbytes for v in views) <= SMALL_INPUT_BYTES:
                self._in_views = views
        props = {}
        for key in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                    "OPTIMAL_NUMBER_OF_INFER_REQUESTS"):
            try:
                value = self.compiled.get_property(key)
                props[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
            except Exception:  # not every device reports every property
                pass
        created = cache_dir is not None and sum(1 for _ in cache_dir.iterdir()) > before
        self.load_details = {
            "device": self._device, "config": {k: v for k, v in cfg.items() if k != "CACHE_DIR"},
            "compiled_properties": props,
            "inference_precision": props.get("INFERENCE_PRECISION_HINT", cfg["INFERENCE_PRECISION_HINT"]),
            "cache_dir": str(cache_dir) if cache_dir is not None else None,
            "cache": None if cache_dir is None else ("miss (compiled and cached)" if created else "hit"),
            "compile_ms": compile_ms,
        }

    def _cache_folder(self, cfg: dict[str, str]) -> str:
        """A cache subfolder per compile config, device and OpenVINO build.

        OpenVINO 2026.4's cache key leaves out INFERENCE_PRECISION_HINT: a model compiled under ``f32`` and
        loaded from the cache under ``bf16`` returned NaN (vit_tiny_digits, AMX CPU; tests/test_openvino.py::
        test_model_cache_keeps_precision_hints_apart). Each config therefore gets its own folder, and so does
        each CPU model (a blob packs weights for the ISA it was compiled on) and OpenVINO version.
        """
        import openvino as ov
        try:
            cpu = str(self.core.get_property(self._device, "FULL_DEVICE_NAME"))
        except Exception:  # not every device reports it
            cpu = self._device
        key = json.dumps({"config": cfg, "device": self._device, "name": cpu, "openvino": ov.get_version()},
                         sort_keys=True)
        return f"{cfg['INFERENCE_PRECISION_HINT']}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        # start_async + wait, not infer(): the synchronous call runs the graph on the calling thread,
        # and on this 2-core machine under load its median was 4.0 ms against 0.5-0.8 ms for the same
        # request through the plugin's own stream thread (which is also what benchmark_app measures).
        # Small static inputs are copied into the request's own buffers: binding new shared tensors each
        # call cost ~0.1 ms (vit_tiny_digits: 0.60 -> 0.50 ms per call, benchmark_app 0.48 ms); large ones
        # (a copy costs more than the binding) and dynamic shapes are bound as they are. The mode is fixed
        # at load, so a buffer is never copied into after the request was bound to a caller's array.
        req = self.request
        if self._in_views:
            for v, a in zip(self._in_views, arrays):
                v[...] = a
            req.start_async()
        else:
            req.start_async(arrays, share_inputs=True)
        req.wait()
        return [req.get_output_tensor(i).data.copy() for i in range(self._n_out)]

    def native_profile(self, inputs: Sequence[np.ndarray], iters: int = 20,
                       top: int | None = 25) -> list[dict[str, Any]] | None:
        """Per-layer CPU counters (PERF_COUNT on a separate compiled model), most expensive first.

        ``type`` is the layer type, ``exec_type`` the kernel the plugin picked and ``precision`` the
        kernel's precision (``i8`` where int8 kernels ran).
        """
        compiled = self.core.compile_model(str(self.artifact.main_path), self._device, self._config(perf_count=True))
        req = compiled.create_infer_request()
        def once() -> None:
            req.start_async(list(inputs), share_inputs=True)
            req.wait()

        for _ in range(3):   # warm up outside the counters
            once()
        rows: dict[tuple[str, str], list[float]] = defaultdict(list)
        extra: dict[tuple[str, str], dict[str, Any]] = {}
        for _ in range(max(iters, 1)):
            once()
            for info in req.get_profiling_info():
                if str(info.status).endswith("NOT_RUN"):
                    continue
                key = (info.node_name, info.node_type)
                rows[key].append(info.real_time.total_seconds() * 1e3)
                extra[key] = {"exec_type": info.exec_type, "precision": _precision_of(info.exec_type)}
        del req, compiled
        return op_table(rows, extra, top)

    def _close(self) -> None:
        self.request = None
        self.compiled = None
