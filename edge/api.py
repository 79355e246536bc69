"""The public SDK: convert, load, verify, benchmark. The CLI calls these same functions."""
from __future__ import annotations

import platform
import warnings

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edge import __version__
from edge.artifact import (STATUS_FAILED, STATUS_UNVERIFIED, Artifact, Manifest, check_destination, now_iso,
                           sha256_path, staging_dir)
from edge.capture import input_specs, output_specs
from edge.converters.base import ConversionJob
from edge.errors import ArtifactError, EdgeWarning, UsageError, VerificationError
from edge.pipeline import Prepared, lower, prepare  # noqa: F401 (part of the SDK: edge.prepare)
from edge.progress import step
# verification has its own module; the SDK's names stay importable from here
from edge.verification import (_test_split, reference_for, verification_batches,  # noqa: F401
                               verify_artifact)
from edge.verification import verify as verify  # noqa: F401 (edge.verify; convert_all's ``verify`` flag shadows it)


def convert(model: Any, *, target: str = "onnx", precision: str = "fp32", out: str | Path,
            example_inputs: Sequence[torch.Tensor] | None = None, **kwargs: Any) -> Artifact:
    """Convert ``model`` for one target, verify it against PyTorch, and write the artifact folder ``out``.

    Args:
        model: an ``nn.Module``, a zoo name, ``"file.py:factory"``, ``"pkg.module:factory"`` or a ``.pt2`` path.
        target: a registered target (``edge.list_targets()``).
        precision: one of the target's precisions (fp32, fp16, int8, ...).
        out: the artifact folder to create (replaced only if it already holds an edge artifact).
        example_inputs: example input tensors (or ``input_shapes=[(1, 3, 224, 224)]``).
        **kwargs: ``weights``, ``trust_weights``, ``input_shapes``, ``dynamic_batch``, ``optimize``,
            ``disable_passes``, ``keep_tokens``, ``pass_options`` (e.g. ``{"mingru_form": "striped"}``), ``calib``,
            ``verify``, ``options`` (target options),
            ``max_drop`` (int8: keep the layers that cost more accuracy points than this in float).

    Returns:
        The verified :class:`Artifact`.

    Raises:
        VerificationError: the artifact failed its parity check (it is written, marked failed).

    Example:
        >>> art = edge.convert(model, example_inputs=(x,), target="onnx", out="out/m")
    """
    return convert_all(model, targets=[target], precisions=[precision], out=out,
                       example_inputs=example_inputs, _single=True, **kwargs)[0]


def convert_all(model: Any, *, targets: Sequence[str], precisions: Sequence[str] = ("fp32",), out: str | Path,
                example_inputs: Sequence[torch.Tensor] | None = None, input_shapes: list[tuple[int, ...]] | None = None,
                weights: str | Path | None = None, trust_weights: bool = False, dynamic_batch: bool = False,
                optimize: bool = True, disable_passes: Sequence[str] = (), keep_tokens: float | None = None,
                calib: Any = None, verify: bool = True, options: dict[str, Any] | None = None,
                prepared: Prepared | None = None, labels: Sequence[str] | None = None,
                max_drop: float | None = None, pass_options: dict[str, Any] | None = None,
                _single: bool = False) -> list[Artifact]:
    """Convert one model for several targets and precisions, capturing it once.

    Artifacts go to ``out/<target>`` (one precision) or ``out/<target>-<precision>``.
    Every artifact is written and verified before a VerificationError is raised for the first failure.
    ``labels`` (class names, one per output class) go to the manifest's ``model.labels``, replacing a zoo
    model's own. ``max_drop`` (accuracy points): accuracy-aware int8, keeping the layers that cost accuracy in
    float (:mod:`edge.accuracy`).
    """
    from edge.converters import get_converter
    targets, precisions = _names(targets, "target"), _names(precisions, "precision")
    converters = [(get_converter(t), p) for t in targets for p in precisions]
    check_option_keys([conv for conv, _ in converters], options or {})
    for conv, p in converters:   # all bad input is reported before any work starts
        conv.check_precision(p)
        conv.require()
        conv.resolve_options(options or {})
    if max_drop is not None:
        from edge.accuracy import check_max_drop
        check_max_drop(max_drop, converters)
    dests = [Path(out) if _single else Path(out) / (conv.name if len(precisions) == 1 else f"{conv.name}-{p}")
             for conv, p in converters]
    for dest in dests:   # every destination is checked before the first conversion writes anything
        check_destination(dest)
    prep = prepared or prepare(model, example_inputs=example_inputs, input_shapes=input_shapes, weights=weights,
                               trust_weights=trust_weights, dynamic_batch=dynamic_batch, optimize=optimize,
                               disable_passes=disable_passes, keep_tokens=keep_tokens,
                               pass_options=pass_options)
    spec = prep.spec
    ref_out = run_reference(spec.module, spec.example_inputs)
    ins, outs = input_specs(spec.example_inputs, dynamic_batch), output_specs(ref_out, dynamic_batch)
    info = spec.info if labels is None else {**spec.info, "labels": check_labels(labels, outs)}
    calibration = None
    if any(p in conv.needs_calibration for conv, p in converters):
        from edge.calibration import load_calibration
        with step("load calibration data"):
            calibration = load_calibration(calib, ins, preprocessing=spec.info.get("preprocessing"),
                                           test_set=spec.entry.test_set if spec.entry else None, model=spec.module)
    artifacts, failures = [], []
    for (conv, precision), dest in zip(converters, dests):
        with staging_dir(dest) as stage:
            job = prep.job(conv, precision, out_dir=stage, outputs=outs, options=conv.resolve_options(options or {}),
                           calibration=calibration)
            passes = job.passes or []
            with step(f"convert to {conv.name} ({precision})"):
                if max_drop is None:
                    result = lower(conv, job)
                else:
                    from edge.accuracy import convert_within_drop
                    result = convert_within_drop(conv, job, spec, max_drop)
            manifest = Manifest(
                target=conv.name, format=result.format or conv.format, runtime=result.runtime or conv.runtime,
                precision=precision, files={f: sha256_path(stage / f) for f in result.files},
                inputs=ins, outputs=outs, source=spec.source, options=job.options,
                details={**result.details, "optimize_passes": passes, "dynamic_batch": dynamic_batch,
                         "capture": job.capture},
                model=info, created=now_iso(),
                versions={"edge": __version__, "torch": torch.__version__, "python": platform.python_version(),
                          **conv.backend_version()})
            if job.calibration is not None:
                manifest.details["calibration"] = job.calibration.record()
            art = Artifact(stage, manifest)
            art.write_manifest()
            if verify:
                try:
                    # a lossy pass (token dropping) changes the numbers by design: the artifact's parity is
                    # checked against the optimized eager module, agreement with the original is recorded
                    lossy = any(p.get("lossy") for p in passes)
                    verify_artifact(art, spec, converter=conv, reference=job.module if lossy else None,
                                    name=str(dest.absolute()),
                                    generated=job.calibration.held_out if job.calibration is not None else None)
                except VerificationError as e:
                    failures.append(e)
            else:
                manifest.status = STATUS_UNVERIFIED
                art.write_manifest()
        art.path = dest.absolute()
        artifacts.append(art)
    if failures:
        raise failures[0]
    return artifacts


def _names(values: Sequence[str] | str, what: str) -> list[str]:
    """Targets or precisions as a list of names; an empty list is bad input, not a run that does nothing."""
    items = [values] if isinstance(values, str) else list(values or [])
    if not all(isinstance(item, str) for item in items):
        raise UsageError(f"{what}s must be names (strings), got {items!r}")
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    if not names:
        raise UsageError(f"no {what} given; name at least one (see `edge targets` for targets and their precisions)")
    return list(dict.fromkeys(names))


def check_option_keys(converters: Sequence[Any], options: dict[str, Any]) -> None:
    """Refuse option keys that no converter of the run declares (a typo would otherwise be ignored)."""
    known = {k for conv in converters for k in conv.options}
    unknown = sorted(set(options) - known)
    if unknown:
        valid = "; ".join(f"{conv.name}: {', '.join(conv.options) or '(none)'}" for conv in converters)
        raise UsageError(f"unknown target option {', '.join(map(repr, unknown))} for "
                         f"{', '.join(dict.fromkeys(c.name for c in converters))}; valid options: {valid}")


def run_reference(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> Any:
    """The model's own forward on the example inputs; a failure there is bad input (exit 2) naming the shapes."""
    try:
        with torch.no_grad():
            return module(*example_inputs)
    except (Exception, SystemExit) as e:
        shapes = ", ".join(",".join(str(d) for d in t.shape) for t in example_inputs)
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        raise UsageError(f"the model's forward failed on input shape {shapes} "
                         f"({len(example_inputs)} input{'s' if len(example_inputs) != 1 else ''}): "
                         f"{type(e).__name__}: {lines[-1][:300]}; pass the --input-shape(s) the model takes") from None


def check_labels(labels: Sequence[str], outs: list[Any]) -> list[str]:
    """``labels`` as a list of strings, one per class of the first output, or a UsageError."""
    labels = [str(x) for x in labels]
    classes = outs[0].shape[-1] if outs and outs[0].shape else None
    if not labels or (isinstance(classes, int) and len(labels) != classes):
        raise UsageError(f"--labels has {len(labels)} names but the model's output {outs[0].name if outs else ''} "
                         f"has {classes} classes; give one name per class, in class order")
    return labels


def converted(conv: Any, job: ConversionJob) -> Any:
    """The pipeline's lower stage (:func:`edge.pipeline.lower`): ``conv`` converts its view of ``job``."""
    return lower(conv, job)


def load(path: str | Path, *, runtime: str | None = None, allow_failed: bool = False, **options: Any):
    """Open an artifact with the runtime its manifest names (or ``runtime``); hashes are checked.

    Example:
        >>> session = edge.load("out/m"); (y,) = session.run(x)
    """
    from edge.runtimes import RUNTIMES
    art = Artifact.open(path)
    if art.manifest.status == STATUS_FAILED and not allow_failed:
        raise ArtifactError(f"{path} failed its parity check ({art.manifest.parity.get('error', 'see manifest')}); "
                            f"it is not loaded. Inspect it with edge.load(path, allow_failed=True)")
    cls = RUNTIMES.get(runtime or art.manifest.runtime)
    key = cls.numeric_key(options, art.manifest)
    check = ((art.manifest.parity or {}).get("runtime_checks") or {}).get(key) if key else None
    if check is not None and check.get("passed") is False and not allow_failed:
        raise ArtifactError(f"{check.get('error') or f'{path} failed its parity check under {key}'}. "
                            f"Load it without {key}, or inspect it with allow_failed=True")
    if key and check is None:
        warnings.warn(f"{path}: {key} changes the numbers and this artifact was checked without it; check it "
                      f"with: edge verify {path} --runtime-option {key}", EdgeWarning, stacklevel=2)
    return cls(art, **options)


def default_inputs(art: Artifact, batch: int = 1, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(t.concrete_shape(batch)).astype(t.dtype) for t in art.manifest.inputs]


def benchmark(artifact: str | Path, *, warmup: int = 10, iters: int = 100, inputs: Sequence[Any] | None = None,
              batch: int = 1, native_profile: bool = True, runtime: str | None = None, **runtime_options: Any):
    """Load an artifact and measure it with the wrapper's latency profiler.

    Returns:
        A :class:`edge.profile.LatencyReport` (``.to_json()`` for a dict).

    Example:
        >>> r = edge.benchmark("out/m", warmup=10, iters=200); r.p50_ms
    """
    from edge.profile import profile_session, reset_peak_rss, rss_mb
    if warmup < 0 or iters < 1:
        raise UsageError(f"--warmup must be >= 0 and --iters >= 1 (got {warmup}, {iters})")
    reset_peak_rss()
    rss0 = rss_mb()[0]
    session = load(artifact, runtime=runtime, **runtime_options)
    try:
        if inputs is None:
            inputs = default_inputs(session.artifact, batch)
        return profile_session(session, list(inputs), warmup=warmup, iters=iters, native=native_profile,
                               rss_before=rss0)
    finally:
        session.close()
