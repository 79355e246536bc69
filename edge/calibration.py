"""Calibration data intake shared by every quantizing target (NNCF's ``Dataset`` idea).

Sources: a folder of images (resized and normalized with the model's preprocessing), a
``.npy``/``.npz`` of input tensors, or ``"synthetic"`` (random inputs: the weakest choice,
labelled so in the manifest). For zoo models with a test set, ``"testset"`` uses its
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
    kind: str          # "images" | "numpy" | "synthetic" | "testset"
    description: str

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def record(self) -> dict[str, Any]:
        rec = {"kind": self.kind, "samples": len(self.samples), "source": self.description}
        if self.kind == "synthetic":
            rec["warning"] = "random inputs: the weakest calibration; pass --calib with real data"
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
                     test_set: Any = None, limit: int = 64, seed: int = 0) -> CalibrationData:
    """Build calibration batches for a model with input specs ``inputs``.

    Args:
        source: a folder of images, a ``.npy``/``.npz`` file, ``"synthetic"``, ``"testset"``, or an
            iterable of arrays / tuples of arrays.
        limit: the most batches to keep.

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
            arrays = [data] if isinstance(data, np.ndarray) else [data[k] for k in data.files]
            if len(arrays) != len(inputs):
                raise CalibrationError(f"{path} holds {len(arrays)} array(s); the model takes {len(inputs)} input(s)")
            for a in arrays:   # strings would surface later as a bare ValueError from the dtype cast
                if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                    raise CalibrationError(f"{path} holds an array of dtype {a.dtype}; calibration tensors must "
                                           f"be numbers (save float32 input tensors)")
            per_input = [_batch(a, s, limit) for a, s in zip(arrays, inputs)]
            samples = [tuple(b[0] for b in group) for group in zip(*per_input)]
            return CalibrationData(samples, "numpy", str(path))
        raise CalibrationError(f"calibration file {path} is neither an image folder nor .npy/.npz")
    samples = [tuple(np.asarray(a) for a in (s if isinstance(s, (list, tuple)) else (s,))) for s in source][:limit]
    if not samples:
        raise CalibrationError("calibration iterable is empty")
    for s in samples:
        if len(s) != len(inputs) or any(not spec.matches(a.shape) for a, spec in zip(s, inputs)):
            raise CalibrationError(f"calibration sample shapes {[list(a.shape) for a in s]} do not match the "
                                   f"model inputs {[t.shape for t in inputs]}")
    return CalibrationData(samples, "numpy", "in-memory samples")
