"""ExecuTorch session: ``Runtime.get().load_program(path).load_method("forward").execute(inputs)``.

A bundled artifact (``model.bpte``) is loaded through the BundledProgram API instead and can run the
test it carries (:meth:`ExecuTorchSession.run_bundled_test`). ``native_profile`` records an ETDump
(the pip wheel is built with the event tracer: ``Runtime.load_program(..., enable_etdump=True)``)
and reads it with the devtools Inspector, using the artifact's ETRecord to name the ops: one row per
XNNPACK operator inside each delegate call and per portable-kernel op.
"""
from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import ArtifactError, VerificationError
from edge.runtimes.base import Session, op_table

ETRECORD = "etrecord.bin"


def _quiet_import():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from executorch.runtime import Runtime
    return torch, Runtime


class ExecuTorchSession(Session):
    """Options: ``threads`` (XNNPACK threadpool size; default ExecuTorch's choice).

    ExecuTorch has one threadpool per process, not one per program: ``threads`` resizes it for every session of
    the process while this session is open, and closing the session puts back the size it found.
    """

    name = "executorch"
    OPTIONS = {"threads": int}
    extra = "executorch"
    requires = ("executorch",)

    def _load(self) -> None:
        self._torch, Runtime = _quiet_import()
        self._threads_before = None
        if self.options.get("threads"):
            from executorch.extension.pybindings import portable_lib
            self._threads_before = portable_lib._threadpool_get_thread_count()
            portable_lib._unsafe_reset_threadpool(int(self.options["threads"]))
        path = self.artifact.main_path
        self.bundled = Path(path).suffix == ".bpte"
        try:
            if self.bundled:
                self._bundle, self._module = self._load_bundled(path)
                self._call = lambda xs: self._module.forward(xs)
            else:
                self._program = Runtime.get().load_program(str(path))
                self._method = self._program.load_method("forward")
                self._call = self._method.execute
        except Exception as e:
            raise ArtifactError(f"ExecuTorch could not load {path}: {type(e).__name__}: {e}; convert it again "
                                f"with this executorch version") from e
        from executorch.extension.pybindings import portable_lib
        self.load_details = {"bundled": self.bundled, "threads": portable_lib._threadpool_get_thread_count(),
                             "backends": Runtime.get().backend_registry.registered_backend_names}

    def _load_bundled(self, path, etdump: bool = False):
        from executorch.extension.pybindings import portable_lib
        bm = portable_lib._load_bundled_program_from_buffer(Path(path).read_bytes())
        module = portable_lib._load_for_executorch_from_bundled_program(bm, enable_etdump=etdump)
        return bm, module

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        outs = self._call([self._torch.from_numpy(a) for a in arrays])
        return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]

    def run_bundled_test(self, rtol: float | None = None, atol: float | None = None) -> dict[str, Any]:
        """Run the test stored in a bundled artifact (its input, compared with its expected output).

        Raises VerificationError when the outputs differ beyond the stored (or given) tolerance.
        """
        if not self.bundled:
            raise ArtifactError(f"{self.artifact.path} is not bundled; convert with --bundle (option bundle=True)")
        rec = self.artifact.manifest.details.get("bundle", {})
        rtol = rec.get("rtol", 1e-3) if rtol is None else rtol
        atol = rec.get("atol", 1e-4) if atol is None else atol
        try:   # executorch 1.5: the BundledModule loads test input 0, runs "forward" and compares
            self._bundle.verify_result_with_bundled_expected_output("forward", 0, rtol, atol)
        except Exception as e:
            raise VerificationError(f"{self.artifact.path}: the bundled test failed (rtol {rtol}, atol {atol}): {e}",
                                    metric="bundled_test", artifact=str(self.artifact.path)) from e
        return {"passed": True, "test_cases": 1, "rtol": rtol, "atol": atol,
                "expected_outputs_from": rec.get("expected_outputs_from")}

    def native_profile(self, inputs: Sequence[np.ndarray], iters: int = 20,
                       top: int | None = 25) -> list[dict[str, Any]] | None:
        """Per-op table from an ETDump read by the devtools Inspector (ms per call, most expensive first)."""
        _, Runtime = _quiet_import()
        xs = [self._torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
        with tempfile.TemporaryDirectory() as tmp:
            etdump = str(Path(tmp) / "etdump.etdp")
            if self.bundled:
                bm, module = self._load_bundled(self.artifact.main_path, etdump=True)   # bm owns the data
                for _ in range(iters):
                    module.forward(xs)
                module.write_etdump_result_to_file(etdump, str(Path(tmp) / "debug.bin"))
                del module, bm
            else:
                program = Runtime.get().load_program(str(self.artifact.main_path), enable_etdump=True)
                method = program.load_method("forward")
                for _ in range(iters):
                    method.execute(xs)
                program.write_etdump_result_to_file(etdump, str(Path(tmp) / "debug.bin"))
            etrecord = self.artifact.file(ETRECORD) if ETRECORD in self.artifact.manifest.files else None
            return etdump_table(etdump, etrecord, top)

    def _close(self) -> None:
        self._call = None
        self._method = self._program = self._module = self._bundle = None
        if getattr(self, "_threads_before", None):   # the process-wide threadpool goes back to the size it had
            from executorch.extension.pybindings import portable_lib
            portable_lib._unsafe_reset_threadpool(int(self._threads_before))


def etdump_table(etdump: str, etrecord: Path | None, top: int | None = 25) -> list[dict[str, Any]] | None:
    """Leaf events of an ETDump as the native-profile table.

    Rows are the XNNPACK operators inside each delegate call (named ``<op> [delegate k]``) and the
    portable-kernel ops; the enclosing DELEGATE_CALL / OPERATOR_CALL events are left out so shares add
    up to 100%. If the XNNPACK per-op events are missing, the delegate calls themselves are the rows.
    Each XNNPACK row's ``kind`` is its operator without the instance number (``Fully Connected (NC, F32) GEMM``).
    """
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from executorch.devtools import Inspector
        insp = Inspector(etdump_path=etdump, etrecord=str(etrecord) if etrecord is not None and etrecord.is_file() else None)
    rows: dict[tuple[str, str], list[float]] = defaultdict(list)
    calls: dict[tuple[str, str], list[float]] = defaultdict(list)
    extra: dict[tuple[str, str], dict] = {}
    for block in insp.event_blocks:
        if block.name != "Execute":
            continue
        k = 0
        pending: list[tuple[str, str]] = []
        for ev in block.events:
            raw = list(ev.perf_data.raw) if ev.perf_data is not None else []
            if not raw:
                continue
            if ev.name == "DELEGATE_CALL":
                key = (f"delegate call {k}", f"{ev.delegate_backend_name or 'delegate'} call")
                calls[key] += raw
                extra[key] = {"ops": len(ev.op_types or [])}
                for p in pending:   # the backend's events precede the call that encloses them
                    rows[(f"{p[0]} [delegate {k}]", p[1])] += rows.pop(p)
                    extra[(f"{p[0]} [delegate {k}]", p[1])] = extra.pop(p)
                pending, k = [], k + 1
            elif ev.is_delegated_op:
                key = (ev.name, "xnnpack")
                rows[key] += raw
                extra[key] = {"kind": re.sub(r" #\d+$", "", ev.name)}
                if key not in pending:
                    pending.append(key)
            elif ev.name.startswith("native_call_"):
                rows[(ev.name[len("native_call_"):], "portable kernel")] += raw
    if not any(t == "xnnpack" for _, t in rows):   # no per-op XNNPACK events: per-call timings instead
        rows.update(calls)
    return op_table(rows, extra, top) if rows else None
