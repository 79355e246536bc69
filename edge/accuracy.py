"""Accuracy-aware int8 (``--max-drop POINTS``): keep the layers that cost accuracy in float, and only those.

Round 0 quantizes everything the recipe quantizes and measures the metric; while the drop from the float model is
over the budget (or the artifact would fail its parity check), edge's debugger ranks the quantized modules by the
error they introduce (``drop_db``), the worst go to the converter's ``keep_float`` option, and the model is
quantized and measured again; 1, 1, 2, 4, ... modules are added per round. Over the budget, the debugger runs on
the samples the metric lost (the float model right, the artifact wrong): the error that matters is theirs, and a
drop of one sample is invisible in averages over other inputs; parity failing alone, on the verification inputs.
A transformer's first fallback is a prior instead (:func:`transformer_prior`: its LayerNorms and the blocks' own
ops, residual adds among them, in float; every Linear stays int8), as NNCF's ``ModelType.TRANSFORMER`` and
timm-style int8 recipes do; a container module's own ops are named ``module:own`` (``OWN_OPS``), so a residual add
never costs its whole block. When no quantized module is left, a ConversionError lists every round. The manifest records the metric (named), every round, the modules kept in
float and the latency of the result against the all-int8 round, measured here side by side.

Metric: test-set accuracy on the held-out half of a zoo model's test split (the first half may calibrate);
otherwise top-1 agreement with the float model on held-out random inputs (not the calibration data).
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edge.errors import ConversionError, UsageError, VerificationError

MAX_ROUNDS = 8
HELD_OUT_RANDOM = 128


@dataclass
class Metric:
    """What ``--max-drop`` is measured on: ``score(run)`` in points (0-100) for a batch -> logits function."""

    name: str
    inputs: list[tuple[np.ndarray, ...]]
    labels: np.ndarray | None           # None: agreement with ``reference_top1``
    reference_top1: np.ndarray

    def top1(self, run: Callable[..., np.ndarray]) -> np.ndarray:
        """The top-1 class of every sample, in order."""
        return np.concatenate([np.asarray(run(*b)).reshape(len(b[0]), -1).argmax(-1) for b in self.inputs])

    def score(self, run: Callable[..., np.ndarray] | None = None, top1: np.ndarray | None = None) -> float:
        top1 = self.top1(run) if top1 is None else top1
        return float((top1 == self.target[:len(top1)]).mean() * 100.0)

    @property
    def resolution(self) -> float:
        """Points one sample is worth: a budget below it allows no lost sample at all."""
        return 100.0 / max(1, len(self.reference_top1))

    @property
    def target(self) -> np.ndarray:
        return self.labels if self.labels is not None else self.reference_top1

    def lost_batches(self, top1: np.ndarray, limit: int = 4) -> list[tuple[np.ndarray, ...]]:
        """The batches holding the samples the float model gets right and ``top1`` gets wrong (at most
        ``limit``): what the metric's drop is made of, so what the debugger should explain."""
        lost = (self.reference_top1 == self.target) & (top1 != self.target)
        out: list[tuple[np.ndarray, ...]] = []
        start = 0
        for b in self.inputs:
            n = len(b[0])
            if lost[start:start + n].any():
                out.append(b)
            start += n
        return out[:limit]


def check_max_drop(max_drop: Any, converters: list[tuple[Any, str]]) -> None:
    """Bad ``--max-drop`` use is reported before any work starts."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0:
        raise UsageError(f"--max-drop {max_drop!r} must be a number of accuracy points >= 0, e.g. --max-drop 0.5")
    for conv, precision in converters:
        if precision not in conv.needs_calibration:
            raise UsageError(f"--max-drop keeps layers of a statically quantized model in float; {conv.name}/"
                             f"{precision} is not one (use --precision int8)")
        if "keep_float" not in conv.options:
            raise UsageError(f"--max-drop needs a target that can keep layers in float (option keep_float); "
                             f"{conv.name} has none")


def metric_for(spec: Any, job: Any) -> Metric:
    """The held-out test split of a zoo model with one, else held-out random inputs (agreement with fp32)."""
    from edge import parity as V
    from edge.api import _test_split
    from edge.capture import flatten_outputs
    bs = job.inputs[0].concrete_shape(1)[0]
    split = _test_split(spec)
    if split is not None:
        x, y = split
        n = (len(x) // bs) * bs
        inputs = [(np.ascontiguousarray(x[i:i + bs]),) for i in range(0, n, bs)]
        labels, name = np.asarray(y[:n]), f"test-set accuracy ({n} held-out samples of {spec.name}'s test split)"
    else:
        inputs = V.verification_inputs(spec.example_inputs, job.inputs, n_random=HELD_OUT_RANDOM, seed=1)[1:]
        labels, name = None, f"top-1 agreement with the float model ({len(inputs) * bs} held-out random inputs)"
    with torch.no_grad():
        ref = [flatten_outputs(job.module(*(torch.from_numpy(a) for a in b)))[0].float().numpy() for b in inputs]
    if ref[0].ndim != 2 or ref[0].shape[1] < 2:
        raise UsageError(f"--max-drop measures top-1 accuracy; the model's first output has shape "
                         f"{list(ref[0].shape)}, not [batch, classes]")
    return Metric(name, inputs, labels, np.concatenate([r.argmax(-1) for r in ref]))


def _artifact(conv: Any, job: Any, result: Any, folder: Path):
    from edge.artifact import Artifact, Manifest, sha256_path
    m = Manifest(target=conv.name, format=result.format or conv.format, runtime=result.runtime or conv.runtime,
                 precision=job.precision, files={f: sha256_path(folder / f) for f in result.files},
                 inputs=job.inputs, outputs=job.outputs, options=dict(job.options), details=dict(result.details),
                 model=dict(job.model_info))
    return Artifact(folder, m)


def _latency(sessions: list[Any], x: list[np.ndarray], rounds: int = 7, iters: int = 20) -> list[float]:
    """Median ms per call of each session, measured in interleaved rounds (fair under changing load)."""
    for s in sessions:
        for _ in range(3):
            s.run(*x)
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for k, s in enumerate(sessions):
            t = time.perf_counter()
            for _ in range(iters):
                s.run(*x)
            samples[k].append((time.perf_counter() - t) * 1e3 / iters)
    return [statistics.median(v) for v in samples]


def convert_within_drop(conv: Any, job: Any, spec: Any, max_drop: float) -> Any:
    """Convert ``job`` with ``conv``, keeping modules in float until the metric is within ``max_drop`` points.

    The chosen round's files are copied into ``job.out_dir``; ``details["accuracy_aware"]`` records the run.
    """
    from edge import parity as V
    from edge.api import converted, verification_batches
    from edge.debugger import debug_artifact
    from edge.runtimes import RUNTIMES
    metric = metric_for(spec, job)
    from edge.capture import flatten_outputs
    with torch.no_grad():
        reference = metric.score(lambda *b: flatten_outputs(job.module(*(torch.from_numpy(a) for a in b)))[0]
                                 .float().numpy())
    batches, real = verification_batches(spec, _artifact_stub(job))
    refs = V.reference_outputs(job.module, batches)
    kept = sorted(set(job.options.get("keep_float") or []))
    rounds: list[dict[str, Any]] = []
    final_dir = job.out_dir
    with tempfile.TemporaryDirectory(prefix=".edge-max-drop-", dir=str(final_dir.parent)) as tmp:
        first_art = None
        for r in range(MAX_ROUNDS + 1):
            folder = Path(tmp) / f"round{r}"
            folder.mkdir()
            job.out_dir, job.options = folder, {**job.options, "keep_float": list(kept)}
            t0 = time.perf_counter()
            result = converted(conv, job)
            art = _artifact(conv, job, result, folder)
            session = RUNTIMES.get(art.manifest.runtime)(art)
            try:
                top1 = metric.top1(lambda *b: session.run(*b)[0])
                score = metric.score(top1=top1)
                gots = [session.run(*b) for b in batches]
            finally:
                session.close()
            parity = V.compare(refs, gots, job.outputs, classifier=True)
            try:
                V.judge(parity, job.precision, real_inputs=real is not None)
                parity_ok, why = True, ""
            except VerificationError as e:
                parity_ok, why = False, str(e).split(": ", 1)[-1]
            out0 = next(iter(parity.values()))
            rounds.append({"round": r, "kept_float": list(kept), "metric": round(score, 3),
                           "drop": round(reference - score, 3), "cosine": out0["cosine"],
                           "parity_passed": parity_ok, "seconds": round(time.perf_counter() - t0, 1)})
            if first_art is None:
                first_art = art
            if reference - score <= max_drop and parity_ok:
                break
            # over the budget: the debugger looks at the samples the metric lost (a drop of one or two samples is
            # noise on the verification inputs' averages); parity alone failing: at the verification inputs
            lost = metric.lost_batches(top1) if reference - score > max_drop else []
            table = debug_artifact(art, job.module, job.program, lost or batches[:4],
                                   input_kind="samples the metric lost" if lost else "verification")
            prior = transformer_prior(table, kept) if r == 0 else []
            ranked = prior or rank_for_float(table, kept)
            rounds[-1]["next"] = "transformer prior" if prior else f"debugger ranking on {table.input_kind}"
            rounds[-1]["worst"] = [{"module": row.module, "drop_db": row.drop_db, "sqnr_db": row.sqnr_db}
                                   for row in table.worst(5)]
            if not ranked or r == MAX_ROUNDS:
                tried = "; ".join(f"round {x['round']}: float {x['kept_float'] or 'none'} -> {x['metric']:.2f} "
                                  f"(drop {x['drop']:.2f}{'' if x['parity_passed'] else ', parity failed'})"
                                  for x in rounds)
                raise ConversionError(f"--max-drop {max_drop}: {conv.name}/{job.precision} stays more than "
                                      f"{max_drop} points below the float model ({reference:.2f}, {metric.name}) "
                                      f"{'with every quantized layer in float' if not ranked else f'after {r} rounds'}"
                                      f"{'' if parity_ok else f' or fails parity ({why})'}; tried {tried}. "
                                      f"{below_one_sample(max_drop, metric)}"
                                      f"Use a larger --max-drop, other calibration data (--calib) or fp16")
            kept = sorted(set(kept) | set(prior or ranked[:max(1, 2 ** (r - 1))]))
        latency = None
        if first_art is not art:
            sessions = [RUNTIMES.get(a.manifest.runtime)(a) for a in (first_art, art)]
            try:
                all_int8, fallback = _latency(sessions, list(batches[0]))
            finally:
                for s in sessions:
                    s.close()
            latency = {"all_int8_ms": round(all_int8, 4), "with_float_layers_ms": round(fallback, 4),
                       "ratio": round(fallback / all_int8, 3),
                       "how": "medians of 7 interleaved rounds of 20 calls at conversion time, on this machine"}
        for f in result.files:
            src, dst = folder / f, final_dir / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
    job.out_dir = final_dir
    result.details["accuracy_aware"] = {
        "max_drop_points": max_drop, "metric": metric.name, "float_metric": round(reference, 3),
        "points_per_sample": round(metric.resolution, 4),
        "kept_float": list(kept), "rounds": rounds, "latency_cost": latency}
    return result


def below_one_sample(max_drop: float, metric: Metric) -> str:
    """A sentence for the failure message when the budget is finer than the metric can measure."""
    if max_drop >= metric.resolution:
        return ""
    return (f"One sample of the metric is {metric.resolution:.2f} points, so --max-drop {max_drop} allows no lost "
            f"sample at all. ")


def rank_for_float(table: Any, kept: list[str]) -> list[str]:
    """Keep-float names to add next, most harmful first (by the error they introduce, ``drop_db``).

    A module with submodules in the table (a transformer block, its embeddings) is named with ``OWN_OPS``: its
    row's error enters at its own ops (a residual add, a concat), and keeping the whole block in float would give
    up every layer in it. A module already in float that still introduces error gets it from its quantized input:
    the quantized module before it in network order (its producer, in a chain) is ranked in its place.
    """
    from edge.converters.base import OWN_OPS
    by_index = sorted(table.rows, key=lambda r: r.index)
    parents = {r.module for r in by_index if any(o.module.startswith(r.module + ".") for o in by_index)}

    def name(row: Any) -> str:
        return row.module + OWN_OPS if row.module in parents else row.module

    out: list[str] = []
    for row in table.worst():
        pick = row
        if _covered(name(row), kept):
            if row.drop_db <= 0:
                continue
            before = [r for r in by_index[:row.index] if r.quantized and not _covered(name(r), kept)]
            if not before:
                continue
            pick = before[-1]
        if pick.quantized and not _covered(name(pick), kept) and name(pick) not in out:
            out.append(name(pick))
    return out


def transformer_prior(table: Any, kept: list[str]) -> list[str]:
    """The first fallback of a transformer (an attention module and a quantized LayerNorm in the table; a
    recurrent model with LayerNorms is no transformer: measured on VisionGRU, the prior kept 22 names and gained
    nothing): its LayerNorms and the own ops of
    its container modules (residual adds, the class-token concat, attention's softmax and score matmuls) in float,
    the ops NNCF's ``ModelType.TRANSFORMER`` leaves unquantized. A residual stream quantized per tensor shares one
    scale between a small class token and large patch tokens; the LayerNorm after it rescales that token's
    rounding error to the size of its signal (measured on a random-init transformers ViT: ONNX Runtime cosine
    0.945 all-int8; the debugger's ranking alone needed 6 rounds and 32 names). Empty for other models.
    """
    from edge.converters.base import OWN_OPS
    rows = sorted(table.rows, key=lambda r: r.index)
    if not any(r.quantized and "LayerNorm" in r.kind for r in rows) or \
            not any("attention" in r.kind.lower() for r in rows):
        return []
    parents = {r.module for r in rows if any(o.module.startswith(r.module + ".") for o in rows)}
    picks = [r.module + OWN_OPS if r.module in parents else r.module for r in rows
             if r.quantized and (r.module in parents or "LayerNorm" in r.kind)]
    return [p for p in picks if not _covered(p, kept)]


def _covered(name: str, kept: list[str]) -> bool:
    """Is ``name`` (a module, or a module's own ops) already float inside what ``kept`` names?"""
    from edge.converters.base import OWN_OPS
    if name.endswith(OWN_OPS):
        return name in kept or _covered(name[:-len(OWN_OPS)], kept)
    return any(name == k or name.startswith(k + ".") for k in kept)


def _artifact_stub(job: Any):
    from edge.artifact import Manifest
    return Manifest(target="", format="", runtime="", precision=job.precision, files={}, inputs=job.inputs,
                    outputs=job.outputs)
