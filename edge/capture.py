"""Capture a module once with ``torch.export``; every target of a run shares the program."""
from __future__ import annotations

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
