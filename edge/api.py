"""The public SDK: convert, load, verify, benchmark. The CLI calls these same functions."""
from __future__ import annotations

import platform
import warnings

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edge import __version__
from edge.artifact import (STATUS_CHECKED_SPEC, STATUS_FAILED, STATUS_UNVERIFIED, STATUS_VERIFIED, Artifact,
                           Manifest, check_destination, now_iso, sha256_path, staging_dir)
from edge.converters.base import ConversionJob
from edge.capture import flatten_outputs, input_specs, output_specs
from edge.pipeline import Prepared, lower, prepare
from edge.errors import ArtifactError, EdgeWarning, UsageError, VerificationError
from edge.progress import step
from edge.sources import ModelSpec


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
            ``disable_passes``, ``keep_tokens``, ``calib``, ``verify``, ``options`` (target options),
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
                max_drop: float | None = None,
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
                               disable_passes=disable_passes, keep_tokens=keep_tokens)
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
        module, _, passes = prep.program_for(conv.name)
        with staging_dir(dest) as stage:
            job = prep.job(conv, precision, out_dir=stage, outputs=outs, options=conv.resolve_options(options or {}),
                           calibration=calibration)
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
                         "capture": prep.capture_record(conv.name)},
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
                    verify_artifact(art, spec, converter=conv, reference=module if lossy else None,
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


def _test_split(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """The unseen half of a zoo model's test set (the first half may calibrate)."""
    if spec.entry is None or spec.entry.test_set is None or len(spec.example_inputs) != 1:
        return None
    x, y = spec.entry.test_set()
    x, y = np.asarray(x), np.asarray(y)
    return x[len(x) // 2:], y[len(y) // 2:]


def verification_batches(spec: ModelSpec, m: Manifest, *, n_random: int = 3,
                         generated: np.ndarray | None = None) -> tuple[list, Any]:
    """The inputs an artifact is checked on: the example, then 16 held-out test samples (zoo models with a test
    set), else 16 held-out ``generated`` (data-free) inputs, else ``n_random`` random batches; returns
    ``(batches, real)`` (``real``: the test or generated samples, or None)."""
    from edge import parity as V
    split = _test_split(spec)
    real = split[0][:16] if split is not None else None
    if real is None and generated is not None and len(generated) and len(m.inputs) == 1:
        real = np.asarray(generated)[:16]
    batches = V.verification_inputs(spec.example_inputs, m.inputs, n_random=n_random, real=real)
    if real is not None:   # real inputs must come in the artifact's static batch size
        batches = [b for b in batches if m.inputs[0].matches(b[0].shape)]
    return batches, real


def verify_artifact(art: Artifact, spec: ModelSpec, *, converter: Any = None, n_random: int = 3,
                    runtime_options: dict[str, Any] | None = None,
                    reference: torch.nn.Module | None = None, name: str | None = None,
                    generated: np.ndarray | None = None) -> dict[str, Any]:
    """Run ``art`` with its runtime against ``spec.module`` in PyTorch; record the result in its manifest.

    ``generated``: held-out data-free inputs (not used to calibrate). A model without a test set is then judged
    on them plus the example input instead of random noise (a test set still wins).

    ``reference`` (the optimized module, when a lossy pass such as token dropping ran) replaces
    ``spec.module`` as the parity reference; agreement with ``spec.module`` is then recorded, not judged,
    under ``parity["vs_original"]``. ``name``: the artifact's final path, for messages (while it is verified in
    its staging folder).

    ``runtime_options`` that change numerics (``Session.NUMERIC_OPTIONS``, e.g. OpenVINO's
    ``precision_hint="bf16"``) are judged by the precision they compute in and recorded apart, under
    ``parity["runtime_checks"]["precision_hint=bf16"]``: the artifact's own record and status stay as they
    are, and a failed check only stops ``edge.load`` with those options.

    Raises VerificationError (after marking the manifest failed) when a metric is out of tolerance.
    """
    from edge import parity as V
    from edge.converters import get_converter
    from edge.runtimes import RUNTIMES

    m = art.manifest
    runtime, options = RUNTIMES.get(m.runtime), dict(runtime_options or {})
    key = runtime.numeric_key(options, m)          # '' when the options keep the artifact's verified numerics
    judged = runtime.judged_precision(m.precision, options)
    conv = converter or get_converter(m.target)
    reason = conv.can_execute_artifact(m) if hasattr(conv, "can_execute_artifact") else conv.can_execute()
    if reason:
        if key:
            return {"passed": None, "skipped": reason, "runtime_options": key}
        m.status, m.parity = STATUS_CHECKED_SPEC, {"passed": None, "skipped": reason}
        art.write_manifest()
        return m.parity
    split = _test_split(spec)
    classifier = m.model.get("task", "classification") == "classification"
    batches, real = verification_batches(spec, m, n_random=n_random, generated=generated)
    input_kind = "example+generated (held-out data-free images)" if real is not None and split is None else None
    ref_module = spec.module if reference is None else reference
    refs = V.reference_outputs(ref_module, batches)
    under = f" under {key}" if key else ""
    with step(f"verify {m.target}/{m.precision}{under} against PyTorch on {len(batches)} inputs"):
        session = runtime(art, **options)
        try:
            gots = [session.run(*b) for b in batches]
            metrics = V.compare(refs, gots, m.outputs, classifier=classifier)
            if split is not None and classifier:
                bs = m.inputs[0].concrete_shape(1)[0]
                x, y = split
                with torch.no_grad():
                    ref_acc = V.accuracy(lambda a: flatten_outputs(ref_module(torch.from_numpy(a)))[0].numpy(),
                                         x, y, bs)
                metrics[m.outputs[0].name]["accuracy"] = V.accuracy(lambda a: session.run(a)[0], x, y, bs)
                metrics[m.outputs[0].name]["reference_accuracy"] = ref_acc
                metrics[m.outputs[0].name]["accuracy_samples"] = (len(x) // bs) * bs
            vs_original = None if reference is None else _agreement_with_original(spec, session, m, batches, gots,
                                                                                  classifier)
        finally:
            session.close()
    checks = dict((m.parity or {}).get("runtime_checks") or {})
    failure = None
    consequence = (f"edge.load refuses {key} for it (it still loads with the runtime's defaults)" if key
                   else V.FAILED_CONSEQUENCE)
    try:
        V.judge(metrics, judged, real_inputs=real is not None, artifact=name or str(art.path), under=key,
                consequence=consequence)
    except VerificationError as e:
        failure = e
    error = None if failure is None else str(failure)
    rec = V.parity_record(metrics, judged, inputs=len(batches), real_inputs=real is not None,
                          passed=failure is None, error=error, input_kind=input_kind)
    if vs_original is not None:
        rec["vs_original"] = vs_original
    if key:
        rec["runtime_options"] = key
        checks[key] = rec
        m.parity = {**(m.parity or {}), "runtime_checks": checks}
    else:
        m.status = STATUS_VERIFIED if failure is None else STATUS_FAILED
        m.parity = {**rec, "runtime_checks": checks} if checks else rec
    art.write_manifest()
    if failure is not None:
        raise failure
    return rec


def _agreement_with_original(spec: ModelSpec, session: Any, m: Manifest, batches: list, gots: list,
                             classifier: bool) -> dict[str, Any]:
    """How far a lossy artifact (e.g. token-dropped) is from the original model: recorded, not judged.

    On a zoo model with a test set: top-1 agreement with the original and both accuracies over the whole set.
    """
    from edge import parity as V
    rec: dict[str, Any] = {"judged": False, "outputs": V.compare(V.reference_outputs(spec.module, batches), gots,
                                                                 m.outputs, classifier=classifier)}
    if classifier and spec.entry is not None and spec.entry.test_set is not None and len(spec.example_inputs) == 1:
        x, y = (np.asarray(a) for a in spec.entry.test_set())
        bs = m.inputs[0].concrete_shape(1)[0]
        n = (len(x) // bs) * bs
        got = np.concatenate([np.asarray(session.run(x[i:i + bs])[0]).argmax(-1) for i in range(0, n, bs)])
        with torch.no_grad():
            orig = np.concatenate([flatten_outputs(spec.module(torch.from_numpy(x[i:i + bs])))[0].argmax(-1).numpy()
                                   for i in range(0, n, bs)])
        rec.update(test_set_top1_agreement=float((got == orig).mean()), test_set_samples=int(n),
                   accuracy=float((got == y[:n]).mean()), original_accuracy=float((orig == y[:n]).mean()))
    return rec


def verify(artifact: str | Path, model: Any = None, *, weights: str | Path | None = None,
           trust_weights: bool = False, runtime_options: dict[str, Any] | None = None,
           trust_source: bool = False) -> dict[str, Any]:
    """Re-run an artifact's parity check. Without ``model`` the reference is rebuilt from the manifest's source.

    An artifact is untrusted input: a zoo name is always rebuilt, but a ``file.py:factory`` or
    ``package.module:factory`` source is only imported, and a ``.pt2`` or weights path the manifest names is
    only read, with ``trust_source=True`` (``edge verify --trust-source``). Otherwise pass ``model`` (and
    ``weights``) yourself.

    Example:
        >>> edge.verify("out/vit-onnx")["passed"]
        True
    """
    from edge.runtimes import RUNTIMES
    art = Artifact.open(artifact)
    RUNTIMES.get(art.manifest.runtime).check_options(dict(runtime_options or {}))   # bad options before any work
    art, prep, reference = reference_for(art, model, weights=weights, trust_weights=trust_weights,
                                         trust_source=trust_source)
    from edge.calibration import held_out_for
    return verify_artifact(art, prep.spec, runtime_options=runtime_options, reference=reference,
                           generated=held_out_for(art.manifest))


def reference_for(art: Artifact, model: Any = None, *, weights: str | Path | None = None,
                  trust_weights: bool = False, trust_source: bool = False
                  ) -> tuple[Artifact, Prepared, torch.nn.Module | None]:
    """Rebuild what ``art`` was converted from: ``(art, Prepared, reference)``.

    The Prepared model is resolved from the manifest's source (within what ``trust_source`` allows, see
    :func:`verify`) or from ``model``, with the artifact's input shapes and the optimize passes it records, so
    ``prepared.program_for(target)`` captures the module the converter got. ``reference`` is the optimized
    module when a lossy pass ran (the parity reference), else None.
    """
    if model is None:
        model, weights = _reference_from_source(art, weights, trust_source)
    from edge import passes as opt
    shapes = [tuple(t.concrete_shape(1)) for t in art.manifest.inputs]
    applied = art.manifest.details.get("optimize_passes", [])
    names = {p.get("pass") for p in applied}
    lossy = [p for p in applied if p.get("lossy")]
    prep = prepare(model, input_shapes=shapes, weights=weights, trust_weights=trust_weights,
                   dynamic_batch=bool(art.manifest.details.get("dynamic_batch")), optimize=bool(applied),
                   disable_passes=[p.name for p in opt.list_passes() if p.name not in names])
    spec = prep.spec
    if tuple(spec.example_inputs[0].shape) != shapes[0]:
        from edge.sources import example_from_shapes
        spec.example_inputs = example_from_shapes(shapes)
    reference = None
    if lossy:   # rebuild the optimized reference the artifact was checked against (e.g. token dropping)
        options = {k: v for p in lossy for k, v in p.get("options", {}).items()}
        reference = opt.optimize(spec.module, target=art.manifest.target, example_inputs=spec.example_inputs,
                                 **options)
        prep.pass_options.update(options)
    return art, prep, reference


def _reference_from_source(art: Artifact, weights: str | Path | None, trust: bool) -> tuple[Any, Any]:
    """The model (and weights) to rebuild ``art``'s reference from its manifest, within what may be trusted."""
    from edge.sources import file_sha256
    from edge.zoo import list_models
    src, where = art.manifest.source, art.path
    kind, name = src.get("kind"), src.get("name")
    if kind == "module":
        raise UsageError(f"{where} was built from an in-memory module; pass the model: edge.verify(path, model) "
                         f"or edge verify {where} --model file.py:factory")
    if kind not in ("zoo", "factory", "exported_program"):
        raise UsageError(f"{where}'s manifest names no model source edge can rebuild (source kind {kind!r}); "
                         f"pass the model with --model")
    if kind == "zoo" and (not isinstance(name, str) or name not in list_models()):
        raise UsageError(f"{where}'s manifest names zoo model {name!r}, which this edge does not have "
                         f"(`edge models` lists them); pass the model with --model")
    if kind != "zoo" and not trust:
        what = f"import and run {name!r}" if kind == "factory" else f"read {src.get('path')!r}"
        raise UsageError(f"{where} names its model as {kind} {name!r}; rebuilding it would {what}, which the "
                         f"artifact chose. Pass --trust-source if you trust where this artifact came from, or "
                         f"give the model yourself with --model (and --weights)")
    if kind in ("zoo", "factory") and not src.get("weights") and weights is None and "init" not in src:
        raise UsageError(f"{where} was built from {name}'s random initialization by an edge that "
                         f"did not record its seed, so its reference cannot be rebuilt; pass the weights "
                         f"(--weights) or the model (edge.verify(path, model))")
    if weights is None and src.get("weights_sha256"):   # built with the user's own weights file
        if not trust:
            raise UsageError(f"{where} was built with the weights {src.get('weights')!r}; pass them with "
                             f"--weights (or --trust-source to read the path the manifest names)")
        weights = src.get("weights")
        if not isinstance(weights, str) or not Path(weights).is_file():
            raise UsageError(f"the weights {weights!r} {where} was built with are not there any more; "
                             f"pass them with --weights")
        if file_sha256(Path(weights)) != src["weights_sha256"]:
            raise UsageError(f"the weights at {weights} changed since {where} was built (sha256 differs); "
                             f"pass the weights it was built with (--weights)")
    model = src.get("path") if kind == "exported_program" else name
    if kind == "exported_program" and not isinstance(model, str):
        raise UsageError(f"{where}'s manifest names no .pt2 path; pass the model with --model")
    return model, weights


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
