"""The bundled digits models: scikit-learn's 8x8 digits, upsampled to 32x32, trained here on the CPU.

The raw data (1,797 images, 8x8, values 0-16, BSD licence, from scikit-learn) ships as
``weights/digits.npz`` so no download or scikit-learn is needed at run time. The split is
fixed (80% train / 20% test, stratified, seed 0). Retrain a model with::

    python -m edge.zoo.digits --train vit_tiny_digits

which rewrites ``weights/<name>.safetensors`` and records its test accuracy in ``weights/<name>.json``.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge.zoo import WEIGHTS_DIR, create_model, get_entry, register_model
from edge.zoo.vit import VisionTransformer

DATA = WEIGHTS_DIR / "digits.npz"
SIZE = 32
PREPROCESSING = {"size": [SIZE, SIZE], "channels": 1, "mean": [0.5], "std": [0.5], "scale": 1 / 255,
                 "note": "white digit on black, like scikit-learn's digits"}
LABELS = [str(i) for i in range(10)]
TRAIN_EPOCHS = {"vit_tiny_digits": 60, "visiongru_digits": 20, "gru_digits": 40}   # per-model settings of the training script


def _refresh_data() -> None:
    """Rewrite digits.npz from scikit-learn (needs scikit-learn; the training script's only use of it)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    np.savez_compressed(DATA, images=d.images.astype(np.uint8), target=d.target.astype(np.uint8))


def to_input(images8: np.ndarray) -> np.ndarray:
    """8x8 images (0-16) -> normalized [N, 1, 32, 32] float32, as the digits models take them."""
    x = torch.from_numpy(np.asarray(images8, np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.5).numpy()


@functools.lru_cache(maxsize=1)
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), fixed stratified 80/20 split."""
    with np.load(DATA) as d:
        images, target = d["images"], d["target"].astype(np.int64)
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(target == c))
        k = int(round(len(idx) * 0.2))
        test.extend(idx[:k])
        train.extend(idx[k:])
    train, test = np.sort(train), rng.permutation(np.sort(test))
    x = to_input(images)
    return x[train], target[train], x[test], target[test]


def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out 20% (359 images): ``(inputs [N, 1, 32, 32] float32, labels [N] int64)``."""
    _, _, x, y = split()
    return x, y


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 3 pixels (translation is what the upsampled digits vary in)."""
    shift = torch.randint(-3, 4, (2,), generator=g).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3))


def train(name: str, *, epochs: int | None = None, lr: float = 2e-3, batch: int = 64, seed: int = 0) -> float:
    """Train zoo model ``name`` on the digits train split; save weights and return test accuracy."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model, entry = create_model(name, pretrained=False)
    epochs = epochs or TRAIN_EPOCHS.get(name, 60)
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in split())
    t0 = time.time()
    fit(model, xtr, ytr, xte, yte, augment=_augment, g=g, epochs=epochs, lr=lr, batch=batch, name=name, every=10)
    acc = evaluate(model, xte, yte)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS_DIR / f"{name}.safetensors"))
    (WEIGHTS_DIR / f"{name}.json").write_text(json.dumps(
        {"model": name, "test_accuracy": acc, "test_samples": len(yte), "epochs": epochs, "lr": lr, "seed": seed,
         "torch": torch.__version__, "train_seconds": round(time.time() - t0, 1)}, indent=2) + "\n")
    return acc


def fit(model: torch.nn.Module, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, *,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], g: torch.Generator, epochs: int,
        lr: float, batch: int, name: str, every: int) -> None:
    """The zoo's training loop: AdamW + one-cycle schedule, label smoothing, the model's own augmentation;
    prints test accuracy every ``every`` epochs. Seeding is the caller's (before the model is built)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(augment(xtr[idx], g)), ytr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (ep + 1) % every == 0 or ep == epochs - 1:
            print(f"{name} epoch {ep + 1}/{epochs} loss {loss.item():.3f} test acc {evaluate(model, xte, yte):.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


@register_model("vit_tiny_digits", input_shape=(1, 1, SIZE, SIZE), num_classes=10, preprocessing=PREPROCESSING,
                weights="vit_tiny_digits.safetensors", test_set=test_set, labels=LABELS, tags=("vit", "digits"))
def vit_tiny_digits(**kw) -> torch.nn.Module:
    """The bundled default: a 4-block ViT (dim 64, 4 heads, 4x4 patches) trained on 32x32 digits."""
    return VisionTransformer(**{"img_size": SIZE, "patch_size": 4, "in_chans": 1, "num_classes": 10,
                                "embed_dim": 64, "depth": 4, "num_heads": 4, **kw})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", nargs="+", metavar="MODEL", help="digits models to (re)train")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--refresh-data", action="store_true", help="rewrite digits.npz from scikit-learn")
    args = ap.parse_args()
    if args.refresh_data:
        _refresh_data()
    for name in args.train or []:
        get_entry(name)
        print(f"{name}: test accuracy {train(name, epochs=args.epochs):.4f}")


if __name__ == "__main__":
    main()
