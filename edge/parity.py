"""Parity checks: every artifact is run by its own runtime and compared with PyTorch eager.

Metrics per output: max abs error, max error relative to the output's largest magnitude,
cosine similarity, and top-1 agreement for classifier outputs ([batch, classes]).
Tolerances are per precision family; a failure raises :class:`VerificationError`
naming the output, the metric, the value and the limit.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch

from edge.artifact import TensorSpec
from edge.capture import flatten_outputs
from edge.errors import VerificationError


@dataclass(frozen=True)
class Tolerance:
    """Pass if ``max_abs <= atol + rtol * max|ref|`` and ``cosine >= min_cosine`` and,
    on real (test-set) inputs, top-1 agreement >= ``min_top1``."""

    atol: float | None
    rtol: float | None
    min_cosine: float
    min_top1: float | None


TOLERANCES = {
    "exact": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999, min_top1=1.0),
    "half": Tolerance(atol=1e-2, rtol=5e-2, min_cosine=0.999, min_top1=0.9),
    "int8": Tolerance(atol=None, rtol=None, min_cosine=0.98, min_top1=0.9),
    "lowbit": Tolerance(atol=None, rtol=None, min_cosine=0.95, min_top1=0.8),
}
_FAMILY = {"fp32": "exact", "fp16": "half", "bf16": "half", "int8": "int8", "int8-weights": "int8",
           "w8a8": "int8", "int8-dynamic": "int8", "int4-weights": "lowbit", "8da4w": "lowbit",
           "palettize4": "lowbit", "palettize6": "int8"}


def tolerance_for(precision: str) -> Tolerance:
    """The tolerance a precision is judged by (unknown quantized names fall back to 'lowbit')."""
    return TOLERANCES[_FAMILY.get(precision, "lowbit")]


def verification_inputs(example_inputs: Sequence[torch.Tensor], specs: list[TensorSpec], *, n_random: int = 3,
                        real: Sequence[np.ndarray] | None = None, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """The example input, then ``real`` samples (test-set inputs) or ``n_random`` random ones of the same spec."""
    batches = [tuple(t.detach().cpu().numpy() for t in example_inputs)]
    if real is not None:
        per = specs[0].concrete_shape(example_inputs[0].shape[0])[0]
        batches += [(np.ascontiguousarray(real[i:i + per]),) for i in range(0, len(real) - per + 1, per)]
        return batches
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        batch = []
        for t in example_inputs:
            a = t.detach().cpu().numpy()
            if np.issubdtype(a.dtype, np.floating):
                batch.append((rng.standard_normal(a.shape) * (a.std() or 1.0) + a.mean()).astype(a.dtype))
            else:
                batch.append(rng.integers(int(a.min()), int(a.max()) + 1, size=a.shape).astype(a.dtype))
        batches.append(tuple(batch))
    return batches


def reference_outputs(module: torch.nn.Module, batches: list[tuple[np.ndarray, ...]]) -> list[list[np.ndarray]]:
    with torch.no_grad():
        return [[o.float().numpy() for o in flatten_outputs(module(*(torch.from_numpy(a) for a in b)))]
                for b in batches]


def _rows(a) -> np.ndarray:
    """An output as [rows, values] in float64; a 0-d output (a loss, a count) is one row of one value."""
    a = np.asarray(a, np.float64)
    return a.reshape(len(a) if a.ndim else 1, -1)


def compare(refs: list[list[np.ndarray]], gots: list[list[np.ndarray]], outputs: list[TensorSpec],
            *, classifier: bool) -> dict[str, dict[str, float]]:
    """Metrics per output over all batches."""
    result = {}
    for i, spec in enumerate(outputs):
        r = np.concatenate([_rows(b[i]) for b in refs])
        g = np.concatenate([_rows(b[i]) for b in gots])
        if r.shape != g.shape:
            raise VerificationError(f"output {spec.name!r} has shape {list(g.shape)} from the artifact but "
                                    f"{list(r.shape)} from PyTorch", output=spec.name, metric="shape")
        diff = np.abs(r - g)
        scale = float(np.abs(r).max()) if r.size else 0.0
        with np.errstate(all="ignore"):
            cos = float((r * g).sum() / (np.linalg.norm(r) * np.linalg.norm(g) + 1e-30)) if r.size else 1.0
        if not np.isfinite(g).all():   # inf/NaN from the artifact fails every check
            cos = float("nan")
        m = {"max_abs": float(diff.max()) if r.size else 0.0, "ref_max_abs": scale,
             "max_rel": float(diff.max() / (scale + 1e-12)) if r.size else 0.0,
             "mean_abs": float(diff.mean()) if r.size else 0.0, "cosine": cos}
        if classifier and i == 0 and r.ndim == 2 and r.shape[1] > 1:
            m["top1_agreement"] = float((r.argmax(1) == g.argmax(1)).mean())
            m["samples"] = int(r.shape[0])
        result[spec.name] = m
    return result


FAILED_CONSEQUENCE = "the artifact is marked failed and will not load"


def judge(metrics: dict[str, dict[str, float]], precision: str, *, real_inputs: bool, artifact: str = "",
          under: str = "", consequence: str = FAILED_CONSEQUENCE) -> None:
    """Raise one VerificationError naming every output and metric outside the precision's tolerance
    (``under``: the runtime options the run used, named in the message)."""
    tol = tolerance_for(precision)
    failures: list[tuple[str, str, float, float]] = []
    for name, m in metrics.items():
        checks: list[tuple[str, float, float, bool]] = []
        if tol.atol is not None:
            limit = tol.atol + tol.rtol * m["ref_max_abs"]
            checks.append(("max_abs", m["max_abs"], limit, m["max_abs"] <= limit))
        checks.append(("cosine", m["cosine"], tol.min_cosine, m["cosine"] >= tol.min_cosine))
        if real_inputs and "top1_agreement" in m and tol.min_top1 is not None:
            checks.append(("top1_agreement", m["top1_agreement"], tol.min_top1, m["top1_agreement"] >= tol.min_top1))
        failures += [(name, metric, value, limit) for metric, value, limit, ok in checks if not ok]   # NaN fails
    if not failures:
        return
    by_output: dict[str, list[str]] = {}
    for name, metric, value, limit in failures:
        cmp = "<=" if metric == "max_abs" else ">="
        by_output.setdefault(name, []).append(f"{metric} {value:.3g} (must be {cmp} {limit:.3g})")
    what = "; ".join(f"output {name!r} {', '.join(parts)}" for name, parts in by_output.items())
    name, metric, value, limit = failures[0]
    err = VerificationError(
        f"{artifact or 'artifact'} failed its {precision} parity check{' under ' + under if under else ''}: "
        f"{what}; {consequence}", output=name, metric=metric, value=value, limit=limit, artifact=artifact)
    err.failures = failures
    raise err


def accuracy(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Top-1 accuracy of ``run`` (numpy batch -> logits) over ``x``, ``y`` in batches of ``batch``."""
    correct, n = 0, (len(x) // batch) * batch
    for i in range(0, n, batch):
        correct += int((np.asarray(run(x[i:i + batch])).argmax(-1) == y[i:i + batch]).sum())
    return correct / max(n, 1)


@dataclass
class ParityReport:
    """An artifact's parity record, typed (``manifest.parity`` holds it as JSON: :meth:`to_dict`/:meth:`from_dict`).

    Attributes:
        passed: the verdict; None when the check could not run here (``skipped`` says why).
        precision / tolerance: what the artifact was judged by.
        inputs / input_kind: how many input batches, and what they were (test-set, example+random, ...).
        outputs: metrics per output (max_abs, cosine, top1_agreement, accuracy ...).
        error: every failing output and metric, when it failed.
        runtime_checks: records of checks under numeric runtime options (e.g. ``precision_hint=bf16``).
        vs_original: agreement with the original model when a lossy pass ran (recorded, not judged).

    Example:
        >>> ParityReport.from_dict(edge.load("out/m").artifact.manifest.parity).summary()
        '  max_abs 1.2e-06 cos 1.000000'
    """

    passed: bool | None
    precision: str = ""
    tolerance: dict[str, Any] | None = None
    inputs: int = 0
    input_kind: str = ""
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None
    runtime_options: str | None = None
    runtime_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    vs_original: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ParityReport":
        d = d if isinstance(d, dict) else {}
        known = {f.name for f in fields(cls)}
        return cls(**{"passed": None, **{k: v for k, v in d.items() if k in known}})

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form: fields left at their defaults are left out (``passed`` is always there)."""
        defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
                    for f in fields(self)}
        return {k: v for k, v in asdict(self).items() if k == "passed" or v != defaults[k]}

    @property
    def first_output(self) -> dict[str, Any]:
        """The metrics of the first output (the logits of a classifier)."""
        return next(iter(self.outputs.values()), {}) if isinstance(self.outputs, dict) else {}

    def summary(self) -> str:
        """One line of the first output's metrics, as the CLI prints them."""
        if self.skipped:
            return f"  (parity skipped: {self.skipped})"
        m = self.first_output
        if not m:
            return ""
        text = f"  max_abs {m['max_abs']:.2e} cos {m['cosine']:.6f}"
        if "top1_agreement" in m:
            text += f" top1 {m['top1_agreement']:.3f}"
        if "accuracy" in m:
            text += f" acc {m['accuracy']:.4f} (torch {m['reference_accuracy']:.4f})"
        return text


def parity_record(metrics: dict[str, Any], precision: str, *, inputs: int, real_inputs: bool,
                  passed: bool, error: str | None = None, input_kind: str | None = None) -> dict[str, Any]:
    """The manifest's parity record (:class:`ParityReport` as JSON) of one check."""
    kind = input_kind or ("test-set" if real_inputs else "example+random")
    return ParityReport(passed=passed, precision=precision, tolerance=asdict(tolerance_for(precision)),
                        inputs=inputs, input_kind=kind, outputs=metrics, error=error or None).to_dict()
