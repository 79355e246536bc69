"""One small error hierarchy. Every message says what was wrong and what to do.

The CLI maps ``exit_code`` to the process exit status: 2 for bad input, 1 for an
artifact that could not be produced or failed its parity check.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class EdgeError(Exception):
    """Base class of every error edge raises on purpose."""

    exit_code = 2


class EdgeWarning(UserWarning):
    """A warning edge gives on purpose (the CLI prints these; other packages' warnings only with --verbose)."""


class UsageError(EdgeError):
    """Bad arguments: a flag, shape or option that cannot be used."""


class UnknownNameError(UsageError, KeyError):
    """A name (target, runtime, model, precision, pass) that is not registered."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        close = difflib.get_close_matches(name, self.choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint} available: {', '.join(self.choices) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class MissingBackendError(EdgeError):
    """A backend package is not installed."""

    def __init__(self, package: str, extra: str, what: str = ""):
        self.package, self.extra = package, extra
        for_what = f" for {what}" if what else ""
        super().__init__(
            f"{package} is not installed{for_what}; install it with: pip install 'edge[{extra}]'"
        )


class PluginError(EdgeError):
    """A registered target, runtime or pass could not be imported."""


class ModelLoadError(EdgeError):
    """The model source or its weights could not be loaded."""


class InputError(UsageError):
    """Inputs given to a session do not match the artifact's input spec."""


class CalibrationError(UsageError):
    """Calibration data is missing, empty or of the wrong shape."""


class ArtifactError(EdgeError):
    """An artifact folder is missing, incomplete, tampered with, or failed verification."""


class OutputPathError(UsageError):
    """The output folder cannot be written."""


class PlatformError(EdgeError):
    """The artifact needs hardware or an OS this machine lacks (macOS for CoreML, CUDA)."""


class RuntimeLoadError(EdgeError):
    """The runtime could not load or compile an artifact (with the options given)."""

    exit_code = 1


class ConversionError(EdgeError):
    """The backend could not convert the model."""

    exit_code = 1


class VerificationError(EdgeError):
    """The artifact's outputs differ from the PyTorch reference beyond tolerance.

    Attributes:
        output: the (first) output that failed; metric: which check; value, limit: measured and allowed;
        failures: every (output, metric, value, limit) outside tolerance.
    """

    exit_code = 1

    def __init__(self, message: str, *, output: str = "", metric: str = "", value: float = 0.0,
                 limit: float = 0.0, artifact: str = ""):
        self.output, self.metric, self.value, self.limit, self.artifact = output, metric, value, limit, artifact
        self.failures: list[tuple[str, str, float, float]] = [(output, metric, value, limit)] if metric else []
        super().__init__(message)
