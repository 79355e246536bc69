"""Data-free calibration: the generators, their cache, edge calib generate and --calib datafree per target."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge import datafree
from edge.calibration import load_calibration
from edge.cli import main
from edge.errors import CalibrationError, UnknownNameError, UsageError

sys.path.insert(0, str(Path(__file__).parent))
import models_for_tests as M  # noqa: E402

FACTORY = str(Path(__file__).parent / "models_for_tests.py")
SHAPES = {"tiny_vit": (1, 3, 16, 16), "tiny_bn": (1, 3, 16, 16), "tiny_gru": (1, 1, 8, 8)}
METHOD = {"tiny_vit": "psaq", "tiny_bn": "bn-stats", "tiny_gru": "inversion"}


def _snapshot(model: torch.nn.Module) -> tuple:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            [(n, m.training) for n, m in model.named_modules()])


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("name", list(SHAPES))
def test_generator_deterministic_and_leaves_the_model_untouched(name):
    model = getattr(M, name)()
    first = next(model.parameters())
    first.requires_grad_(False)               # a frozen parameter must stay frozen, the others trainable
    list(model.modules())[-1].train()         # a mixed train/eval state must come back as it was
    before = _snapshot(model)
    assert datafree.choose_method(model) == METHOD[name]
    a = datafree.generate(model, input_shape=SHAPES[name], images=4, held_out=2, steps=3, cache=False)
    b = datafree.generate(model, input_shape=SHAPES[name], images=4, held_out=2, steps=3, cache=False)
    assert a.method == METHOD[name] and a.steps == 3 and a.stopped_by == "steps"
    assert a.images.shape == (4, *SHAPES[name][1:]) and a.held_out.shape == (2, *SHAPES[name][1:])
    np.testing.assert_array_equal(a.images, b.images)          # seeded: bit-identical for the same steps
    np.testing.assert_array_equal(a.held_out, b.held_out)
    c = datafree.generate(model, input_shape=SHAPES[name], images=4, held_out=2, steps=3, cache=False, seed=1)
    assert not np.array_equal(a.images, c.images)
    after = _snapshot(model)
    assert after[1] == before[1] and after[2] == before[2]
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())
    assert all(p.grad is None for p in model.parameters()) and _no_hooks(model)
    assert set(a.losses) >= {"total", "tv"} and all(np.isfinite(v) for v in a.losses.values())
    assert ("neg_entropy" in a.losses) == (name == "tiny_vit") and ("bn" in a.losses) == (name == "tiny_bn")
    rec = a.record()
    assert rec["kind"] == "datafree" and rec["method"] == METHOD[name] and rec["steps"] == 3
    assert ("notes" in rec) == (name == "tiny_gru")           # the fallback says it is one


def test_spdfq_deterministic_in_budget_and_leaves_the_model_untouched():
    """spdfq (attention-prior alignment + per-patch labels + soft labels) on the tiny ViT: bit-identical for the
    same seed and steps, stops at its budget, its pre-hooks removed, the model as it was; a model whose attention
    sees no class token + square grid is refused with the method that fits."""
    model = M.tiny_vit()
    before = _snapshot(model)
    kw = dict(input_shape=SHAPES["tiny_vit"], method="spdfq", images=4, held_out=2, cache=False)
    a, b = datafree.generate(model, steps=3, **kw), datafree.generate(model, steps=3, **kw)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.held_out, b.held_out)
    assert a.method == "spdfq" and a.steps == 3 and set(a.losses) >= {"apa", "ce", "patch_ce", "tv", "total"}
    assert all(np.isfinite(v) for v in a.losses.values()) and "attention-prior" in a.record()["objective"]
    g = datafree.generate(model, steps=10 ** 6, budget_s=0.5, **kw)
    assert g.stopped_by == "budget" and 1 <= g.steps < 10 ** 6 and g.seconds < 0.5 + 30
    after = _snapshot(model)
    assert after[1] == before[1] and after[2] == before[2]
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())
    assert all(p.grad is None for p in model.parameters()) and _no_hooks(model)
    pooled = M.tiny_vit()
    pooled.pos_embed = torch.nn.Parameter(pooled.pos_embed[:, 1:].clone())   # 16 tokens, no class token
    pooled.forward_features = lambda x: pooled.norm(pooled.blocks(pooled.patch_embed(x) + pooled.pos_embed))
    with pytest.raises(CalibrationError, match="use --method psaq"):
        datafree.generate(pooled, steps=1, **kw)
    assert _no_hooks(pooled)


def test_generation_stops_at_its_budget():
    model = M.tiny_vit()
    g = datafree.generate(model, input_shape=SHAPES["tiny_vit"], images=2, held_out=0, steps=10 ** 6,
                          budget_s=0.5, cache=False)
    assert g.stopped_by == "budget" and 1 <= g.steps < 10 ** 6
    assert g.seconds < 0.5 + 30      # the budget is checked after every step (one step is far under 30 s)
    assert _no_hooks(model)


def test_generated_images_follow_the_preprocessing_range():
    pre = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    g = datafree.generate(M.tiny_vit(), input_shape=SHAPES["tiny_vit"], images=2, held_out=0, steps=5,
                          cache=False, preprocessing=pre)
    assert g.images.min() >= -2.0 - 1e-6 and g.images.max() <= 2.0 + 1e-6
    assert g.settings["clamp"] == "preprocessing"


def test_cache_hit_and_calib_npz_round_trip(tmp_path):
    model = M.tiny_bn()
    kw = dict(input_shape=SHAPES["tiny_bn"], images=4, held_out=2, steps=2, cache_dir=tmp_path)
    a = datafree.generate(model, **kw)
    b = datafree.generate(model, **kw)
    assert not a.cached and b.cached and b.steps == a.steps and b.method == a.method
    np.testing.assert_array_equal(a.images, b.images)
    assert len(list((tmp_path / "datafree").glob("*.npz"))) == 1
    with torch.no_grad():                     # a change of the weights is a new model: generated again
        model[0].bias.add_(0.1)
    assert not datafree.generate(model, **kw).cached
    path = datafree.save_npz(tmp_path / "calib.npz", a)
    from edge.artifact import TensorSpec
    calib = load_calibration(path, [TensorSpec("x", [1, 3, 16, 16], "float32")])
    assert calib.kind == "datafree" and len(calib) == 4 and calib.held_out.shape == (2, 3, 16, 16)
    assert calib.record()["generation"]["method"] == "bn-stats"


def test_methods_that_do_not_fit_are_refused():
    with pytest.raises(CalibrationError, match="methods that fit it: inversion"):
        datafree.choose_method(M.tiny_gru(), "psaq")
    with pytest.raises(CalibrationError, match="methods that fit it: psaq, spdfq, inversion"):
        datafree.choose_method(M.tiny_vit(), "bn-stats")
    with pytest.raises(UnknownNameError, match="did you mean 'psaq'"):
        datafree.choose_method(M.tiny_vit(), "psqa")
    for bad in ({"images": 0}, {"images": 2.5}, {"steps": 0}, {"budget_s": 0}, {"held_out": -1}):
        with pytest.raises(UsageError):
            datafree.generate(M.tiny_vit(), input_shape=SHAPES["tiny_vit"], cache=False, **bad)
    with pytest.raises(UsageError, match="input shape"):
        datafree.generate(M.tiny_vit(), cache=False)
    from edge.artifact import TensorSpec
    with pytest.raises(CalibrationError, match="needs the model"):
        load_calibration("datafree", [TensorSpec("x", [1, 3, 16, 16], "float32")])
    with pytest.raises(CalibrationError, match="unknown setting 'step'"):
        load_calibration("datafree:step=3", [TensorSpec("x", [1, 3, 16, 16], "float32")], model=M.tiny_vit())


def test_cli_calib_generate_and_its_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "calib.npz"
    gru = f"{FACTORY}:tiny_gru"
    assert main(["calib", "generate", gru, "--input-shape", "1,1,8,8", "--method", "psaq", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--method psaq does not fit" in err and "inversion" in err and "\n" not in err and not out.exists()
    for bad in (["--images", "0"], ["--budget-s", "-1"], ["-o", str(tmp_path / "calib.txt")],
                ["-o", str(tmp_path / "nowhere" / "c.npz")]):
        args = ["calib", "generate", gru, "--input-shape", "1,1,8,8", "-o", str(out), *bad]
        assert main(args) == 2, bad
        assert "Traceback" not in capsys.readouterr().err
    assert main(["calib", "generate", gru, "--input-shape", "1,1,8,8", "--images", "3", "--steps", "2",
                 "-o", str(out), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["method"] == "inversion" and rec["images"] == 3 and rec["steps"] == 2 and "notes" in rec
    with np.load(out) as d:
        assert d[[k for k in d.files if not k.startswith("_")][0]].shape == (3, 1, 8, 8)
    assert not list(tmp_path.glob(".calib.npz*"))          # written through a temporary file, renamed


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


QUANTIZING = [t for t, mod in (("onnx", "onnxruntime"), ("openvino", "nncf"), ("executorch", "executorch"))
              if has(mod)]


@pytest.mark.slow
def test_cli_convert_calib_datafree_every_quantizing_target(tmp_path, capsys, monkeypatch):
    """One generation calibrates every target; the artifacts are judged on held-out generated images; the second
    conversion of the same model takes the images from the cache."""
    if not QUANTIZING:
        pytest.skip("no quantizing backend installed")
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))
    args = ["convert", f"{FACTORY}:tiny_bn", "--input-shape", "1,3,16,16", "-t", ",".join(QUANTIZING), "-p", "int8",
            "--calib", "datafree:steps=10,images=8", "--json"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    capsys.readouterr()
    for t in QUANTIZING:
        m = json.loads((tmp_path / "a" / t / "manifest.json").read_text())
        cal = m["details"]["calibration"]
        assert m["status"] == "verified" and cal["kind"] == "datafree" and cal["samples"] == 8
        gen = cal["generation"]
        assert gen["method"] == "bn-stats" and gen["steps"] == 10 and not gen["cached"] and "bn" in gen["final_loss"]
        assert m["parity"]["input_kind"].startswith("example+generated") and m["parity"]["inputs"] == 17
    assert main([*args, "-t", QUANTIZING[0], "-o", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["details"]["calibration"]["generation"]["cached"] is True
    assert main(["verify", str(tmp_path / "b"), "--trust-source", "--json"]) == 0   # judged on the same held-out images
    assert json.loads(capsys.readouterr().out)["input_kind"].startswith("example+generated")


@pytest.mark.slow
@pytest.mark.skipif(not has("onnxruntime"), reason="onnxruntime not installed")
def test_psaq_calibrates_a_trained_vit_through_the_cli(tmp_path, capsys, monkeypatch):
    """psaq on the trained digits ViT (taken as a factory model: no test set, so the held-out generated images
    judge the int8 artifact)."""
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["convert", f"{FACTORY}:digits_vit", "--input-shape", "1,1,32,32", "-t", "onnx", "-p", "int8",
                 "--calib", "datafree:psaq,steps=5,images=8", "-o", str(tmp_path / "v"), "--json"]) == 0, \
        capsys.readouterr().err
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert m["details"]["calibration"]["generation"]["method"] == "psaq"
    assert m["status"] == "verified" and m["parity"]["input_kind"].startswith("example+generated")
