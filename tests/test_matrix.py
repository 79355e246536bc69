"""The bench matrix: real conversions (onnx), verified and measured, cached by content, failures kept per cell."""
from __future__ import annotations

import json

import pytest

from edge.errors import UsageError
from edge.matrix import CELL_FIELDS, ResolutionError, are_artifacts, parse_resolutions, run_matrix
from edge.resolution import zoo_at

pytestmark = pytest.mark.skipif(not __import__("importlib.util").util.find_spec("onnxruntime"),
                                reason="onnxruntime is not installed (pip install 'edge[onnx]')")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """vit_tiny_digits at its own 32 px and at 16 px (position table resampled), onnx fp32: 2 conversions,
    plus a precision onnx lacks, whose cells must fail without stopping the others."""
    cache = tmp_path_factory.mktemp("edge-cache")
    seen = []
    res = run_matrix(["vit_tiny_digits"], targets=["onnx"], precisions=["fp32", "int3"], resolutions=[None, 16],
                     cache_dir=cache, warmup=2, iters=8, progress=lambda d, n, c: seen.append((d, n, c["id"])),
                     isolate=False)   # in-process here (faster); worker isolation has its own test below
    return res, cache, seen


@pytest.mark.slow
def test_matrix_cells_are_verified_and_measured(first_run):
    res, _, seen = first_run
    cells = {c["id"]: c for c in res["cells"]}
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(cells) == {"vit_tiny_digits@32/onnx/fp32", "vit_tiny_digits@32/onnx/int3",
                          "vit_tiny_digits@16/onnx/fp32", "vit_tiny_digits@16/onnx/int3"}
    for res_px in (32, 16):
        ok = cells[f"vit_tiny_digits@{res_px}/onnx/fp32"]
        assert ok["status"] == "ok", ok["error"]
        assert ok["parity_passed"] is True and ok["cosine"] > 0.9999
        assert len(ok["samples_ms"]) == 8 and ok["min_ms"] <= ok["p50_ms"] <= ok["max_ms"]
        assert ok["accuracy"] is not None and ok["runtime"] == "onnxruntime"
        # the deployment profile, measured in a clean process that imports only onnxruntime
        assert ok["process_imports"] == ["onnxruntime"]
        assert 0 < ok["model_rss_mb"] < ok["peak_rss_mb"] == pytest.approx(ok["base_rss_mb"] + ok["model_rss_mb"])
        assert ok["cold_load_ms"] > 0 and ok["warm_load_ms"] > 0 and "no compiled-model cache" in ok["load_cache"]
        p = ok["placement"]
        assert p["total"] > 10 and p["delegated"] == p["total"] and p["where"] == {"CPUExecutionProvider": p["total"]}
        assert p["summary"].startswith(f"{p['total']} of {p['total']} nodes on CPUExecutionProvider")
        assert ok["op_profile"] and ok["op_profile"][0]["share"] > 0   # the per-op table, from the cell's process
        bad = cells[f"vit_tiny_digits@{res_px}/onnx/int3"]
        assert bad["status"] == "failed" and "int3" in bad["error"] and "fp32" in bad["error"]
    # the bundled model keeps its accuracy at its own size; at 16 px it is a different (resampled) model
    assert cells["vit_tiny_digits@32/onnx/fp32"]["accuracy"] > 0.9
    assert set(CELL_FIELDS) <= set(res["cells"][0])
    assert res["op_profile"]["rows"] and res["op_profile"]["cell"] in cells
    json.dumps(res)   # results are plain JSON


@pytest.mark.slow
def test_second_run_reuses_the_cache(first_run):
    res, cache, _ = first_run
    again = run_matrix(["vit_tiny_digits"], targets=["onnx"], precisions=["fp32"], resolutions=[None, 16],
                       cache_dir=cache, warmup=1, iters=3, op_profile=False, isolate=False)
    before = {c["id"]: c for c in res["cells"]}
    for c in again["cells"]:
        assert c["status"] == "ok" and c["cached"] is True and c["convert_s"] is None
        assert c["cache_key"] == before[c["id"]]["cache_key"] and c["artifact"] == before[c["id"]]["artifact"]


@pytest.mark.slow
def test_tampered_cache_entry_is_not_reused(first_run, tmp_path):
    import shutil

    from edge.store import usable_artifact as _cached_artifact
    res, cache, _ = first_run
    cell = next(c for c in res["cells"] if c["id"] == "vit_tiny_digits@32/onnx/fp32")
    copy = tmp_path / "entry"
    shutil.copytree(cache / "artifacts" / cell["cache_key"], copy)
    assert _cached_artifact(copy) is not None
    onnx_file = copy / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-16] + b"\0" * 16)   # hash no longer matches the manifest
    assert _cached_artifact(copy) is None   # so run_matrix converts it again instead of measuring junk


TINY = """import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make():
    return Net()
"""


@pytest.mark.slow
def test_cache_key_follows_the_program(tmp_path):
    """A factory model (edge convert's intake, with --input-shape): unchanged -> reused, edited -> converted again."""
    from edge.artifact import Artifact
    model = tmp_path / "tiny.py"
    model.write_text(TINY)
    run = lambda: run_matrix([f"{model}:make"], targets=["onnx"], input_shapes=[(1, 1, 8, 8)],  # noqa: E731
                             cache_dir=tmp_path / "cache", warmup=1, iters=3, op_profile=False, isolate=False)
    first = run()["cells"][0]
    assert first["status"] == "ok" and first["cached"] is False and first["resolution"] == 8
    again = run()["cells"][0]
    assert again["cached"] is True and again["cache_key"] == first["cache_key"]
    record = Artifact.open(again["artifact"]).manifest.details["cache_key"]
    assert record["key"] == first["cache_key"] and len(record["record"]["program"]) == 64   # in the manifest
    model.write_text(TINY.replace("relu", "sigmoid"))   # an edit: another program, same weights and shapes
    edited = run()["cells"][0]
    assert edited["status"] == "ok" and edited["cached"] is False and edited["cache_key"] != first["cache_key"]
    assert Artifact.open(edited["artifact"]).manifest.details["cache_key"]["record"]["program"] != \
        record["record"]["program"]


def test_failed_cells_do_not_stop_the_run(tmp_path):
    res = run_matrix(["vit_tiny_digits", "no_such_model"], targets=["onnx"], precisions=["int3"],
                     cache_dir=tmp_path, iters=1, op_profile=False, isolate=False)
    errors = [c["error"] for c in res["cells"]]
    assert len(errors) == 2 and all(c["status"] == "failed" for c in res["cells"])
    assert "int3" in errors[0] and "no_such_model" in errors[1] and "vit_tiny_digits" in errors[1]


def test_resolution_change(monkeypatch):
    spec = zoo_at("vit_tiny_digits", 24)
    assert tuple(spec.example_inputs[0].shape) == (1, 1, 24, 24) and spec.source["resampled"] == ["pos_embed"]
    assert spec.info["preprocessing"]["size"] == [24, 24]
    x, _ = spec.entry.test_set()
    assert x.shape[1:] == (1, 24, 24)
    assert spec.module(spec.example_inputs[0]).shape == (1, 10)

    import dataclasses

    import torch

    from edge import zoo
    # a zoo model whose factory has no img_size: its cells fail with the reason, at its own size it works
    entry = dataclasses.replace(zoo.get_entry("vit_tiny_digits"), name="fixed_size_net", weights=None,
                                factory=lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10)))
    with zoo.MODELS.scoped("fixed_size_net", entry), \
            pytest.raises(ResolutionError, match="fixed_size_net cannot change its input resolution.*native 32px"):
        zoo_at("fixed_size_net", 64)


def test_cli_parsing_helpers(tmp_path):
    assert parse_resolutions(None) == [None] and parse_resolutions("224, 512") == [224, 512]
    with pytest.raises(UsageError, match="integer"):
        parse_resolutions("224,big")
    with pytest.raises(UsageError, match="positive"):
        run_matrix(["vit_tiny_digits"], targets=["onnx"], resolutions=[0], cache_dir=tmp_path)
    with pytest.raises(UsageError, match="unknown target 'onnnx'"):
        run_matrix(["vit_tiny_digits"], targets=["onnnx"], cache_dir=tmp_path)
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    assert are_artifacts([str(art)]) is True and are_artifacts(["vit_tiny"]) is False
    with pytest.raises(UsageError, match="not both"):
        are_artifacts([str(art), "vit_tiny"])


def test_a_backend_crash_fails_one_cell_not_the_run(tmp_path):
    # a model whose forward aborts the interpreter (as a native crash in a converter would)
    (tmp_path / "crash.py").write_text("import os, torch\n\nclass M(torch.nn.Module):\n"
                                       "    def forward(self, x):\n        os.abort()\n\n\ndef make():\n    return M()\n")
    seen = []
    res = run_matrix([f"{tmp_path / 'crash.py'}:make"], targets=["onnx"], precisions=["fp32", "fp16"],
                     resolutions=[8], cache_dir=tmp_path / "cache", iters=1, op_profile=False,
                     progress=lambda d, n, c: seen.append(c["id"]))
    assert len(res["cells"]) == 2 and len(seen) == 2
    for cell in res["cells"]:
        assert cell["status"] == "failed" and "worker died during this cell (killed by SIGABRT)" in cell["error"]
