"""edge debug: the per-layer numeric debugger on ONNX Runtime, OpenVINO and ExecuTorch artifacts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import edge
from edge.artifact import Artifact, sha256_path
from edge.debugger import DebugTable, GraphNode, format_table, module_outputs
from edge.errors import ArtifactError, UsageError, VerificationError

HERE = Path(__file__).parent
OUTLIER = f"{HERE / 'models_for_tests.py'}:outlier"
TARGETS = ["onnx", "openvino", "executorch"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True)


def test_module_outputs_picks_the_value_leaving_the_scope():
    nodes = [GraphNode("a", ("blk", "blk.fc"), ["x"], ["h"]), GraphNode("b", ("blk",), ["h"], ["y"]),
             GraphNode("c", (), ["y"], ["z"])]
    out = module_outputs(nodes, ["blk", "blk.fc", "missing"], ["z"])
    assert out["blk.fc"][0] == ["h"] and out["blk"][0] == ["y"] and "missing" not in out


def test_bad_input(tmp_path):
    with pytest.raises(ArtifactError, match="not an edge artifact"):
        edge.debug(tmp_path)
    r = _cli("debug", str(tmp_path))
    assert r.returncode == 2 and "not an edge artifact" in r.stderr and "Traceback" not in r.stderr
    r = _cli("debug", str(tmp_path / "nope"), "--top", "0")
    assert r.returncode == 2 and "--top 0 must be a positive" in r.stderr


@pytest.fixture(scope="module")
def outlier_artifacts(tmp_path_factory):
    """The outlier model in fp32 (verified) and int8 (fails its parity check: written, marked failed)."""
    out = tmp_path_factory.mktemp("dbg")
    arts = {}
    for target in TARGETS:
        arts[(target, "fp32")] = edge.convert(OUTLIER, input_shapes=[(4, 64)], target=target,
                                              out=out / f"{target}-fp32")
        with pytest.raises(VerificationError, match="cosine"):
            edge.convert(OUTLIER, input_shapes=[(4, 64)], target=target, precision="int8", calib="synthetic",
                         out=out / f"{target}-int8")
        arts[(target, "int8")] = Artifact.open(out / f"{target}-int8")
    return arts


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fp32_every_layer_above_80_db(outlier_artifacts, target):
    art = outlier_artifacts[(target, "fp32")]
    table = edge.debug(art.path, trust_source=True)
    assert isinstance(table, DebugTable) and [r.module for r in table.rows] == ["fc1", "fc2", "head"]
    for row in table.rows:
        assert row.sqnr_db > 80, format_table(table)
        assert not row.quantized


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_int8_outlier_layer_is_found_first(outlier_artifacts, target, tmp_path):
    art = outlier_artifacts[(target, "int8")]
    before = {f: sha256_path(art.path / f) for f in art.manifest.files}
    listing = sorted(p.name for p in art.path.iterdir())
    if target == "openvino":   # the command line once (a subprocess re-imports everything: slow on 2 cores)
        r = _cli("debug", str(art.path), "--json", "--top", "2", "--html", str(tmp_path / "d.html"), "--trust-source")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        rows = data["rows"]
        assert data["target"] == target and data["granularity"] == "per layer"
        page = (tmp_path / "d.html").read_text()
        assert "data:image/png;base64," in page and "Where the error comes from" in page
    else:
        table = edge.debug(art.path, top=2, trust_source=True)
        rows = [vars(r) for r in table.rows]
        assert format_table(table).count("\n") >= 3
    assert len(rows) == 2 and rows[0]["module"] == "fc2", rows
    assert rows[0]["quantized"] and rows[0]["sqnr_db"] < 10
    assert {f: sha256_path(art.path / f) for f in art.manifest.files} == before   # never modified
    assert sorted(p.name for p in art.path.iterdir()) == listing


@pytest.mark.slow
def test_debug_inputs_file(outlier_artifacts, tmp_path):
    import numpy as np
    art = outlier_artifacts[("onnx", "fp32")]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((12, 64)).astype(np.float32))
    table = edge.debug(art.path, inputs=tmp_path / "x.npy", trust_source=True)
    assert table.inputs == 3 and table.input_kind.startswith("file")
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(UsageError, match="--inputs"):
        edge.debug(art.path, inputs=tmp_path / "bad.npy", trust_source=True)


def test_report_plots_a_debug_table():
    from edge.report import html_report
    rows = [{"index": i, "module": m, "kind": "Linear", "sqnr_db": v, "cosine": 0.9, "max_abs": 0.1, "drop_db": d,
             "precision": "int8", "quantized": True, "point": m} for i, (m, v, d) in
            enumerate([("fc1", 40.0, 0.0), ("fc2", 1.0, 39.0), ("head", 3.0, 0.0)])]
    page = html_report({"cells": [], "debug": [{"artifact": "a", "target": "onnx", "precision": "int8",
                                               "granularity": "per layer", "rows": rows, "notes": ["n"]}]})
    assert page.count("data:image/png;base64,") == 1 and "Where the error comes from" in page
