"""The model zoo: one decorator registers a model, a variant is a small function (timm's pattern).

Example:
    >>> from edge.zoo import create_model, list_models
    >>> model, entry = create_model("vit_tiny_digits")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from edge.errors import ModelLoadError
from edge.registry import Registry

WEIGHTS_DIR = Path(__file__).parent / "weights"
# Modules that define zoo entries; imported on first lookup.
_MODULES = ("edge.zoo.vit", "edge.zoo.visiongru", "edge.zoo.gru", "edge.zoo.digits", "edge.zoo.shapes")


@dataclass
class ModelEntry:
    """A zoo model: how to build it and what a converter or calibrator needs to know about it.

    Attributes:
        input_shapes: default input shape(s), batch first.
        preprocessing: ``{"size": [h, w], "mean": [...], "std": [...], "channels": c}`` for image inputs.
        weights: bundled safetensors file name under ``edge/zoo/weights`` (None: random init).
        test_set: returns ``(inputs, labels)`` numpy arrays for models trained here (digits).
        test_shapes: smaller input shapes the conformance suite uses, for models that take any
            resolution or sequence length (the architecture and code path stay the same).
        same_as: another zoo model with the identical architecture (the conformance suite runs one of them).
    """

    name: str
    factory: Callable[..., torch.nn.Module]
    input_shapes: list[tuple[int, ...]]
    task: str = "classification"
    num_classes: int | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    test_set: Callable[[], tuple[Any, Any]] | None = None
    labels: list[str] | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    test_shapes: list[tuple[int, ...]] | None = None
    same_as: str | None = None

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "num_classes": self.num_classes,
                "preprocessing": self.preprocessing, "labels": self.labels,
                "has_test_set": self.test_set is not None}


# Models without weights are built under this torch seed (zoo models and user factories alike), so the same
# source gives the same model and an artifact's reference can be rebuilt from its manifest.
INIT_SEED = 0


def built_seeded(build: Callable[[], Any]) -> Any:
    """``build()`` under ``torch.manual_seed(INIT_SEED)``, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return build()


MODELS: Registry[ModelEntry] = Registry("model", "edge.models", modules=_MODULES)


def register_model(name: str, *, input_shape: tuple[int, ...] | list[tuple[int, ...]], **kw: Any):
    """Decorator: register a factory function as zoo model ``name``."""
    shapes = input_shape if isinstance(input_shape, list) else [input_shape]

    def deco(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        MODELS.register(name, ModelEntry(name=name, factory=fn, input_shapes=[tuple(s) for s in shapes],
                                         description=kw.pop("description",
                                                            (fn.__doc__ or "").strip().split("\n")[0]), **kw))
        return fn
    return deco


def list_models(tag: str | None = None) -> list[str]:
    return sorted(n for n, e in MODELS.items() if tag is None or tag in e.tags)


def get_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


def create_model(name: str, *, pretrained: bool = True, **kwargs: Any) -> tuple[torch.nn.Module, ModelEntry]:
    """Build zoo model ``name`` in eval mode, with its bundled weights when it has them; the rest is initialized
    under :data:`INIT_SEED` (so the same name gives the same model, and the caller's RNG is left alone)."""
    entry = get_entry(name)
    model = built_seeded(lambda: entry.factory(**kwargs))
    if pretrained and entry.weights:
        path = WEIGHTS_DIR / entry.weights
        if not path.is_file():
            raise ModelLoadError(f"bundled weights {path} for {name!r} are missing; retrain them with "
                                 f"`python -m edge.zoo.digits --train` or reinstall edge")
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(path)))
    return model.eval(), entry
