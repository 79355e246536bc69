"""``vit_shapes``: a 6-block ViT trained on a generated 10-class RGB shapes-and-textures task (no download).

The data set is drawn here, procedurally, from a fixed seed: 32x32 RGB images of one figure (filled or hollow
circle, filled or hollow square, triangle, plus, cross, horizontal / vertical stripes, checkerboard) with a random
colour on a random background colour, random position, size, stroke width and stripe period, a random brightness
gradient and Gaussian pixel noise. 12,000 images: the first 10,000 train, the last 2,000 are the test set (its first
half may calibrate, its second half judges accuracy, as for the digits models). Retrain with::

    python -m edge.zoo.shapes --train

which rewrites ``weights/vit_shapes.safetensors`` and records its test accuracy and training time in
``weights/vit_shapes.json`` (seed 0, 10 epochs: 1,533 s on one thread of a loaded 2-core machine; test accuracy 0.6635).
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from edge.zoo import WEIGHTS_DIR, register_model
from edge.zoo.vit import VisionTransformer

SIZE = 32
N_TRAIN, N_TEST = 10_000, 2_000
DATA_SEED = 1234
LABELS = ["circle", "ring", "square", "frame", "triangle", "plus", "cross", "hstripes", "vstripes", "checker"]
PREPROCESSING = {"size": [SIZE, SIZE], "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                 "scale": 1 / 255, "note": "generated RGB shapes (edge.zoo.shapes)"}
TRAIN = {"epochs": 10, "lr": 3e-3, "batch": 128, "seed": 0}


def _masks(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Binary figure masks [N, H, W] for class ids ``label``, with random position, size, stroke and period."""
    n = len(label)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx, cy = (rng.uniform(9, 23, (2, n, 1, 1))).astype(np.float32)
    r = rng.uniform(5, 10, (n, 1, 1)).astype(np.float32)
    t = rng.uniform(1.0, 2.2, (n, 1, 1)).astype(np.float32)          # half stroke width
    period = rng.integers(2, 5, (n, 1, 1)).astype(np.float32)
    dx, dy = xx - cx, yy - cy
    d, box = np.sqrt(dx ** 2 + dy ** 2), np.maximum(np.abs(dx), np.abs(dy))
    side = 0.85 * r
    figures = [   # drawn lazily: each image evaluates only its own class
        lambda: d <= r,                                                              # circle
        lambda: np.abs(d - r) <= t,                                                  # ring
        lambda: box <= side,                                                         # square
        lambda: np.abs(box - side) <= t,                                             # frame (hollow square)
        lambda: (dy >= -r) & (dy <= 0.7 * r) & (np.abs(dx) <= 0.6 * (dy + r)),       # triangle
        lambda: ((np.abs(dx) <= t) | (np.abs(dy) <= t)) & (box <= r),                # plus
        lambda: ((np.abs(dx - dy) <= 1.4 * t) | (np.abs(dx + dy) <= 1.4 * t)) & (box <= 0.8 * r),   # cross
        lambda: (box <= side) & (np.floor(dy / period) % 2 == 0),                    # horizontal stripes
        lambda: (box <= side) & (np.floor(dx / period) % 2 == 0),                    # vertical stripes
        lambda: (box <= side) & ((np.floor(dx / period) + np.floor(dy / period)) % 2 == 0),   # checkerboard
    ]
    out = np.zeros((n, SIZE, SIZE), bool)
    for c, figure in enumerate(figures):
        out[label == c] = figure()[label == c]   # (a full-batch boolean per class: cheap next to the noise)
    return out


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``[n, 3, 32, 32]`` float32 (normalized like the model takes them) and labels ``[n]`` int64."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % len(LABELS)
    rng.shuffle(label)
    mask = _masks(label, rng)[:, None].astype(np.float32)
    fg = rng.uniform(0, 1, (n, 3, 1, 1)).astype(np.float32)
    bg = rng.uniform(0, 1, (n, 3, 1, 1)).astype(np.float32)
    # keep the figure visible: push the background away from the figure where they are too close
    close = np.abs(fg - bg).mean(axis=1, keepdims=True) < 0.25
    bg = np.where(close, 1.0 - fg, bg)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    g = rng.uniform(-0.3, 0.3, (n, 2, 1, 1)).astype(np.float32)
    gradient = g[:, :1] * xx + g[:, 1:] * yy                        # [n, 1, H, W]
    noise = rng.standard_normal((n, 3, SIZE, SIZE), dtype=np.float32) * rng.uniform(0.03, 0.15, (n, 1, 1, 1)).astype(np.float32)
    img = np.clip(bg * (1 - mask) + fg * mask + gradient + noise, 0, 1)
    return ((img - 0.5) / 0.5).astype(np.float32), label.astype(np.int64)


@functools.lru_cache(maxsize=1)
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the 12,000 generated images, split 10,000 / 2,000."""
    x, y = generate(N_TRAIN + N_TEST, DATA_SEED)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out 2,000 images: ``(inputs [N, 3, 32, 32] float32, labels [N] int64)``."""
    _, _, x, y = split()
    return x, y


@register_model("vit_shapes", input_shape=(1, 3, SIZE, SIZE), num_classes=10, preprocessing=PREPROCESSING,
                weights="vit_shapes.safetensors", test_set=test_set, labels=LABELS, tags=("vit", "shapes"),
                same_as="vit_tiny_digits")   # the same VisionTransformer code path: conformance runs that one
def vit_shapes(**kw) -> torch.nn.Module:
    """A 6-block ViT (dim 64, 4 heads, 8x8 patches) trained on generated 32x32 RGB shapes (10 classes)."""
    return VisionTransformer(**{"img_size": SIZE, "patch_size": 8, "in_chans": 3, "num_classes": 10,
                                "embed_dim": 64, "depth": 6, "num_heads": 4, **kw})


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips (every class is flip-invariant up to the triangle's vertical axis: only horizontal flips)."""
    return torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x.flip(3), x)


def train(*, epochs: int = TRAIN["epochs"], lr: float = TRAIN["lr"], batch: int = TRAIN["batch"],
          seed: int = TRAIN["seed"]) -> float:
    """Train ``vit_shapes`` from its seed, save its weights and record; return the test accuracy."""
    from edge.zoo import create_model
    from edge.zoo.digits import evaluate, fit
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model, _ = create_model("vit_shapes", pretrained=False)
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in split())
    t0 = time.time()
    fit(model, xtr, ytr, xte, yte, augment=_augment, g=g, epochs=epochs, lr=lr, batch=batch, name="vit_shapes",
        every=1)
    acc = evaluate(model, xte, yte)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS_DIR / "vit_shapes.safetensors"))
    (WEIGHTS_DIR / "vit_shapes.json").write_text(json.dumps(
        {"model": "vit_shapes", "test_accuracy": acc, "test_samples": len(yte), "train_samples": len(ytr),
         "epochs": epochs, "lr": lr, "batch": batch, "seed": seed, "data_seed": DATA_SEED,
         "torch": torch.__version__, "train_seconds": round(time.time() - t0, 1),
         "train_threads": torch.get_num_threads()}, indent=2) + "\n")
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", action="store_true", help="(re)train vit_shapes and rewrite its weights")
    ap.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    args = ap.parse_args()
    if args.train:
        print(f"vit_shapes: test accuracy {train(epochs=args.epochs):.4f}")


if __name__ == "__main__":
    main()
