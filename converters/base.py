"""The converter interface every target implements."""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edge.errors import MissingBackendError, UnknownNameError

if TYPE_CHECKING:
    import torch
    from edge.artifact import TensorSpec
    from edge.calibration import CalibrationData


@dataclass
class ConversionJob:
    """What a converter gets: the program captured once per run, plus everything around it.

    Attributes:
        program: the ExportedProgram captured from ``module`` (shared by every target of a run).
        module: the optimized eager module the program was captured from (some backends
            convert better from the module; record which in ``ConversionResult.details``).
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

    def require_program(self, target: str) -> Any:
        """``program``, or a ConversionError listing why no capture route worked (this target needs one)."""
        if self.program is not None:
            return self.program
        from edge.errors import ConversionError
        failed = "; ".join(self.capture.get("failed", [])) or "no program was captured"
        raise ConversionError(f"{target} converts from a torch.export program and every capture route failed: "
                              f"{failed}. Targets that convert from the module (openvino, onnx) may still work")


@dataclass
class ConversionResult:
    """What a converter returns. ``files`` lists paths relative to ``out_dir``, main file first."""

    files: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    runtime: str | None = None   # overrides Converter.runtime (e.g. the ONNX-on-CUDA route)
    format: str | None = None


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
    options: ClassVar[dict[str, tuple[Any, ...]]] = {}  # option -> allowed values (first is default)

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
        """Fill defaults and validate values of this target's options; other keys are ignored."""
        out = {}
        for key, allowed in self.options.items():
            value = given.get(key)
            if value is None:
                value = allowed[0] if allowed else None
            elif allowed and value not in allowed:
                raise UnknownNameError(f"value for {self.name} option {key!r}", str(value), [str(a) for a in allowed])
            out[key] = value
        return out

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
KEEP_FLOAT: tuple = ()


def kept_float(job: ConversionJob) -> set[str]:
    """The module names ``job`` must keep in float (option ``keep_float``; a string is one name)."""
    value = job.options.get("keep_float") or []
    return {value} if isinstance(value, str) else {str(v) for v in value}


def in_kept(scopes: tuple[str, ...] | list[str], kept: set[str]) -> bool:
    """Does a node whose module scopes are ``scopes`` belong to a module kept in float?"""
    return bool(kept) and any(s in kept for s in scopes)
