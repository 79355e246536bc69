"""Capture a module once with ``torch.export``; every target of a run shares the program."""
from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edge.artifact import TensorSpec
from edge.errors import ConversionError

BATCH = "batch"


def input_specs(example_inputs: tuple[torch.Tensor, ...], dynamic_batch: bool,
                names: list[str] | None = None) -> list[TensorSpec]:
    names = names or (["input"] if len(example_inputs) == 1 else [f"input{i}" for i in range(len(example_inputs))])
    return [TensorSpec(n, [BATCH if dynamic_batch and i == 0 else int(d) for i, d in enumerate(t.shape)],
                       str(t.dtype).replace("torch.", ""))
            for n, t in zip(names, example_inputs)]


def output_specs(outputs: Any, dynamic_batch: bool) -> list[TensorSpec]:
    flat = flatten_outputs(outputs)
    names = ["output"] if len(flat) == 1 else [f"output{i}" for i in range(len(flat))]
    return [TensorSpec(n, [BATCH if dynamic_batch and i == 0 else int(d) for i, d in enumerate(t.shape)],
                       str(t.dtype).replace("torch.", ""))
            for n, t in zip(names, flat)]


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    flat: list[torch.Tensor] = []
    for o in outputs:
        flat.extend(flatten_outputs(o))
    return flat


# Submodule names the lowered program cannot hold: torch.fx's GraphModule has a ``meta`` attribute, so ExecuTorch
# (and coremltools) fail on ``meta.weight`` ("references nonexistent attribute weight of meta").
RESERVED_NAMES = ("meta",)


@dataclass
class CaptureRecord:
    """How a module was captured: the route that worked (or None) and every failed route's reason."""

    route: str | None
    failed: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"route": self.route or "none (no program: targets convert from the module)"}
        for key in ("failed", "renamed"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        if self.constants:
            out["constants"] = {"count": len(self.constants), "first": self.constants[:4]}
        return out

    def reason(self) -> str:
        return "; ".join(self.failed) or "no route was tried"


def _with_properties(mod: torch.nn.Module, props: dict[str, property]) -> None:
    """Give ``mod`` (only this instance) read-only attributes computed by ``props``, through a subclass."""
    cls = type(mod)
    mod.__class__ = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                                **props})


def rename_reserved(module: torch.nn.Module) -> list[str]:
    """Rename submodules called ``meta`` (:data:`RESERVED_NAMES`) in place; ``forward`` still finds them under
    the old name. Returns the qualified names changed."""
    changed = []
    for path, mod in list(module.named_modules()):
        for name in [n for n in RESERVED_NAMES if n in mod._modules]:
            new = name + "_"
            while new in mod._modules or hasattr(mod, new):
                new += "_"
            mod._modules[new] = mod._modules.pop(name)
            _with_properties(mod, {name: property(lambda self, key=new: self._modules[key])})
            changed.append(f"{path + '.' if path else ''}{name} -> {new}")
    return changed


def scalar_buffers_as_constants(module: torch.nn.Module) -> list[str]:
    """Turn 0-d integer/bool buffers into constants made in ``forward`` (in place). Returns their names.

    torch.export traces buffers as symbolic values, so Python branching on one (EnCodec's padding computed from
    int64 ``stride``/``kernel_size`` buffers) is data-dependent and the capture fails; a tensor made from a
    Python number in ``forward`` is a known constant to it. Exact: the value is the buffer's.
    """
    names = []
    for path, mod in list(module.named_modules()):
        consts = {k: b for k, b in mod._buffers.items()
                  if b is not None and b.dim() == 0 and not b.is_floating_point() and not b.is_complex()}
        if not consts:
            continue
        for k in consts:
            del mod._buffers[k]
        _with_properties(mod, {k: property(lambda self, v=b.item(), dt=b.dtype: torch.tensor(v, dtype=dt))
                               for k, b in consts.items()})
        names += [f"{path + '.' if path else ''}{k}" for k in consts]
    return names


def capture_with_fallbacks(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *,
                           dynamic_batch: bool = False) -> tuple[torch.nn.Module, Any, CaptureRecord]:
    """(module, program or None, record): ``torch.export`` first, then with 0-d integer buffers as constants.

    A submodule named ``meta`` is renamed first (on a copy: ``module`` may be the user's). When no route
    captures, the program is None: targets with a route from the module (OpenVINO, the TorchScript ONNX
    exporter) use it, the others refuse with every route's reason (``record.reason()``).
    """
    import copy
    record = CaptureRecord(route=None)
    if any(n in m._modules for m in module.modules() for n in RESERVED_NAMES):
        module = copy.deepcopy(module)
        record.renamed = rename_reserved(module)
    try:
        program = capture(module, example_inputs, dynamic_batch=dynamic_batch)
        record.route = "torch.export"
        return module, program, record
    except ConversionError as e:
        record.failed.append(f"torch.export: {str(e).split(': ', 1)[-1]}")
    const = copy.deepcopy(module)
    names = scalar_buffers_as_constants(const)
    if names:
        try:
            program = capture(const, example_inputs, dynamic_batch=dynamic_batch)
            record.route, record.constants = "torch.export with 0-d integer buffers as constants", names
            return const, program, record   # re-captures (fp16, int8) start from this form too
        except ConversionError as e:
            record.failed.append(f"torch.export with {len(names)} integer buffer(s) as constants: "
                                 f"{str(e).split(': ', 1)[-1]}")
    return module, None, record


def capture(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *,
            dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export`` with an optional dynamic batch dim on every input."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH, min=1, max=1024)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
        # torch.export specializes size-1 dims: capture with a batch of 2 so the batch stays symbolic
        example_inputs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.shape[0] == 1 else t for t in example_inputs)
    try:
        with torch.no_grad():
            return torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"torch.export could not capture the model: {type(e).__name__}: {first}") from e


def program_digest(program: Any, module: Any = None) -> str:
    """sha256 of an ExportedProgram's graph, signature and every parameter, buffer and constant (name, dtype,
    shape, bytes): equal digests mean the same program was captured. Without a program (no capture route worked,
    the target converts from the module), the module's code (the source files of its classes) and state."""
    h = hashlib.sha256()
    if program is None:
        files = sorted({inspect.getsourcefile(type(m)) or type(m).__qualname__ for m in module.modules()})
        for f in files:
            h.update(f.encode())
            with contextlib.suppress(OSError, TypeError):
                h.update(Path(f).read_bytes())
        tensors = dict(module.state_dict())
    else:
        h.update(str(program.graph_module.code).encode())
        h.update(str(program.graph_signature).encode())
        tensors = {**dict(program.state_dict), **dict(getattr(program, "constants", {}) or {})}
    for name in sorted(tensors):
        h.update(name.encode())
        _hash_value(h, tensors[name])
    return h.hexdigest()


def _hash_value(h: Any, t: Any) -> None:
    """Feed a tensor's dtype, shape and bytes to ``h``; a tensor subclass (torchao's quantized weights) by its
    inner tensors; a script object by its type (all that can be hashed without calling it)."""
    if not isinstance(t, torch.Tensor):
        h.update(type(t).__qualname__.encode())
        return
    h.update(f"{type(t).__qualname__}{t.dtype}{tuple(t.shape)}".encode())
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        inner, ctx = t.__tensor_flatten__()
        h.update(repr(ctx).encode())
        for key in inner:
            _hash_value(h, getattr(t, key))
        return
    flat = t.detach().contiguous().cpu().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes())
