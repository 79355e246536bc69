"""ONNX Runtime session; native profile from ORT's own profiler (per-node kernel time)."""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from edge.runtimes.base import Session, op_table


class OnnxRuntimeSession(Session):
    """Options: ``providers`` (default CPU), ``threads`` (intra-op threads, default ORT's choice),
    ``mem_arena`` / ``mem_pattern`` (0 turns off ORT's CPU memory arena / pre-planned memory pattern:
    less peak memory, see benchmarks/visiongru_vs_deit.py), ``prepacking`` (0: ORT keeps each weight once
    instead of beside its pre-packed GEMM copy: less memory after load, GEMMs pack per call)."""

    name = "onnxruntime"
    OPTIONS = {"threads": int, "providers": list, "mem_arena": int, "mem_pattern": int, "prepacking": int}
    extra = "onnx"
    requires = ("onnxruntime",)

    def _session_options(self, profile_prefix: str | None = None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.options.get("threads"):
            so.intra_op_num_threads = int(self.options["threads"])
        if self.options.get("mem_arena") == 0:
            so.enable_cpu_mem_arena = False
        if self.options.get("mem_pattern") == 0:
            so.enable_mem_pattern = False
        if self.options.get("prepacking") == 0:
            so.add_session_config_entry("session.disable_prepacking", "1")
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return so

    def _providers(self) -> list[str]:
        # the cuda target's onnxruntime route records its providers in the manifest's options
        return list(self.options.get("providers") or self.artifact.manifest.options.get("providers")
                    or ["CPUExecutionProvider"])

    def _load(self) -> None:
        import onnxruntime as ort
        self._ort = ort
        self.sess = ort.InferenceSession(str(self.artifact.main_path), self._session_options(),
                                         providers=self._providers())
        self._in_names = [i.name for i in self.sess.get_inputs()]
        self._out_names = [o.name for o in self.sess.get_outputs()]
        self.load_details = {"providers": self.sess.get_providers()}
        wanted = self._providers()[0]
        if wanted not in self.load_details["providers"]:   # ORT falls back to the CPU with only a warning
            from edge.errors import PlatformError
            raise PlatformError(f"ONNX Runtime could not use {wanted} here (available: "
                                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA, "
                                f"or load with providers=['CPUExecutionProvider']")

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(self._out_names, dict(zip(self._in_names, arrays)))

    def native_profile(self, inputs: Sequence[np.ndarray], iters: int = 20,
                       top: int | None = 25) -> list[dict[str, Any]] | None:
        with tempfile.TemporaryDirectory() as tmp:
            sess = self._ort.InferenceSession(str(self.artifact.main_path),
                                              self._session_options(os.path.join(tmp, "ort")),
                                              providers=self._providers())
            feed = dict(zip(self._in_names, inputs))
            for _ in range(iters):
                sess.run(self._out_names, feed)
            with open(sess.end_profiling()) as f:
                events = json.load(f)
        rows: dict[tuple[str, str], list[float]] = defaultdict(list)
        for ev in events:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                rows[(ev["name"][: -len("_kernel_time")], ev.get("args", {}).get("op_name", "?"))].append(ev["dur"] / 1e3)
        return op_table(rows, top=top)

    def _close(self) -> None:
        self.sess = None
