"""AOTInductor runtime: loads a ``.pt2`` package with ``torch._inductor.aoti_load_package`` and runs it.

On CUDA every timed call is bracketed by ``torch.cuda.synchronize`` and timed with CUDA events
(``timed_run``; :func:`edge.profile.time_session` uses it), and the GPU memory peak is reported
in ``load_details`` (``gpu_peak_mib``: PyTorch's allocator, i.e. activations and outputs; ``gpu_load_mib``:
device memory taken by loading the package, weights included). On the CPU it times with ``perf_counter``.

Known trap (torch 2.11+cu130 on the H200 machine): loading any AOTI package segfaulted inside the
package's ``std::regex`` (``parse_device_str``) because the wrapper bound libstdc++ symbols from the
wrong library; starting Python with ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libstdc++.so.6`` fixed it.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from edge.errors import PlatformError
from edge.runtimes.base import Session


class AotiSession(Session):
    """Options: ``device_index`` (GPU ordinal, default the current device)."""

    name = "aoti"
    OPTIONS = {"device_index": int}
    extra = "cuda"
    requires = ("torch",)
    timer = "cuda-event"

    def _load(self) -> None:
        import torch
        self._torch = torch
        self.device = self.artifact.manifest.options.get("device", "cuda")
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise PlatformError(f"{self.artifact.path} was compiled for CUDA and this machine has no CUDA GPU "
                                    f"(or a CPU-only PyTorch); rebuild it with --device cpu to run it here")
            idx = int(self.options.get("device_index", torch.cuda.current_device()))
            self._dev = torch.device("cuda", idx)
            torch.cuda.set_device(self._dev)
            torch.cuda.reset_peak_memory_stats(self._dev)
            free0 = torch.cuda.mem_get_info(self._dev)[0]
        else:
            self.timer = "perf_counter"
            self._dev = torch.device("cpu")
        try:
            if self.device == "cuda":
                self.model = torch._inductor.aoti_load_package(str(self.artifact.main_path), device_index=self._dev.index)
            else:
                self.model = torch._inductor.aoti_load_package(str(self.artifact.main_path))
        except Exception as e:
            from edge.errors import ArtifactError
            raise ArtifactError(f"AOTInductor could not load {self.artifact.main_path}: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}; it may have been built "
                                f"by another PyTorch version ({self.artifact.manifest.versions.get('torch')}, this is "
                                f"{torch.__version__}): rebuild it with `edge convert`") from e
        self.load_details = {"device": str(self._dev), "torch": torch.__version__}
        if self.device == "cuda":
            self.load_details["gpu"] = torch.cuda.get_device_name(self._dev)
            # AOTInductor allocates its weights outside PyTorch's caching allocator: measure the device itself
            self.load_details["gpu_load_mib"] = (free0 - torch.cuda.mem_get_info(self._dev)[0]) / 2**20
        self._staged: tuple[int, list[Any]] | None = None

    def _tensors(self, arrays: list[np.ndarray]) -> list[Any]:
        torch = self._torch
        return [torch.from_numpy(a).to(self._dev, non_blocking=False) for a in arrays]

    def _call(self, tensors: list[Any]) -> list[Any]:
        from edge.capture import flatten_outputs
        with self._torch.inference_mode():
            return flatten_outputs(self.model(*tensors))

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        outs = self._call(self._tensors(arrays))
        return [o.detach().float().cpu().numpy() if o.dtype == self._torch.bfloat16 else o.detach().cpu().numpy()
                for o in outs]

    def synchronize(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize(self._dev)

    def timed_run(self, inputs: Sequence[Any]) -> float:
        """Milliseconds of one model call on inputs already on the device (copied there once, untimed).

        CUDA: synchronize, record a start event, run, record an end event, synchronize, read the
        elapsed time. Outputs stay on the device. CPU: perf_counter around the call.
        """
        key = id(inputs[0]) if inputs else 0
        if self._staged is None or self._staged[0] != key:
            self._staged = (key, self._tensors(self.prepare(*inputs)))
        tensors = self._staged[1]
        if self.device != "cuda":
            t0 = time.perf_counter()
            self._call(tensors)
            return (time.perf_counter() - t0) * 1e3
        torch = self._torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self._dev)
        start.record()
        self._call(tensors)
        end.record()
        torch.cuda.synchronize(self._dev)
        self.load_details["gpu_peak_mib"] = torch.cuda.max_memory_allocated(self._dev) / 2**20   # torch allocator
        return float(start.elapsed_time(end))

    def native_profile(self, inputs: Sequence[np.ndarray], iters: int = 20,
                       top: int | None = 25) -> list[dict[str, Any]] | None:
        """Per-kernel table from torch.profiler (CUDA kernels on the GPU, generated C++ kernels on the CPU)."""
        from torch.profiler import ProfilerActivity, profile

        from edge.runtimes.base import op_table
        tensors = self._tensors(list(inputs))
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self._call(tensors)
        self.synchronize()
        with profile(activities=acts) as prof:
            for _ in range(iters):
                self._call(tensors)
            self.synchronize()
        rows: dict[tuple[str, str], list[float]] = {}
        for ev in prof.events():
            on_gpu = str(getattr(ev, "device_type", "")).endswith("CUDA")
            if self.device == "cuda" and not on_gpu:
                continue
            if self.device != "cuda" and (ev.cpu_parent is not None or ev.name.startswith("ProfilerStep")):
                continue
            dur = (ev.device_time if on_gpu else ev.cpu_time) / 1e3
            rows.setdefault((ev.name[:120], "cuda-kernel" if on_gpu else "cpu"), []).append(dur)
        return op_table(rows, top=top) if rows else None

    def _close(self) -> None:
        self.model = None
        self._staged = None
