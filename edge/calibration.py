"""Calibration data intake shared by every quantizing target (NNCF's ``Dataset`` idea).

Sources: a folder of images (resized and normalized with the model's preprocessing), a
``.npy``/``.npz`` of input tensors, ``"datafree"`` (images optimised from the model alone, see
:mod:`edge.datafree`; ``"datafree:psaq"`` etc. forces a method), or ``"synthetic"`` (random inputs: the
weakest choice, labelled so in the manifest). For zoo models with a test set, ``"testset"`` uses its
held-out inputs (the default for them).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge.artifact import TensorSpec
from edge.errors import CalibrationError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class CalibrationData:
    """A list of input tuples (numpy, one entry per model input, batch size of the spec)."""

    samples: list[tuple[np.ndarray, ...]]
    kind: str          # "images" | "numpy" | "synthetic" | "testset" | "datafree"
    description: str
    # generated inputs kept out of calibration: verification judges the artifact on them (datafree only)
    held_out: np.ndarray | None = None
    generation: dict[str, Any] | None = None   # how datafree images were made (edge.datafree.Generated.record)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def record(self) -> dict[str, Any]:
        rec = {"kind": self.kind, "samples": len(self.samples), "source": self.description}
        if self.kind == "synthetic":
            rec["warning"] = "random inputs: the weakest calibration; pass --calib with real data or datafree"
        if self.generation is not None:
            rec["generation"] = self.generation
        return rec


def _batch(arr: np.ndarray, spec: TensorSpec, limit: int) -> list[tuple[np.ndarray, ...]]:
    want = spec.concrete_shape()
    per = want[0]
    if tuple(arr.shape[1:]) != tuple(want[1:]):
        raise CalibrationError(f"calibration tensors have sample shape {list(arr.shape[1:])}, the model's input "
                               f"{spec.name!r} takes {list(want[1:])}; save them as an array of shape "
                               f"[N, {', '.join(map(str, want[1:]))}]")
    n = min(len(arr) // per, limit)
    if n == 0:
        raise CalibrationError(f"calibration data holds {len(arr)} samples, fewer than one batch of {per}")
    return [(np.ascontiguousarray(arr[i * per:(i + 1) * per], dtype=spec.dtype),) for i in range(n)]


def load_images(folder: Path, preprocessing: dict[str, Any], spec: TensorSpec, limit: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise CalibrationError("reading an image folder needs Pillow: pip install pillow") from None
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"calibration folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    shape = spec.concrete_shape()
    channels, (h, w) = shape[1], (shape[2], shape[3]) if len(shape) == 4 else (None, None)
    if h is None:
        raise CalibrationError(f"an image folder needs a [N, C, H, W] input; {spec.name!r} is {spec.shape}")
    mean = np.asarray(preprocessing.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
    std = np.asarray(preprocessing.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)
    scale = float(preprocessing.get("scale", 1 / 255))
    out = []
    for f in files[:limit * shape[0]]:
        try:
            img = Image.open(f)
            img = img.convert("L" if channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
        except Exception as e:
            raise CalibrationError(f"calibration file {f} is not a readable image ({e}); remove it from {folder}") from None
        a = np.asarray(img, np.float32) * scale
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        out.append((a - mean) / std)
    return np.stack(out)


def load_calibration(source: Any, inputs: list[TensorSpec], *, preprocessing: dict[str, Any] | None = None,
                     test_set: Any = None, limit: int = 64, seed: int = 0, model: Any = None) -> CalibrationData:
    """Build calibration batches for a model with input specs ``inputs``.

    Args:
        source: a folder of images, a ``.npy``/``.npz`` file, ``"synthetic"``, ``"testset"``, ``"datafree"``
            (or ``"datafree:METHOD"``), or an iterable of arrays / tuples of arrays.
        limit: the most batches to keep.
        model: the ``nn.Module`` (``"datafree"`` optimises its inputs from it).

    Example:
        >>> calib = load_calibration("calib_images/", art.manifest.inputs, preprocessing=entry.preprocessing)
    """
    preprocessing = preprocessing or {}
    if source is None:
        source = "testset" if test_set is not None else "synthetic"
    if isinstance(source, str) and source == "synthetic":
        rng = np.random.default_rng(seed)
        samples = [tuple(rng.standard_normal(s.concrete_shape()).astype(s.dtype) for s in inputs) for _ in range(limit)]
        return CalibrationData(samples, "synthetic", f"{limit} random normal batches")
    if isinstance(source, str) and (source == "datafree" or source.startswith("datafree:")):
        return _datafree(model, inputs, preprocessing, limit, seed=seed, **_datafree_settings(source))
    if type(source).__name__ == "Generated" and hasattr(source, "held_out"):   # edge.calibration.generate's result
        return _from_generated(source, inputs, limit)
    if isinstance(source, str) and source == "testset":
        if test_set is None:
            raise CalibrationError("--calib testset needs a zoo model with a test set (the *_digits models)")
        x, _ = test_set()
        # calibrate on the first half: the second half stays unseen for accuracy checks
        return CalibrationData(_batch(np.asarray(x)[: len(x) // 2], inputs[0], limit), "testset",
                               "first half of the model's held-out test split")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise CalibrationError(f"calibration source {path} does not exist; pass a folder of images, "
                                   f"a .npy/.npz file, or 'synthetic'")
        if path.is_dir():
            if len(inputs) != 1:
                raise CalibrationError("an image folder can calibrate only a single-input model; use a .npz")
            arr = load_images(path, preprocessing, inputs[0], limit)
            return CalibrationData(_batch(arr, inputs[0], limit), "images", str(path))
        if path.suffix in (".npy", ".npz"):
            try:
                data = np.load(path, allow_pickle=False)
            except Exception as e:
                raise CalibrationError(f"cannot read {path}: {e}") from None
            # keys starting with "_" are not inputs (edge calib generate stores _held_out and _record there)
            keys = [] if isinstance(data, np.ndarray) else [k for k in data.files if not k.startswith("_")]
            arrays = [data] if isinstance(data, np.ndarray) else [data[k] for k in keys]
            if len(arrays) != len(inputs):
                raise CalibrationError(f"{path} holds {len(arrays)} array(s); the model takes {len(inputs)} input(s)")
            for a in arrays:   # strings would surface later as a bare ValueError from the dtype cast
                if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                    raise CalibrationError(f"{path} holds an array of dtype {a.dtype}; calibration tensors must "
                                           f"be numbers (save float32 input tensors)")
            per_input = [_batch(a, s, limit) for a, s in zip(arrays, inputs)]
            samples = [tuple(b[0] for b in group) for group in zip(*per_input)]
            calib = CalibrationData(samples, "numpy", str(path))
            if not isinstance(data, np.ndarray) and "_record" in data.files and len(inputs) == 1:
                calib.generation = _stored_record(data, path)
                if calib.generation.get("kind") == "datafree":
                    calib.kind = "datafree"
                if "_held_out" in data.files and len(data["_held_out"]):
                    calib.held_out = np.asarray(data["_held_out"], dtype=inputs[0].dtype)
            return calib
        raise CalibrationError(f"calibration file {path} is neither an image folder nor .npy/.npz")
    samples = [tuple(np.asarray(a) for a in (s if isinstance(s, (list, tuple)) else (s,))) for s in source][:limit]
    if not samples:
        raise CalibrationError("calibration iterable is empty")
    for s in samples:
        if len(s) != len(inputs) or any(not spec.matches(a.shape) for a, spec in zip(s, inputs)):
            raise CalibrationError(f"calibration sample shapes {[list(a.shape) for a in s]} do not match the "
                                   f"model inputs {[t.shape for t in inputs]}")
    return CalibrationData(samples, "numpy", "in-memory samples")


def _stored_record(data: Any, path: Path) -> dict[str, Any]:
    import json
    try:
        rec = json.loads(str(data["_record"]))
    except ValueError:
        raise CalibrationError(f"{path}: its _record entry is not the JSON edge calib generate writes; "
                               f"remove it or regenerate the file") from None
    if not isinstance(rec, dict):
        raise CalibrationError(f"{path}: its _record entry is not a JSON object; remove it or regenerate the file")
    return rec


def _datafree_settings(source: str) -> dict[str, Any]:
    """``"datafree[:psaq][,steps=50][,budget_s=30][,images=16]"`` -> generate() keywords (an item without ``=``
    is the method)."""
    out: dict[str, Any] = {"method": "auto"}
    types = {"steps": int, "images": int, "held_out": int, "budget_s": float, "lr": float, "seed": int}
    for item in filter(None, source.partition(":")[2].split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            out["method"] = key
            continue
        if key not in types:
            raise CalibrationError(f"--calib {source!r}: unknown setting {key!r}; settings: {', '.join(types)} "
                                   f"(e.g. datafree:psaq,steps=100,budget_s=60)")
        try:
            out[key] = types[key](value)
        except ValueError:
            raise CalibrationError(f"--calib {source!r}: {key}={value!r} is not a number") from None
    return out


def _datafree(model: Any, inputs: list[TensorSpec], preprocessing: dict[str, Any], limit: int, *,
              method: str, seed: int, **settings: Any) -> CalibrationData:
    settings.setdefault("seed", seed)
    import torch

    from edge import datafree
    from edge.progress import step
    if not isinstance(model, torch.nn.Module):
        raise CalibrationError("--calib datafree needs the model itself (it optimises inputs from it); "
                               "pass calib='datafree' to edge.convert, or a file from edge calib generate")
    if len(inputs) != 1:
        raise CalibrationError(f"--calib datafree generates one input; this model takes {len(inputs)}: "
                               f"pass a .npz with one array per input")
    spec = inputs[0]
    if not np.issubdtype(np.dtype(spec.dtype), np.floating):
        raise CalibrationError(f"--calib datafree optimises float inputs; {spec.name!r} is {spec.dtype}: "
                               f"pass calibration data instead")
    images = min(settings.pop("images", datafree.DEFAULTS["images"]), limit * spec.concrete_shape()[0])
    with step(f"generate {images} data-free calibration inputs"):
        gen = datafree.generate(model, input_shape=tuple(spec.concrete_shape()), method=method, images=images,
                                preprocessing=preprocessing, on_step=_progress_printer(), **settings)
    return _from_generated(gen, inputs, limit)


def _from_generated(gen: Any, inputs: list[TensorSpec], limit: int) -> CalibrationData:
    if len(inputs) != 1:
        raise CalibrationError(f"data-free images are one input; this model takes {len(inputs)}")
    spec = inputs[0]
    return CalibrationData(_batch(np.asarray(gen.images, spec.dtype), spec, limit), "datafree",
                           f"{len(gen.images)} images generated from the model ({gen.method})",
                           held_out=np.asarray(gen.held_out, spec.dtype), generation=gen.record())


def _progress_printer(every_s: float = 10.0):
    """An on_step callback printing a progress line every ``every_s`` seconds when progress is shown."""
    import sys
    import time

    from edge import progress
    last = [time.perf_counter()]

    def show(i: int, losses: dict[str, float]) -> None:
        if progress.ENABLED and time.perf_counter() - last[0] >= every_s:
            last[0] = time.perf_counter()
            terms = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
            print(f"     step {i}: {terms}", file=sys.stderr, flush=True)
    return show


def generate(model: Any, *, input_shape: tuple[int, ...] | None = None, weights: str | Path | None = None,
             trust_weights: bool = False, method: str | None = "auto", out: str | Path | None = None,
             **settings: Any) -> Any:
    """Generate data-free calibration inputs for ``model`` (see :mod:`edge.datafree`), optionally saved as .npz.

    Args:
        model: an ``nn.Module``, a zoo name or ``"file.py:factory"`` (resolved like ``edge.convert``).
        input_shape: the model's input shape (default: the zoo entry's).
        method: ``"auto"``, ``"psaq"``, ``"spdfq"``, ``"bn-stats"`` or ``"inversion"``.
        out: an ``.npz`` path to write (atomically); ``--calib out.npz`` accepts it.
        **settings: ``images``, ``held_out``, ``steps``, ``budget_s``, ``lr``, ``seed``, ``cache``, ``cache_dir``.

    Returns:
        :class:`edge.datafree.Generated`.

    Example:
        >>> g = edge.calibration.generate("vit_tiny_digits", images=32, budget_s=60, out="calib.npz")
    """
    from edge import datafree
    from edge.progress import step
    from edge.sources import resolve
    spec = resolve(model, input_shapes=[tuple(input_shape)] if input_shape else None, weights=weights,
                   trust_weights=trust_weights)
    if out is not None:   # refuse a bad destination before minutes of generation
        datafree.check_npz_path(out)
    with step("generate data-free calibration inputs"):
        gen = datafree.generate(spec.module, example_inputs=spec.example_inputs, method=method,
                                preprocessing=spec.info.get("preprocessing"), on_step=_progress_printer(),
                                **settings)
    if out is not None:
        datafree.save_npz(out, gen)
    return gen


def held_out_for(manifest: Any) -> np.ndarray | None:
    """The held-out generated inputs a data-free-calibrated artifact was judged on, from the edge cache (None when
    the artifact was not calibrated data-free or the cache no longer holds them), so ``edge verify`` judges it on
    the same kind of inputs again."""
    gen = (manifest.details.get("calibration") or {}).get("generation") or {}
    key = gen.get("cache_key")
    if gen.get("kind") != "datafree" or not isinstance(key, str) or not key.isalnum():
        return None
    from edge.matrix import default_cache_dir
    path = default_cache_dir() / "datafree" / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as d:
            held = np.asarray(d["_held_out"])
    except Exception:      # gone or unreadable: verification falls back to its random inputs
        return None
    spec = manifest.inputs[0]
    return held.astype(spec.dtype) if len(manifest.inputs) == 1 and len(held) else None
