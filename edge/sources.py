"""Model intake: zoo names, ``file.py:factory`` / ``package.module:factory`` with weights, saved ``.pt2``.

Everything ends as a :class:`ModelSpec`: an eval-mode module, example inputs and where it came from.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from edge import zoo
from edge.errors import ModelLoadError, UsageError
from edge.zoo import INIT_SEED, built_seeded  # noqa: F401 (part of this module's API)

MAX_INPUT_ELEMENTS = 1 << 28   # 256 M elements (1 GiB of float32): larger example inputs are surely a typo


@dataclass
class ModelSpec:
    """A model ready to capture."""

    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    source: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)   # zoo facts; empty for user models
    entry: Any = None                                    # the zoo ModelEntry, if any
    program: Any = None                                  # ExportedProgram when loaded from .pt2

    @property
    def name(self) -> str:
        return self.source.get("name") or self.source.get("path") or "model"


def parse_shapes(text: str | Sequence[str] | None) -> list[tuple[int, ...]] | None:
    """``"1,3,224,224"`` or ``["1,3,224,224", "1,16"]`` (several inputs) -> list of tuples."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    shapes = []
    for item in items:
        for part in str(item).split(";"):
            pieces = [d.strip() for d in re.split(r"[,x]", part.strip())]
            if not all(re.fullmatch(r"\+?\d+", d) for d in pieces):
                raise UsageError(f"--input-shape {part!r} is not a list of integers; write it like 1,3,224,224")
            dims = tuple(int(d) for d in pieces)
            if any(d <= 0 for d in dims):
                raise UsageError(f"--input-shape {part!r} must list positive sizes, like 1,3,224,224")
            if len(dims) > 8 or math.prod(dims) > MAX_INPUT_ELEMENTS:
                raise UsageError(f"--input-shape {part!r} is too large ({len(dims)} dims, {math.prod(dims):,} "
                                 f"elements; at most 8 dims and {MAX_INPUT_ELEMENTS:,} elements)")
            shapes.append(dims)
    return shapes


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str | Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Load weights from .pt/.pth (state dict or a checkpoint holding one) or .safetensors, onto the CPU.

    ``torch.load`` runs with ``weights_only=True`` unless ``trust`` (the user vouches for the file).
    Checkpoints saved from CUDA tensors load on CPU-only machines; DDP's ``module.`` prefix is dropped.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"weights path {path} is a folder; pass the weights file itself (.pt, .pth or "
                             f".safetensors)")
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({e}); re-save the weights") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            text = str(e)
            if "Unsupported global" in text:
                glob = text.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
                raise ModelLoadError(f"{path} holds Python objects ({glob}), not only tensors; load_state_dict needs "
                                     f"tensors. If you trust this file, pass --trust-weights (trust_weights=True), "
                                     f"or re-save it with torch.save(model.state_dict(), path)") from None
            raise ModelLoadError(f"cannot load weights from {path}: the file is corrupt or not a PyTorch checkpoint "
                                 f"({type(e).__name__})") from None
        sd = obj
        if isinstance(obj, dict):
            for key in ("state_dict", "model_state_dict", "model", "module", "ema"):
                if isinstance(obj.get(key), dict):
                    sd = obj[key]
                    break
        elif isinstance(obj, torch.nn.Module):
            sd = obj.state_dict()
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ModelLoadError(f"{path} holds no state dict of tensors (found {type(obj).__name__}); "
                                 f"save it with torch.save(model.state_dict(), path)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def apply_weights(module: torch.nn.Module, path: str | Path, *, trust: bool = False) -> None:
    sd = load_state_dict(path, trust=trust)
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise ModelLoadError(f"weights in {path} do not fit the model: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {path} do not fit the model: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; check the factory and checkpoint match")


def _import_factory(ref: str):
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if path.is_dir():
            raise ModelLoadError(f"model file {path} is a folder; name a .py file, like models.py:build")
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        name = f"edge_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except (Exception, SystemExit) as e:
            sys.modules.pop(name, None)
            raise ModelLoadError(f"importing {path} failed: {_reason(e)}") from None
    else:
        if not target or not all(part.isidentifier() for part in target.split(".")):
            raise ModelLoadError(f"{ref!r} is neither file.py:factory nor package.module:factory")
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise ModelLoadError(f"cannot import module {target!r}: {e}") from None
        except (Exception, SystemExit) as e:
            raise ModelLoadError(f"importing {target} failed: {_reason(e)}") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        names = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))]
        raise ModelLoadError(f"{target} has no callable {attr!r}; callables there: {', '.join(names[:20])}")
    return fn


def _reason(e: BaseException) -> str:
    """One line for an exception raised by the user's code (SystemExit included)."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1][:300]}" if lines else type(e).__name__


def example_from_shapes(shapes: list[tuple[int, ...]], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g) for s in shapes)


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# Zoo models and factories are built under this torch seed (the caller's RNG state is restored), so one
# built without weights (random init) is rebuilt identically by `edge verify`; the manifest records it.
INIT_RECORD = f"random, built under torch seed {INIT_SEED}"


def _as_tensor(value: Any, index: int) -> torch.Tensor:
    """Example input ``index`` as a tensor (arrays and numbers convert); anything else is a UsageError."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"example input {index} is a {type(value).__name__}, not a tensor ({e}); pass "
                         f"example_inputs as a tuple of tensors, one per model input, e.g. (torch.randn(1, 3, 224, "
                         f"224),)") from None


def resolve(model: Any, *, example_inputs: Sequence[torch.Tensor] | None = None,
            input_shapes: list[tuple[int, ...]] | None = None, weights: str | Path | None = None,
            trust_weights: bool = False) -> ModelSpec:
    """Turn any accepted model source into a :class:`ModelSpec`."""
    info: dict[str, Any] = {}
    entry = None
    program = None
    if isinstance(model, torch.nn.Module):
        module, source = model, {"kind": "module", "name": type(model).__name__}
    elif isinstance(model, (str, Path)) and str(model).endswith(".pt2"):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"exported program {path} does not exist")
        try:
            with _quiet_logger("torch"):   # torch logs a traceback for a corrupt archive before it raises
                program = torch.export.load(str(path))
        except Exception as e:
            raise ModelLoadError(f"{path} is not a loadable torch.export program: {_reason(e)}") from None
        module = program.module()
        source = {"kind": "exported_program", "path": str(path), "sha256": file_sha256(path), "name": path.stem}
        if example_inputs is None and input_shapes is None:
            input_shapes = [tuple(int(d) for d in n.meta["val"].shape)
                            for n in program.graph.nodes if n.op == "placeholder"
                            and n.name in program.graph_signature.user_inputs]
    elif isinstance(model, str) and ":" in model:
        fn = _import_factory(model)
        try:
            module = built_seeded(fn)
        except (Exception, SystemExit) as e:
            raise ModelLoadError(f"calling {model}() failed: {_reason(e)}") from None
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"{model}() returned {type(module).__name__}, not a torch.nn.Module")
        source = {"kind": "factory", "name": model}
        if weights is None:
            source["init"] = INIT_RECORD
    elif isinstance(model, str):
        module, entry = zoo.create_model(model, pretrained=weights is None)   # built under INIT_SEED
        info = entry.info()
        source = {"kind": "zoo", "name": model, "weights": entry.weights}
        if weights is None and not entry.weights:
            source["init"] = INIT_RECORD
        if input_shapes is None and example_inputs is None:
            input_shapes = entry.input_shapes
    else:
        raise UsageError(f"cannot use {type(model).__name__} as a model: pass an nn.Module, a zoo name, "
                         f"'file.py:factory', 'package.module:factory' or a .pt2 file")
    if weights is not None:
        if program is not None:
            raise UsageError("--weights cannot be combined with a .pt2 program (its weights are inside it)")
        apply_weights(module, weights, trust=trust_weights)
        source["weights"] = str(weights)
        source["weights_sha256"] = file_sha256(Path(weights))
    if example_inputs is None:
        if input_shapes is None:
            raise UsageError(f"{source['name']} needs an input shape: pass --input-shape 1,3,224,224 "
                             f"(or example_inputs= in Python)")
        example_inputs = example_from_shapes(input_shapes)
        if entry is not None and entry.test_set is not None and len(input_shapes) == 1:
            x, _ = entry.test_set()
            n = input_shapes[0][0]
            if tuple(x.shape[1:]) == tuple(input_shapes[0][1:]) and len(x) >= n:
                example_inputs = (torch.as_tensor(x[:n]),)
    example_inputs = tuple(_as_tensor(t, i) for i, t in enumerate(example_inputs))
    if program is None:   # an unlifted ExportedProgram module has no train/eval mode
        module = module.eval()
    return ModelSpec(module=module, example_inputs=example_inputs, source=source, info=info,
                     entry=entry, program=program)
