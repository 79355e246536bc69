"""Verification: every artifact is run by its own runtime and compared with PyTorch (:mod:`edge.parity` holds the
metrics and tolerances); the result is the manifest's parity record (:class:`edge.parity.ParityReport`).

The steps: the inputs (:func:`verification_batches`: the example, then held-out test or data-free samples, else
random ones), the reference (the model, or the optimized one after a lossy pass; :func:`reference_for` rebuilds it
from a manifest within what may be trusted), the measurement (:func:`_measure`), the verdict (``parity.judge``,
every failing output at once) and the record (:func:`_record`).

Example:
    >>> edge.verify("out/vit-onnx")["passed"]
    True
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.artifact import STATUS_CHECKED_SPEC, STATUS_FAILED, STATUS_VERIFIED, Artifact, Manifest
from edge.capture import flatten_outputs
from edge.errors import UsageError, VerificationError
from edge.pipeline import Prepared, prepare
from edge.progress import step
from edge.sources import ModelSpec


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
    from edge.runtimes import RUNTIMES
    m = art.manifest
    runtime, options = RUNTIMES.get(m.runtime), dict(runtime_options or {})
    key = runtime.numeric_key(options, m)          # '' when the options keep the artifact's verified numerics
    reason = _cannot_run_here(art, converter)
    if reason:
        if key:
            return {"passed": None, "skipped": reason, "runtime_options": key}
        m.status, m.parity = STATUS_CHECKED_SPEC, V.ParityReport(passed=None, skipped=reason).to_dict()
        art.write_manifest()
        return m.parity
    measured = _measure(art, spec, runtime, options, key, n_random=n_random, reference=reference,
                        generated=generated)
    judged = runtime.judged_precision(m.precision, options)
    consequence = (f"edge.load refuses {key} for it (it still loads with the runtime's defaults)" if key
                   else V.FAILED_CONSEQUENCE)
    failure = None
    try:
        V.judge(measured.metrics, judged, real_inputs=measured.real, artifact=name or str(art.path), under=key,
                consequence=consequence)
    except VerificationError as e:
        failure = e
    report = V.ParityReport(passed=failure is None, precision=judged,
                            tolerance=asdict(V.tolerance_for(judged)), inputs=measured.inputs,
                            input_kind=measured.input_kind, outputs=measured.metrics,
                            error=None if failure is None else str(failure), runtime_options=key or None,
                            vs_original=measured.vs_original)
    _record(art, report, key)
    if failure is not None:
        raise failure
    return report.to_dict()


def _cannot_run_here(art: Artifact, converter: Any = None) -> str | None:
    """Why this machine cannot run ``art`` (its converter says: CoreML off macOS, CUDA without a GPU), or None."""
    from edge.converters import get_converter
    conv = converter or get_converter(art.manifest.target)
    return conv.can_execute_artifact(art.manifest) if hasattr(conv, "can_execute_artifact") else conv.can_execute()


@dataclass
class _Measured:
    metrics: dict[str, dict[str, Any]]
    inputs: int
    real: bool
    input_kind: str
    vs_original: dict[str, Any] | None


def _measure(art: Artifact, spec: ModelSpec, runtime: Any, options: dict[str, Any], key: str, *, n_random: int,
             reference: torch.nn.Module | None, generated: np.ndarray | None) -> _Measured:
    """Run the artifact and the reference on the verification inputs: metrics per output, with test-set accuracy
    where the zoo model has a test set, and agreement with the original when a lossy pass ran."""
    from edge import parity as V
    m = art.manifest
    split = _test_split(spec)
    classifier = m.model.get("task", "classification") == "classification"
    batches, real = verification_batches(spec, m, n_random=n_random, generated=generated)
    kind = ("example+generated (held-out data-free images)" if real is not None and split is None else
            "test-set" if real is not None else "example+random")
    ref_module = spec.module if reference is None else reference
    refs = V.reference_outputs(ref_module, batches)
    under = f" under {key}" if key else ""
    with step(f"verify {m.target}/{m.precision}{under} against PyTorch on {len(batches)} inputs"):
        session = runtime(art, **options)
        try:
            gots = [session.run(*b) for b in batches]
            metrics = V.compare(refs, gots, m.outputs, classifier=classifier)
            if split is not None and classifier:
                metrics[m.outputs[0].name].update(_test_accuracy(session, ref_module, m, split))
            vs_original = None if reference is None else _agreement_with_original(spec, session, m, batches, gots,
                                                                                  classifier)
        finally:
            session.close()
    return _Measured(metrics, len(batches), real is not None, kind, vs_original)


def _test_accuracy(session: Any, ref_module: torch.nn.Module, m: Manifest, split: tuple) -> dict[str, Any]:
    """The artifact's and the reference's accuracy on the held-out test split."""
    from edge import parity as V
    bs = m.inputs[0].concrete_shape(1)[0]
    x, y = split
    with torch.no_grad():
        ref_acc = V.accuracy(lambda a: flatten_outputs(ref_module(torch.from_numpy(a)))[0].numpy(), x, y, bs)
    return {"accuracy": V.accuracy(lambda a: session.run(a)[0], x, y, bs), "reference_accuracy": ref_acc,
            "accuracy_samples": (len(x) // bs) * bs}


def _record(art: Artifact, report: Any, key: str) -> None:
    """Write ``report`` into the manifest: the artifact's own check sets its status; a check under numeric
    runtime options goes under ``runtime_checks`` and leaves the status alone."""
    m = art.manifest
    checks = dict((m.parity or {}).get("runtime_checks") or {})
    rec = report.to_dict()
    if key:
        checks[key] = rec
        m.parity = {**(m.parity or {}), "runtime_checks": checks}
    else:
        m.status = STATUS_VERIFIED if report.passed else STATUS_FAILED
        m.parity = {**rec, "runtime_checks": checks} if checks else rec
    art.write_manifest()


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
