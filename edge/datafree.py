"""Data-free calibration: synthetic calibration images optimised from the model alone.

Four generators, chosen per model by what it contains (``method="auto"``) or forced:

``psaq``
    PSAQ-ViT's patch-similarity objective, for models with self-attention over tokens. On the output of every
    attention module ([B, N, C] tokens), the pairwise cosine similarity of the tokens of each image; the
    differential entropy of those similarities, estimated with a Gaussian kernel density (Silverman's bandwidth,
    on a seeded subsample of the pairs), is *maximised* (real images give diverse patch similarities, noise gives
    uniform ones). Plus cross-entropy to random target labels on the head and a total-variation prior.
``spdfq``
    SPDFQ / SARDFQ (arXiv 2412.16553), for ViTs with a class token: three terms. Attention-prior alignment: in the
    later half of the attention modules, the class token's attention over the patch grid (recomputed from the
    module's own query/key projections, averaged over heads) is pulled (KL) to a random 2-D Gaussian prior per
    image, so each image gets a focused object region. Per-patch labels: a random crop of each image, resized
    back to the input size, is classified as its own random label, so one image carries several semantics.
    Soft labels: the whole image's target is a mix of two random classes (weight 0.6-0.9 on the first), not one
    hot. Plus a total-variation prior. Two forward passes per step (image and crop): about twice psaq's cost.
``bn-stats``
    ZeroQ / DeepInversion: every BatchNorm's batch mean and variance of its input are pulled to its running
    statistics; plus cross-entropy to random target labels (when the output is a [B, classes] tensor) and a
    total-variation prior.
``inversion``
    The fallback for models with neither (GRU classifiers, VisionGRU: LayerNorm keeps no statistics, there is no
    attention): cross-entropy to random target labels plus a total-variation and an L2 prior. It matches no
    internal statistic of the model, so it is the weakest of the three; the record says so.

Images start from N(0, 1) (seeded), are optimised with Adam, and are clamped to the range the model's
preprocessing can produce (without one: to [-3, 3], the range of normalized images). Generation stops at
``steps`` or when ``budget_s`` is spent, whichever comes first;
the record says how many steps ran. Hooks go on the user's module and are removed afterwards; parameters,
their ``requires_grad``, the module's train/eval mode and its state dict are left as they were. For the same
``steps`` the result is bit-identical (seeded); a run cut short by its budget depends on the machine's speed.

Results are cached under ``<cache dir>/datafree/`` by a digest of the weights, the model's code, this file's
code, the method and the settings, so a second conversion of the same model reuses them.

Example:
    >>> from edge.datafree import generate
    >>> g = generate(model, input_shape=(1, 3, 224, 224), images=32, budget_s=120)
    >>> g.images.shape, g.record()["method"]
    ((32, 3, 224, 224), 'psaq')
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import CalibrationError, UsageError

METHODS = ("psaq", "spdfq", "bn-stats", "inversion")
# 64 images: as many as every other calibration source keeps by default (edge.calibration's limit). PSAQ-ViT's
# paper uses 32; measured on vit_tiny_digits, ONNX Runtime int8 (150 steps, test accuracy on the unseen half):
# psaq 32 images 97.78, 64 images 98.33; real images 98.33 (64 of the benchmark's) or 97.78 (the first 64)
DEFAULTS = {"images": 64, "held_out": 16, "steps": 500, "budget_s": 120.0, "lr": 0.2, "seed": 0}
# loss weights per method (the paper's terms; TV keeps the images smooth, L2 bounds them where nothing clamps)
WEIGHTS = {"psaq": {"neg_entropy": 1.0, "ce": 1.0, "tv": 0.05, "l2": 0.0},
           "spdfq": {"apa": 1.0, "ce": 1.0, "patch_ce": 0.5, "tv": 0.05, "l2": 0.0},
           "bn-stats": {"bn": 1.0, "ce": 0.1, "tv": 0.05, "l2": 0.0},
           "inversion": {"ce": 1.0, "tv": 0.1, "l2": 1e-3}}
NOTES = {"psaq": "PSAQ-ViT patch-similarity entropy (Gaussian KDE) + CE to random labels + TV prior",
         "spdfq": "SPDFQ attention-prior alignment of the class token's attention (later blocks) + per-patch "
                  "labels on random crops + soft two-class labels + TV prior",
         "bn-stats": "BatchNorm running-statistics matching (ZeroQ / DeepInversion) + CE to random labels + TV prior",
         "inversion": "fallback for a model with neither attention nor BatchNorm: CE to random labels + TV + L2 "
                      "priors only; it matches no internal statistic of the model (weaker than psaq / bn-stats)"}
KDE_PAIRS = 128   # similarity values per image the density is estimated on (the full N^2 is quadratic in tokens)


@dataclass
class Generated:
    """Images generated for calibration, the held-out ones kept for verification, and how they were made."""

    images: np.ndarray
    held_out: np.ndarray
    method: str
    steps: int
    seconds: float
    losses: dict[str, float]
    settings: dict[str, Any]
    key: str
    cached: bool = False
    stopped_by: str = "steps"
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The manifest's calibration record (kind ``datafree``)."""
        return {"kind": "datafree", "method": self.method, "images": int(len(self.images)),
                "held_out": int(len(self.held_out)), "steps": self.steps, "seconds": round(self.seconds, 2),
                "stopped_by": self.stopped_by, "final_loss": {k: round(v, 5) for k, v in self.losses.items()},
                "objective": NOTES[self.method], "settings": self.settings, "cached": self.cached,
                "cache_key": self.key[:24], **({"notes": self.notes} if self.notes else {})}


# ---------------------------------------------------------------- structure

def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Outermost self-attention modules (``nn.MultiheadAttention`` or a class named ``*Attention*``)."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for _, m in model.named_modules():
        if id(m) in inside:
            continue
        if isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower():
            found.append(m)
            inside.update(id(s) for s in m.modules())
    return found


def batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None]


def methods_that_fit(model: nn.Module) -> list[str]:
    """The generators that fit ``model``'s structure, best first (``inversion`` always fits)."""
    fit = []
    if attention_modules(model):
        fit += ["psaq", "spdfq"]
    if batchnorm_modules(model):
        fit.append("bn-stats")
    return fit + ["inversion"]


def choose_method(model: nn.Module, method: str | None = "auto") -> str:
    """``method`` if it fits ``model``, or the best that fits for ``"auto"``/None; else a CalibrationError."""
    fit = methods_that_fit(model)
    if method in (None, "auto"):
        return fit[0]
    if method not in METHODS:
        from edge.errors import UnknownNameError
        raise UnknownNameError("data-free method", method, (*METHODS, "auto"))
    if method not in fit:
        attn = "no self-attention module (nn.MultiheadAttention or a *Attention class)"
        what = {"psaq": attn, "spdfq": attn,
                "bn-stats": "no BatchNorm layer with running statistics"}[method]
        raise CalibrationError(f"--method {method} does not fit {type(model).__name__}: it has {what}; "
                               f"methods that fit it: {', '.join(fit)}")
    return method


# ---------------------------------------------------------------- loss terms

def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbours along the last two dimensions (images, or [B, T, F] sequences)."""
    tv = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    return tv + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean() if x.shape[-1] > 1 else tv


def kde_entropy(values: torch.Tensor) -> torch.Tensor:
    """Differential entropy of each row of ``values`` [B, M] under a Gaussian KDE (Silverman's bandwidth)."""
    m = values.shape[1]
    h = (1.06 * values.std(dim=1, keepdim=True) * m ** -0.2).clamp_min(1e-3)            # [B, 1]
    diff = (values[:, :, None] - values[:, None, :]) / h[:, :, None]                     # [B, M, M]
    log_k = -0.5 * diff.pow(2) - 0.5 * np.log(2 * np.pi) - h[:, :, None].log()
    log_p = torch.logsumexp(log_k, dim=2) - np.log(m)                                    # [B, M]
    return -log_p.mean(dim=1)


def patch_similarity_entropy(tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean over images of the KDE entropy of the tokens' pairwise cosine similarities (``pairs``: flat indices)."""
    t = F.normalize(tokens, dim=-1)
    sim = (t @ t.transpose(1, 2)).flatten(1)                                             # [B, N*N]
    return kde_entropy(sim[:, pairs]).mean()


def _bn_loss(stats: list[tuple[nn.Module, torch.Tensor]]) -> torch.Tensor:
    loss = torch.zeros(())
    for bn, x in stats:
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        loss = loss + (mean - bn.running_mean).norm() + (var - bn.running_var).norm()
    return loss / max(len(stats), 1)


# ---------------------------------------------------------------- spdfq

def qk_modules(model: nn.Module) -> list[nn.Module]:
    """Per attention module, the one that computes its query/key projections: timm-style (``qkv`` Linear and
    ``num_heads``) or transformers-style (``query``/``key`` Linears and ``num_attention_heads``)."""
    found = []
    for attn in attention_modules(model):
        for m in attn.modules():
            timm = isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
            hf = isinstance(getattr(m, "query", None), nn.Linear) and isinstance(getattr(m, "key", None), nn.Linear) \
                and isinstance(getattr(m, "num_attention_heads", None), int)
            if timm or hf:
                found.append(m)
                break
    return found


def cls_attention(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class token's attention over the other tokens [B, N-1] (heads averaged), from ``m``'s own projections
    of its input tokens ``x`` [B, N, C]; the class token is token 0."""
    b, n, _ = x.shape
    if hasattr(m, "qkv"):
        qkv = m.qkv(x).reshape(b, n, 3, m.num_heads, -1)
        q, k = qkv[:, 0, 0], qkv[:, :, 1]                                                # [B, H, d], [B, N, H, d]
    else:
        h = m.num_attention_heads
        q, k = m.query(x[:, :1]).reshape(b, h, -1), m.key(x).reshape(b, n, h, -1)
    attn = (torch.einsum("bhd,bnhd->bhn", q, k) * q.shape[-1] ** -0.5).softmax(-1)[:, :, 1:]
    return (attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)).mean(1)


def gaussian_priors(n: int, grid: int) -> torch.Tensor:
    """``n`` random 2-D Gaussian attention priors over a ``grid`` x ``grid`` patch grid [n, grid*grid] (centre
    anywhere on the grid, sigma 0.15-0.4 of its side), each summing to 1; drawn from torch's (seeded) RNG."""
    centre = torch.rand(n, 1, 2) * (grid - 1)
    sigma = (0.15 + 0.25 * torch.rand(n, 1)) * grid
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    pos = torch.stack([ys, xs], -1).reshape(1, -1, 2).float()
    p = torch.exp(-((pos - centre) ** 2).sum(-1) / (2 * sigma ** 2))
    return p / p.sum(-1, keepdim=True)


def random_crops(x: torch.Tensor) -> torch.Tensor:
    """A random crop (0.4-0.7 of each side, anywhere) of every image, resized back to the input size."""
    b = x.shape[0]
    scale = 0.4 + 0.3 * torch.rand(b)
    shift = (torch.rand(b, 2) * 2 - 1) * (1 - scale)[:, None]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale, scale, shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class SpdfqTerms:
    """SPDFQ's loss terms for one run: the priors and labels are drawn once (seeded), the crops every step."""

    def __init__(self, model: nn.Module, sources: list[nn.Module], total: int, classes: int, tokens: int):
        grid = int(round((tokens - 1) ** 0.5))
        if tokens < 2 or grid * grid != tokens - 1:
            raise CalibrationError(f"--method spdfq aligns the class token's attention over a square patch grid; "
                                   f"{type(model).__name__}'s attention sees {tokens} tokens (not 1 + a square): "
                                   f"use --method psaq")
        self.model, self.later = model, sources[len(sources) // 2:]
        self.priors = gaussian_priors(total, grid)
        first = torch.randint(0, classes, (total,))
        second = (first + torch.randint(1, max(classes, 2), (total,))) % classes
        weight = (0.6 + 0.3 * torch.rand(total))[:, None]
        self.soft = weight * F.one_hot(first, classes) + (1 - weight) * F.one_hot(second, classes)
        self.patch_labels = torch.randint(0, classes, (total,))

    def __call__(self, x: torch.Tensor, out: torch.Tensor,
                 captured: list[tuple[nn.Module, torch.Tensor]]) -> dict[str, torch.Tensor]:
        inputs = {id(m): t for m, t in captured}
        attn = [cls_attention(m, inputs[id(m)]) for m in self.later if id(m) in inputs]
        log_prior = self.priors.clamp_min(1e-12).log()
        apa = torch.stack([(self.priors * (log_prior - a.clamp_min(1e-12).log())).sum(-1).mean() for a in attn])
        crop_out = _first_tensor(self.model(random_crops(x)))
        return {"apa": apa.mean(), "ce": F.cross_entropy(out, self.soft),
                "patch_ce": F.cross_entropy(crop_out, self.patch_labels)}


# ---------------------------------------------------------------- the generator

def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):   # a transformers ModelOutput: its first value set (``logits``)
        return next((v for v in out.values() if isinstance(v, torch.Tensor)), None)
    return None


# Without the model's preprocessing, inputs are assumed to be normalized images: ImageNet's normalization
# maps pixels in [0, 1] into about [-2.1, 2.6]; [-3, 3] bounds that without cutting it.
DEFAULT_CLAMP = (-3.0, 3.0)


def _clamp_range(preprocessing: dict[str, Any] | None, sample_shape: tuple[int, ...]
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """Per-channel [lo, hi] that the model's preprocessing makes of pixels in [0, 1], else ``DEFAULT_CLAMP``."""
    channels = sample_shape[0]
    pre = preprocessing or {}
    if len(sample_shape) == 3 and "mean" in pre and "std" in pre and len(pre["mean"]) == channels \
            and len(pre["std"]) == channels:
        mean = torch.tensor(pre["mean"], dtype=torch.float32).reshape(1, channels, 1, 1)
        std = torch.tensor(pre["std"], dtype=torch.float32).reshape(1, channels, 1, 1)
        return ((0 - mean) / std, (1 - mean) / std), "preprocessing"
    return (torch.tensor(DEFAULT_CLAMP[0]), torch.tensor(DEFAULT_CLAMP[1])), f"default {list(DEFAULT_CLAMP)}"


def model_digest(model: nn.Module) -> str:
    """sha256 of the module's state (names, shapes, bytes) and the source files of every class in it."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    files = set()
    for m in model.modules():
        try:
            src = inspect.getsourcefile(type(m))
        except (TypeError, OSError):
            src = None
        if src and not src.startswith(os.path.dirname(torch.__file__)):
            files.add(src)
    for src in sorted(files | {__file__}):
        try:
            h.update(Path(src).read_bytes())
        except OSError:
            h.update(src.encode())
    return h.hexdigest()


def _cache_path(cache_dir: str | Path | None, key: str) -> Path:
    if cache_dir is None:
        from edge.matrix import default_cache_dir
        cache_dir = default_cache_dir()
    return Path(cache_dir) / "datafree" / f"{key[:24]}.npz"


def check_npz_path(path: str | Path) -> Path:
    """``path`` as a Path if an .npz can be written there, else a UsageError saying what to change."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UsageError(f"{path}: the generated calibration set is written as .npz; name the file *.npz")
    if not path.parent.is_dir():
        raise UsageError(f"the folder of {path} does not exist; create it first")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; name a .npz file")
    return path


def save_npz(path: str | Path, gen: Generated, input_name: str = "input") -> Path:
    """Write ``gen`` as an .npz that ``--calib`` accepts: the images under ``input_name``, the held-out images
    under ``_held_out`` and the record (JSON) under ``_record`` (keys starting with ``_`` are not calibration
    inputs). Written to a temporary file in the same folder, then renamed into place."""
    path = check_npz_path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **{input_name: gen.images, "_held_out": gen.held_out,
                         "_record": np.array(json.dumps(gen.record(), default=str))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _load_cached(path: Path, key: str) -> Generated | None:
    try:
        with np.load(path, allow_pickle=False) as d:
            rec = json.loads(str(d["_record"]))
            images, held = d["input"], d["_held_out"]
    except Exception:     # a missing or half-written cache entry is regenerated, never trusted
        return None
    if not rec.get("cache_key") or not key.startswith(rec["cache_key"]):
        return None
    return Generated(images, held, rec["method"], rec["steps"], rec["seconds"], rec["final_loss"],
                     rec["settings"], key, cached=True, stopped_by=rec.get("stopped_by", "steps"),
                     notes=rec.get("notes", []))


def generate(model: nn.Module, *, input_shape: tuple[int, ...] | None = None,
             example_inputs: tuple[torch.Tensor, ...] | None = None, method: str | None = "auto",
             images: int = DEFAULTS["images"], held_out: int = DEFAULTS["held_out"], steps: int = DEFAULTS["steps"],
             budget_s: float = DEFAULTS["budget_s"], lr: float = DEFAULTS["lr"], seed: int = DEFAULTS["seed"],
             preprocessing: dict[str, Any] | None = None, cache: bool = True, cache_dir: str | Path | None = None,
             on_step: Callable[[int, dict[str, float]], None] | None = None) -> Generated:
    """Optimise ``images + held_out`` synthetic inputs for ``model`` (see the module docstring).

    Args:
        model: the user's module (left unchanged: hooks are removed, flags and mode restored).
        input_shape: one input's shape, batch first (the batch size is ignored); or ``example_inputs``.
        method: ``"auto"`` (by structure), ``"psaq"``, ``"spdfq"``, ``"bn-stats"`` or ``"inversion"``.
        images: how many calibration images; ``held_out`` more are made for verification only.
        steps: the most Adam steps; ``budget_s``: the most seconds (generation stops at whichever comes first).
        preprocessing: ``{"mean": [...], "std": [...]}`` of the model's input: images are clamped to the range
            those make of pixels in [0, 1].
        cache: reuse / store the result under ``cache_dir`` (default the edge cache dir) by model digest.

    Returns:
        A :class:`Generated` with ``images`` [images, ...] and ``held_out`` [held_out, ...] float32 arrays.

    Raises:
        CalibrationError: a method that does not fit the model, or an input that cannot be generated.

    Example:
        >>> g = generate(model, input_shape=(1, 3, 32, 32), images=16, budget_s=30)
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise UsageError(f"--images {images!r} must be a whole number >= 1 (e.g. 32)")
    if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 0:
        raise UsageError(f"held_out {held_out!r} must be a whole number >= 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--steps {steps!r} must be a whole number >= 1")
    if not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise UsageError(f"--budget-s {budget_s!r} must be a number of seconds > 0 (e.g. 120)")
    if not isinstance(model, nn.Module):
        raise UsageError(f"data-free generation needs a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is not None:
        if len(example_inputs) != 1:
            raise CalibrationError(f"data-free calibration generates one input; this model takes "
                                   f"{len(example_inputs)}: pass calibration data (.npz with one array per input)")
        input_shape = tuple(example_inputs[0].shape)
        if not example_inputs[0].is_floating_point():
            raise CalibrationError(f"data-free calibration optimises float inputs; this model's input is "
                                   f"{example_inputs[0].dtype}: pass calibration data instead")
    if input_shape is None or len(input_shape) < 2:
        raise UsageError("data-free generation needs the model's input shape, e.g. --input-shape 1,3,224,224")
    method = choose_method(model, method)
    sample_shape = tuple(int(d) for d in input_shape[1:])
    total = images + held_out
    settings = {"images": images, "held_out": held_out, "steps": steps, "budget_s": float(budget_s), "lr": lr,
                "seed": seed, "sample_shape": list(sample_shape), "weights": WEIGHTS[method],
                "clamp": _clamp_range(preprocessing, sample_shape)[1]}
    key = hashlib.sha256(json.dumps({"model": model_digest(model), "method": method, **settings},
                                    sort_keys=True, default=str).encode()).hexdigest()
    path = _cache_path(cache_dir, key) if cache else None
    if path is not None and path.is_file():
        hit = _load_cached(path, key)
        if hit is not None:
            return hit
    gen = _optimise(model, method, sample_shape, total, steps, float(budget_s), lr, seed,
                    _clamp_range(preprocessing, sample_shape)[0], on_step)
    x, losses, done, seconds, stopped = gen
    result = Generated(x[:images], x[images:], method, done, seconds, losses, settings, key, stopped_by=stopped)
    if method == "inversion":
        result.notes.append(NOTES["inversion"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, result)
    return result


def _optimise(model: nn.Module, method: str, sample_shape: tuple[int, ...], total: int, steps: int,
              budget_s: float, lr: float, seed: int, clamp: tuple[torch.Tensor, torch.Tensor],
              on_step: Callable[[int, dict[str, float]], None] | None) -> tuple:
    w = WEIGHTS[method]
    captured: list[tuple[nn.Module, torch.Tensor]] = []
    targets = attention_modules(model) if method == "psaq" else batchnorm_modules(model) if method == "bn-stats" \
        else []
    if method == "spdfq":
        targets = qk_modules(model)
        if not targets:
            raise CalibrationError(f"--method spdfq recomputes the class token's attention from the query/key "
                                   f"projections; {type(model).__name__}'s attention has none it knows (timm's "
                                   f"qkv + num_heads, or query/key + num_attention_heads): use --method psaq")
    if method == "psaq":
        def hook(mod, args, out):
            captured.append((mod, _first_tensor(out)))
    else:
        def hook(mod, args, out):
            captured.append((mod, args[0]))
    # spdfq reads the tokens going into the projections: a pre-hook (its input), the others a forward hook
    handles = [m.register_forward_pre_hook(lambda mod, args: hook(mod, args, None)) if method == "spdfq"
               else m.register_forward_hook(hook) for m in targets]
    spdfq: SpdfqTerms | None = None
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in flags:    # gradients go to the images only: the user's parameters get no .grad
            p.requires_grad_(False)
        model.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = torch.randn(total, *sample_shape).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            labels, pairs = None, None
            t0, done, losses, stopped = time.perf_counter(), 0, {}, "steps"
            while done < steps:
                captured.clear()
                try:
                    out = _first_tensor(model(x))
                except CalibrationError:
                    raise
                except Exception as e:   # e.g. a model (or .pt2) that only takes its example batch size
                    raise CalibrationError(f"{type(model).__name__} failed on a batch of {total} generated "
                                           f"inputs ({type(e).__name__}: {str(e)[:200]}); data-free generation "
                                           f"needs a model that takes any batch size") from None
                terms: dict[str, torch.Tensor] = {}
                if out is not None and out.dim() == 2 and out.shape[0] == total and out.shape[1] > 1:
                    if labels is None:
                        labels = torch.arange(total) % out.shape[1]
                        labels = labels[torch.randperm(total)]
                    if w.get("ce"):
                        terms["ce"] = F.cross_entropy(out, labels)
                elif method == "inversion":
                    raise CalibrationError(f"{type(model).__name__} gives no [batch, classes] output, so the "
                                           f"inversion fallback has nothing to optimise; pass calibration data")
                if method == "psaq":
                    toks = [t for _, t in captured if t is not None and t.dim() == 3 and t.shape[1] > 1]
                    if not toks:
                        raise CalibrationError(f"--method psaq: the attention modules of {type(model).__name__} "
                                               f"give no [batch, tokens, channels] output; use --method inversion")
                    if pairs is None:
                        n2 = toks[0].shape[1] ** 2
                        pairs = torch.randperm(n2)[:min(KDE_PAIRS, n2)]
                    # maximise the entropy: it enters the loss with a minus sign
                    terms["neg_entropy"] = -torch.stack([patch_similarity_entropy(t, pairs) for t in toks]).mean()
                if method == "bn-stats":
                    terms["bn"] = _bn_loss(captured)
                if method == "spdfq":
                    if labels is None:
                        raise CalibrationError(f"--method spdfq needs a [batch, classes] output; "
                                               f"{type(model).__name__} gives none: use --method psaq")
                    if len(sample_shape) != 3:
                        raise CalibrationError(f"--method spdfq crops images [channels, height, width]; this "
                                               f"model's input is {list(sample_shape)}: use --method psaq")
                    if spdfq is None:
                        spdfq = SpdfqTerms(model, targets, total, out.shape[1], captured[0][1].shape[1])
                    terms.update(spdfq(x, out, list(captured)))
                terms["tv"] = total_variation(x)
                if w.get("l2"):
                    terms["l2"] = x.pow(2).mean()
                loss = sum(w[k] * v for k, v in terms.items())
                (grad,) = torch.autograd.grad(loss, [x])
                x.grad = grad
                opt.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, clamp[1]), clamp[0]))
                done += 1
                losses = {k: float(v.detach()) for k, v in terms.items()}
                losses["total"] = float(loss.detach())
                if on_step is not None:
                    on_step(done, losses)
                if time.perf_counter() - t0 >= budget_s and done < steps:
                    stopped = "budget"
                    break
            seconds = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    return x.detach().numpy().astype(np.float32), losses, done, seconds, stopped
