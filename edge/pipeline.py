"""The stages every conversion runs, in one place:
``resolve -> optimize(forms) -> capture -> quantize(recipe) -> lower``; verification and profiling follow in
:mod:`edge.api`.

The SDK (``edge.convert``), the CLI and the bench matrix all call these functions. The pipeline owns every
``torch.export`` of a run: the shared program, captured once per distinct set of pass forms, and the program of a
converter's :class:`~edge.converters.base.Recipe` (fp16 casts, PT2E int8, a copy on the GPU), captured once per
(forms, recipe). A converter declares what it needs (``forms``, ``sources``, ``recipe``) and receives exactly that
in its :class:`~edge.converters.base.ConversionJob`; it never captures or reaches back to the module itself.

Example:
    >>> prep = prepare("vit_tiny_digits")
    >>> job = prep.job(get_converter("onnx"), "fp32", out_dir=stage, outputs=outs)
    >>> result = lower(get_converter("onnx"), job)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from edge.capture import (CaptureRecord, capture, capture_with_fallbacks, flatten_outputs, input_specs,
                          program_digest)
from edge.converters.base import ConversionJob, ConversionResult, Converter
from edge.errors import ConversionError, EdgeError, UsageError
from edge.progress import step
from edge.sources import ModelSpec, resolve


@dataclass
class Captured:
    """The optimized module for one set of pass forms, its program (None if no route captured it) and how."""

    module: torch.nn.Module
    program: Any
    record: CaptureRecord
    recipes: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)   # recipe key -> (program, details)


@dataclass
class Prepared:
    """A resolved model with its optimized copies and captured programs, cached per pass forms and recipe."""

    spec: ModelSpec
    dynamic_batch: bool
    optimize: bool
    disable: tuple[str, ...]
    pass_options: dict[str, Any]
    _cache: dict[tuple, Captured] = field(default_factory=dict)

    def forms_key(self, target: str | Converter) -> tuple:
        """The form each optimize pass takes for ``target``: targets with equal keys share one program."""
        from edge import passes as opt
        if not self.optimize or self.spec.program is not None:
            return ()
        return opt.profile_key(_forms(target), disable=self.disable, options=self.pass_options)

    def captured(self, target: str | Converter) -> Captured:
        """optimize(forms) -> capture for ``target`` (a name, or a converter: its declared forms); done once per
        distinct forms key."""
        from edge import passes as opt
        if self.spec.program is not None:   # a saved .pt2 is used as it is
            return self._cache.setdefault((), Captured(self.spec.module, self.spec.program,
                                                       CaptureRecord(route="saved ExportedProgram")))
        key = self.forms_key(target)
        if key not in self._cache:
            module = self.spec.module
            if self.optimize:
                name = target if isinstance(target, str) else target.name
                with step(f"optimize passes for {name}"):
                    module = opt.optimize(module, forms=_forms(target),
                                          example_inputs=self.spec.example_inputs, disable=self.disable,
                                          **self.pass_options)
            with step("capture with torch.export"):
                module, program, record = capture_with_fallbacks(module, self.spec.example_inputs,
                                                                 dynamic_batch=self.dynamic_batch)
            self._cache[key] = Captured(module, program, record)
        return self._cache[key]

    def program_for(self, target: str) -> tuple[torch.nn.Module, Any, list[dict]]:
        """(optimized module, ExportedProgram, pass record) for ``target``."""
        c = self.captured(target)
        return c.module, c.program, list(getattr(c.module, "edge_passes", []))

    def capture_record(self, target: str) -> dict[str, Any]:
        """How the program for ``target`` was captured (``details["capture"]`` of its artifacts)."""
        return self.captured(target).record.to_dict()

    def job(self, conv: Converter, precision: str, *, out_dir: Path, outputs: list, options: dict[str, Any],
            calibration: Any = None) -> ConversionJob:
        """The pipeline's job for ``conv``/``precision`` (holding the module and the shared program);
        :func:`lower` hands the converter its own view of it."""
        c = self.captured(conv)
        passes = getattr(c.module, "edge_passes", None)
        return ConversionJob(program=c.program, module=c.module, example_inputs=self.spec.example_inputs,
                             inputs=input_specs(self.spec.example_inputs, self.dynamic_batch), outputs=outputs,
                             precision=precision, out_dir=out_dir, options=options,
                             calibration=calibration if precision in conv.needs_calibration else None,
                             model_info=self.spec.info, dynamic_batch=self.dynamic_batch,
                             capture=c.record.to_dict(), passes=None if passes is None else list(passes),
                             recipes=c.recipes)


def _forms(target: str | Converter) -> dict[str, Any]:
    """The pass forms a target name's converter declares, or a converter's own declaration."""
    from edge import passes as opt
    if isinstance(target, str):
        return opt.forms_for(target)
    return opt.resolve_forms(target.forms, owner=f"target {target.name!r}")


def prepare(model: Any, *, example_inputs: Sequence[torch.Tensor] | None = None,
            input_shapes: list[tuple[int, ...]] | None = None, weights: str | Path | None = None,
            trust_weights: bool = False, dynamic_batch: bool = False, optimize: bool = True,
            disable_passes: Sequence[str] = (), keep_tokens: float | None = None,
            pass_options: dict[str, Any] | None = None) -> Prepared:
    """resolve: ``model`` (any source ``convert`` takes, or an already resolved :class:`ModelSpec`) for capture.

    Example:
        >>> prep = edge.prepare("vit_tiny_digits"); module, program, passes = prep.program_for("onnx")
    """
    spec = model if isinstance(model, ModelSpec) else resolve(
        model, example_inputs=example_inputs, input_shapes=input_shapes, weights=weights, trust_weights=trust_weights)
    # pass options (e.g. ``mingru_form="striped"``) reach every pass through OptimizeContext.options
    pass_options = {**(pass_options or {}), **({"keep_tokens": keep_tokens} if keep_tokens is not None else {})}
    if keep_tokens is not None and not 0 < keep_tokens <= 1:
        raise UsageError(f"--keep-tokens {keep_tokens} must be in (0, 1], e.g. 0.5 keeps half the patch tokens")
    return Prepared(spec, dynamic_batch, optimize, tuple(disable_passes), pass_options)


def converter_job(conv: Converter, job: ConversionJob) -> ConversionJob:
    """quantize(recipe): the view of ``job`` that ``conv`` receives.

    ``program`` is the converter's recipe program (captured here, once per forms and recipe key) or the shared
    one; ``module`` is there only when the converter's ``sources`` include ``"module"``.
    """
    recipe = conv.recipe(job)
    program, details = job.program, {}
    if recipe is not None:
        if recipe.key not in job.recipes:
            job.recipes[recipe.key] = _recipe_program(conv, recipe, job)
        program, details = job.recipes[recipe.key]
    module = job.module if "module" in conv.sources else None
    expected = []
    if job.module is not None and conv.wants_expected_outputs(job):
        with torch.no_grad():
            expected = [o.detach() for o in flatten_outputs(job.module(*job.example_inputs))]
    return replace(job, program=program, module=module, recipe=dict(details), expected_outputs=expected)


def _recipe_program(conv: Converter, recipe: Any, job: ConversionJob) -> tuple[Any, dict[str, Any]]:
    details: dict[str, Any] = {}
    job.require_program(conv.name)   # a recipe starts from a model torch.export can capture
    with step(f"{conv.name}: {recipe.key}"):
        if recipe.from_program:   # captured afresh: lowering may have consumed the run's shared program
            source = capture(job.module, job.example_inputs, dynamic_batch=job.dynamic_batch).module()
        else:   # the transform changes its module: a private copy
            source = copy.deepcopy(job.module).eval()
        module = recipe.transform(source, job, details)
        args = tuple(t.to(recipe.device) for t in job.example_inputs)
        try:
            program = capture(module, args, dynamic_batch=job.dynamic_batch)
        except ConversionError as e:
            raise ConversionError(f"the {job.precision} program for {conv.name} ({recipe.key}) could not be "
                                  f"captured: {str(e).split(': ', 1)[-1]}") from e
    details.setdefault("source", f"the module after {recipe.key}, captured by edge's pipeline")
    details["recipe"] = recipe.key
    return program, details


def lower(conv: Converter, job: ConversionJob) -> ConversionResult:
    """lower: ``conv.convert`` on its view of ``job``. An exception that is not edge's becomes a ConversionError
    naming the target and the backend's last line (a backend's traceback ends with the line that says what went
    wrong). The recipe's record is merged into the result's details."""
    view = converter_job(conv, job)
    # what is lowered, before a backend may change the program in place (ExecuTorch's lowering does)
    lowered = {"program_sha256": program_digest(view.program, job.module), "recipe": view.recipe.get("recipe")}
    try:
        result = conv.convert(view)
    except EdgeError:
        raise
    except Exception as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        last = (lines[-1] if lines else "")[:400]
        raise ConversionError(f"the {conv.name} backend failed: {type(e).__name__}: {last or 'no message'}") from e
    result.details = {**view.recipe, **result.details, "lowered": lowered}
    return result
