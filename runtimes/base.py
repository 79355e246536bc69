"""The one runtime interface: ``load`` (constructor), ``run``, ``close``, ``native_profile``."""
from __future__ import annotations

import importlib.util
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from edge.errors import EdgeError, InputError, MissingBackendError, RuntimeLoadError, UnknownNameError, UsageError

if TYPE_CHECKING:
    from edge.artifact import Artifact


class Session(ABC):
    """A loaded artifact, ready to run.

    Subclasses implement ``_load`` and ``_run`` (numpy in, list of numpy out) and may
    implement ``native_profile``. ``run`` checks inputs against the manifest's spec so a
    wrong shape is a clear InputError, not a backend traceback.

    Example:
        >>> with edge.load("out/vit-onnx") as s:
        ...     logits, = s.run(x)
    """

    name: ClassVar[str]
    extra: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    timer: ClassVar[str] = "perf_counter"   # the CUDA runtime reports "cuda-event"
    # Options that change the numbers a session computes (OpenVINO's precision_hint), with their defaults.
    # An artifact's parity record is for the defaults; a run under other values is checked with
    # ``edge verify ART --runtime-option KEY=VALUE`` and recorded apart, in parity["runtime_checks"].
    NUMERIC_OPTIONS: ClassVar[dict[str, str]] = {}
    # Every option ``edge.load(path, **options)`` accepts, with its type; another key is a UsageError.
    OPTIONS: ClassVar[dict[str, type]] = {}

    def __init__(self, artifact: "Artifact", **options: Any):
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                raise MissingBackendError(mod, self.extra, f"the {self.name} runtime")
        self.artifact = artifact
        self.options = self.check_options(options)
        self.inputs = artifact.manifest.inputs
        self.outputs = artifact.manifest.outputs
        self._np_dtypes = [np.dtype(t.dtype) for t in self.inputs]
        # static shapes allow a fast path: numpy input of the right dtype, shape and layout is passed through
        self._static = [None if any(isinstance(d, str) for d in t.shape) else tuple(t.shape) for t in self.inputs]
        t0 = time.perf_counter()
        try:
            self._load()
        except EdgeError:
            raise
        except Exception as e:  # the backends raise many types: name the artifact, the options and the reason
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
            given = ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "default options"
            raise RuntimeLoadError(f"the {self.name} runtime could not load {artifact.path} with {given}: "
                                   f"{type(e).__name__}: {lines[-1][:300]}") from e
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.load_details: dict[str, Any] = getattr(self, "load_details", {})

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` checked against :attr:`OPTIONS` (names and types); integers given as text are read."""
        out = {}
        for key, value in options.items():
            kind = cls.OPTIONS.get(key)
            if kind is None:
                raise UnknownNameError(f"{cls.name} runtime option", key, cls.OPTIONS)
            if value is None or kind is object:
                out[key] = value
                continue
            if kind is int:
                text = str(value).strip()
                if isinstance(value, bool) or not text.isdigit():
                    raise UsageError(f"{cls.name} runtime option {key}={value!r} must be a whole number >= 0")
                value = int(text)
            elif kind is list:
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                    raise UsageError(f"{cls.name} runtime option {key}={value!r} must be a name or a list of names")
                value = list(items)
            elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise UsageError(f"{cls.name} runtime option {key}={value!r} must be text")
            else:
                value = str(value)
            out[key] = value
        return out

    @classmethod
    def numeric_defaults(cls, manifest: Any) -> dict[str, str]:
        """The values of ``NUMERIC_OPTIONS`` an artifact was verified with (the class defaults unless recorded)."""
        return dict(cls.NUMERIC_OPTIONS)

    @classmethod
    def numeric_key(cls, options: dict[str, Any], manifest: Any = None) -> str:
        """``key=value`` of the ``options`` that change numerics (not at their default), '' when none."""
        defaults = cls.numeric_defaults(manifest)
        return ",".join(f"{k}={str(options[k]).lower()}" for k in sorted(defaults)
                        if options.get(k) is not None and str(options[k]).lower() != defaults[k])

    @classmethod
    def numeric_variants(cls) -> list[dict[str, Any]]:
        """Option sets with their own numerics that this machine runs (the conformance suite checks each)."""
        return []

    @classmethod
    def judged_precision(cls, precision: str, options: dict[str, Any]) -> str:
        """The precision (tolerance family) a run of a ``precision`` artifact under ``options`` is judged as."""
        return precision

    @abstractmethod
    def _load(self) -> None:
        """Load/compile the artifact's model."""

    @abstractmethod
    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run once on checked, contiguous numpy inputs."""

    def prepare(self, *inputs: Any) -> list[np.ndarray]:
        """Check and convert inputs (numpy or torch) to the contiguous numpy arrays ``_run`` takes."""
        if len(inputs) == len(self._static) and all(
                type(x) is np.ndarray and x.shape == shape and x.dtype == dt and x.flags.c_contiguous
                for x, shape, dt in zip(inputs, self._static, self._np_dtypes)):
            return list(inputs)
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) and len(self.inputs) != 1:
            inputs = tuple(inputs[0])
        if len(inputs) != len(self.inputs):
            raise InputError(f"{self.name} session takes {len(self.inputs)} input(s) "
                             f"({', '.join(t.name for t in self.inputs)}), got {len(inputs)}")
        arrays = []
        for spec, dtype, x in zip(self.inputs, self._np_dtypes, inputs):
            if hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            if not isinstance(x, np.ndarray):
                try:
                    x = np.asarray(x)
                except (ValueError, TypeError) as e:
                    raise InputError(f"input {spec.name!r} is not an array: {e}") from None
            if x.dtype.kind not in "biuf":
                raise InputError(f"input {spec.name!r} must be a numeric array (numpy or torch) of {spec.dtype}, "
                                 f"got an array of dtype {x.dtype}")
            a = np.ascontiguousarray(x, dtype=dtype)
            if not spec.matches(a.shape):
                raise InputError(f"input {spec.name!r} has shape {list(a.shape)}, the artifact expects "
                                 f"{spec.shape} (strings mark dynamic dims); resize the input or convert "
                                 f"again with a matching --input-shape")
            arrays.append(a)
        return arrays

    def run(self, *inputs: Any) -> list[np.ndarray]:
        """Run on numpy arrays or torch tensors; returns a list of numpy arrays, one per output."""
        if self._closed:
            raise InputError(f"this {self.name} session of {self.artifact.path} was closed; load the artifact "
                             f"again with edge.load(path)")
        return self._run(self.prepare(*inputs))

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); a no-op on the CPU."""

    def native_profile(self, inputs: Sequence[np.ndarray], iters: int = 20,
                       top: int | None = 25) -> list[dict[str, Any]] | None:
        """Per-op table from the runtime's own profiler, most expensive first, or None if it has none.

        Each row: ``op`` (node name), ``type``, ``calls``, ``total_ms``, ``mean_ms``, ``share``
        and, where the runtime says, ``precision``. ``top``: the most expensive rows kept (None: all;
        :func:`edge.profile.op_kinds` sums all rows per kind of op).
        """
        return None

    _closed = False

    def close(self) -> None:
        """Release the runtime's resources; ``run`` afterwards is an InputError. Closing twice is fine."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:
        """Release the backend's objects (runtimes override this, not ``close``)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def op_table(rows: dict[tuple[str, str], list[float]], extra: dict[tuple[str, str], dict] | None = None,
             top: int | None = 25) -> list[dict[str, Any]]:
    """Aggregate per-op durations (ms) keyed by (op name, op type) into the native-profile table."""
    total = sum(sum(v) for v in rows.values()) or 1.0
    table = []
    for (op, typ), durs in rows.items():
        row = {"op": op, "type": typ, "calls": len(durs), "total_ms": sum(durs),
               "mean_ms": sum(durs) / len(durs), "share": sum(durs) / total}
        row.update((extra or {}).get((op, typ), {}))
        table.append(row)
    table.sort(key=lambda r: -r["total_ms"])
    return table[:top]
