"""The converter interface every target implements."""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from edge.errors import MissingBackendError, UnknownNameError

if TYPE_CHECKING:
    import torch
    from edge.artifact import TensorSpec
    from edge.calibration import CalibrationData


@dataclass
class ConversionJob:
    """What a converter gets: the program the pipeline captured for it, plus everything around it.

    The pipeline (:mod:`edge.pipeline`) owns every capture: the run's shared program, and the program of a
    converter's :class:`Recipe` (fp16 casts, PT2E int8, a device copy), which it captures and hands over
    as ``program``. ``module`` is given only to converters whose ``sources`` include ``"module"``.

    Attributes:
        program: the ExportedProgram to lower (None when no capture route worked; see ``capture``).
        module: the optimized eager module the program was captured from, for converters that declare
            ``"module"`` in ``sources`` (OpenVINO's RNN path, the TorchScript ONNX fallback); else None.
        example_inputs: the example inputs, torch tensors.
        inputs/outputs: names, shapes (dynamic dims as strings) and dtypes.
        precision: one of the converter's ``precisions``.
        out_dir: an empty staging folder; write every file of the artifact here.
        options: target-specific options (``--coreml-target``, ``--device`` ...), already validated.
        calibration: calibration batches for static quantization, or None.
        model_info: zoo facts (task, num_classes, preprocessing); empty for user models.
    """

    program: Any
    module: "torch.nn.Module"
    example_inputs: tuple
    inputs: list["TensorSpec"]
    outputs: list["TensorSpec"]
    precision: str
    out_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    calibration: "CalibrationData | None" = None
    model_info: dict[str, Any] = field(default_factory=dict)
    dynamic_batch: bool = False
    capture: dict[str, Any] = field(default_factory=dict)   # how ``program`` was captured (CaptureRecord)
    passes: list[dict[str, Any]] | None = None   # the optimize passes' record (None: optimize was off)
    # the optimized module's outputs on the example, for converters whose ``wants_expected_outputs(job)`` is true
    expected_outputs: list[Any] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)   # what the converter's recipe did (manifest details)
    # the pipeline's programs of this run's recipes, by recipe key (shared by the jobs of one captured program)
    recipes: dict[str, Any] = field(default_factory=dict, repr=False)

    def require_program(self, target: str) -> Any:
        """``program``, or a ConversionError listing why no capture route worked (this target needs one)."""
        if self.program is not None:
            return self.program
        from edge.errors import ConversionError
        failed = "; ".join(self.capture.get("failed", [])) or "no program was captured"
        raise ConversionError(f"{target} converts from a torch.export program and every capture route failed: "
                              f"{failed}. Targets that convert from the module (openvino, onnx) may still work")


@dataclass(frozen=True)
class Option:
    """A target option, declared as data: the CLI builds its flag (``--name-with-dashes``) from it.

    Attributes:
        default: the value when the option is not given (None: unset).
        choices: the allowed values; empty means any value of ``kind``.
        help: one line for ``edge convert --help``.
        kind: the value's type when there are no choices (``int``, ``str``, ``list`` of names ...);
            inferred from ``default`` when left None.

    Example:
        >>> Option(18, (17, 18, 19), "ONNX opset").check("onnx", "opset", 18)
        18
    """

    default: Any = None
    choices: tuple = ()
    help: str = ""
    kind: type | None = None

    @property
    def type(self) -> type:
        return self.kind or (type(self.default) if self.default is not None else str)

    def check(self, target: str, key: str, value: Any) -> Any:
        """``value`` if allowed (None gives the default); else an UnknownNameError listing the choices."""
        if value is None:
            return list(self.default) if isinstance(self.default, (list, tuple)) else self.default
        if self.choices and value not in self.choices:
            raise UnknownNameError(f"value for {target} option {key!r}", str(value), [str(c) for c in self.choices])
        if self.type is list:
            return [value] if isinstance(value, str) else [str(v) for v in value]
        return value

    def parse(self, text: str) -> Any:
        """A command-line string as this option's value (a choice whose text matches, a number, a list)."""
        for choice in self.choices:
            if str(choice).lower() == text.lower():
                return choice
        if self.type is list:
            return [t.strip() for t in text.split(",") if t.strip()]
        if self.type in (int, float):
            try:
                return self.type(text)
            except ValueError:
                return text   # check() names the valid choices
        return text


@dataclass
class ConversionResult:
    """What a converter returns. ``files`` lists paths relative to ``out_dir``, main file first."""

    files: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    runtime: str | None = None   # overrides Converter.runtime (e.g. the ONNX-on-CUDA route)
    format: str | None = None


@dataclass(frozen=True)
class Recipe:
    """How a precision turns the optimized model into the program a converter lowers.

    The pipeline runs ``transform(module, job, details)`` on a private copy and captures what it returns (with
    the example inputs moved to ``device``), so every ``torch.export`` of a run happens in one place and a
    program is reused for every conversion with the same forms and recipe ``key``.

    Attributes:
        key: what makes two recipes' programs equal (e.g. ``"pt2e-int8"`` plus the options it reads).
        transform: ``(module, job, details) -> module``; writes what it did into ``details`` (manifest).
        from_program: the transform gets the run's captured program as a module (``program.module()``, as
            PT2E quantization wants) instead of the eager module.
        device: where the example inputs go for the capture.
    """

    key: str
    transform: Callable[..., Any]
    from_program: bool = False
    device: str = "cpu"


class Converter(ABC):
    """Base class of a target.

    Subclasses set the class attributes and implement :meth:`convert`. Backend packages
    are imported inside ``convert`` (never at module import) and checked with
    :meth:`require`, which turns a missing package into a MissingBackendError naming the extra.
    """

    name: ClassVar[str]
    format: ClassVar[str]
    runtime: ClassVar[str]
    extra: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    needs_calibration: ClassVar[tuple[str, ...]] = ()   # precisions that use calibration data
    options: ClassVar[dict[str, Option]] = {}           # target options, declared as data (CLI flags too)
    # What convert() starts from: "program" (the pipeline's ExportedProgram), plus "module" for converters that
    # can also convert the eager module (a backend's own frontend, or a fallback when no program was captured).
    sources: ClassVar[tuple[str, ...]] = ("program",)
    # Pass forms this target wants (``edge.passes.list_forms()``: attention, rnn, mingru_chunk ...); forms
    # not named take their defaults. Targets whose forms agree share one captured program.
    forms: ClassVar[dict[str, Any]] = {}

    def missing(self) -> str | None:
        """The first required package that is not installed, or None."""
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return mod
        return None

    def require(self) -> None:
        mod = self.missing()
        if mod is not None:
            raise MissingBackendError(mod, self.extra, f"the {self.name} target")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UnknownNameError(f"precision for target {self.name!r}", precision, self.precisions)

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and validate values of this target's options; keys of other targets are left to them
        (``edge.api.check_option_keys`` refuses keys no target of the run declares)."""
        return {key: opt.check(self.name, key, given.get(key)) for key, opt in self.options.items()}

    def recipe(self, job: ConversionJob) -> Recipe | None:
        """The :class:`Recipe` for ``job`` (its precision and options), or None to lower the run's shared program."""
        return None

    def wants_expected_outputs(self, job: ConversionJob) -> bool:
        """Does ``convert`` need ``job.expected_outputs`` (e.g. to bundle them with the program)? The pipeline runs
        the module once more only then."""
        return False

    def can_execute(self) -> str | None:
        """Why artifacts of this target cannot run on this machine (None if they can)."""
        return None

    @abstractmethod
    def convert(self, job: ConversionJob) -> ConversionResult:
        """Write the artifact's model file(s) into ``job.out_dir`` and describe them."""

    def backend_version(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version
        out = {}
        for mod in self.requires:
            try:
                out[mod] = version(mod)
            except PackageNotFoundError:
                pass
        return out


# Option ``keep_float``: PyTorch module names (``blocks.3.mlp.fc1``) whose ops stay in float when the target
# quantizes (``--max-drop`` fills it from edge's debugger; users may pass it too). Declared by the quantizing
# targets as ``"keep_float": KEEP_FLOAT``; the value is a list of names.
KEEP_FLOAT = Option((), help="PyTorch module names kept in float when quantizing (comma-separated)", kind=list)


def kept_float(job: ConversionJob) -> set[str]:
    """The module names ``job`` must keep in float (option ``keep_float``; a string is one name)."""
    value = job.options.get("keep_float") or []
    return {value} if isinstance(value, str) else {str(v) for v in value}


# ``"blocks.3" + OWN_OPS`` keeps only the ops directly in ``blocks.3`` (its residual adds, a concat) in float, not
# those of its submodules: a container module's own error is kept without giving up its whole block.
OWN_OPS = ":own"


def in_kept(scopes: tuple[str, ...] | list[str], kept: set[str]) -> bool:
    """Does a node whose module scopes are ``scopes`` (outermost first) belong to a module kept in float?"""
    return bool(kept) and (any(s in kept for s in scopes) or (bool(scopes) and scopes[-1] + OWN_OPS in kept))
