"""Reports: results.json/csv round trip, report.md, a self-contained report.html with its plots, compare."""
from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest

from edge.errors import UsageError
from edge.matrix import CELL_FIELDS, SCHEMA
from edge.profile import summarize
from edge.report import compare, load_results, markdown, write_all

pytest.importorskip("matplotlib", reason="reports need matplotlib (pip install 'edge[report]')")


def _cell(model, res, target, precision, median, acc, rss, seed):
    """A cell shaped as run_matrix writes it, with latency samples drawn around ``median``."""
    samples = list(np.random.default_rng(seed).lognormal(np.log(median), 0.1, 30))
    cell = {k: None for k in CELL_FIELDS}
    cell.update(summarize(samples), id=f"{model}@{res}/{target}/{precision}", model=model, resolution=res,
                target=target, precision=precision, runtime=target, status="ok", cached=False, samples_ms=samples,
                accuracy=acc, cosine=0.9999, peak_rss_mb=rss, size_mb=1.0, load_ms=10.0, iters=30, warmup=2)
    return cell


@pytest.fixture
def results():
    cells = [_cell("m", 32, "onnx", "fp32", 1.0, 0.98, 400, 0), _cell("m", 32, "onnx", "int8", 0.7, 0.97, 390, 1),
             _cell("m", 64, "onnx", "fp32", 3.5, 0.95, 450, 2), _cell("m", 64, "openvino", "fp32", 2.9, 0.95, 470, 3)]
    failed = {k: None for k in CELL_FIELDS}
    failed.update(id="m@32/executorch/fp32", model="m", resolution=32, target="executorch", precision="fp32",
                  status="failed", error="ExecuTorch lowering failed: <b>unsupported</b> op")
    cells.append(failed)
    prof = {"cell": "m@64/onnx/fp32", "runtime": "onnxruntime", "iters": 20, "error": None,
            "rows": [{"op": f"node{i}", "type": t, "calls": 20, "total_ms": 20 * v, "mean_ms": v, "share": v / 2.0}
                     for i, (t, v) in enumerate([("MatMul", 1.2), ("Softmax", 0.5), ("Add", 0.3)])]}
    return {"schema": SCHEMA, "created": "2026-11-23T00:00:00+00:00", "host": {"cpu": "test cpu", "cores": 2},
            "settings": {"warmup": 2, "iters": 30, "versions": {"edge": "0.1.0"}}, "cells": cells, "op_profile": prof}


def test_write_all_files(results, tmp_path):
    paths = write_all(results, tmp_path)
    assert sorted(p.name for p in paths) == ["report.html", "report.md", "results.csv", "results.json"]
    assert load_results(tmp_path / "results.json")["cells"][0]["samples_ms"] == results["cells"][0]["samples_ms"]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 5 and list(rows[0]) == CELL_FIELDS
    assert rows[4]["status"] == "failed" and "unsupported" in rows[4]["error"]
    assert float(rows[0]["p50_ms"]) == pytest.approx(results["cells"][0]["p50_ms"])


def test_html_is_self_contained_with_four_plots(results, tmp_path):
    write_all(results, tmp_path)
    text = (tmp_path / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 4   # distribution, Pareto, resolution, per-op
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text and "<script" not in text   # opens offline
    assert "&lt;b&gt;unsupported&lt;/b&gt;" in text   # error text is escaped


def test_markdown_lists_failures_and_ops(results):
    md = markdown(results)
    assert "| m | 32 | onnx | fp32 | - | ok |" in md
    assert "m@32/executorch/fp32" in md and "unsupported" in md and "MatMul" in md


def test_plots_skip_missing_data(results, tmp_path):
    for c in results["cells"]:
        c["status"] = "failed"
    results["op_profile"] = None
    write_all(results, tmp_path)
    text = (tmp_path / "report.html").read_text()
    assert "data:image/png" not in text and text.count("no measured cell has the data") == 4


def test_compare_ratios(results):
    b = json.loads(json.dumps(results))
    for c in b["cells"]:
        if c["p50_ms"]:
            c["p50_ms"] *= 0.5
    rows = {r["id"]: r for r in compare(results, b)}
    assert rows["m@32/onnx/fp32"]["p50_ms_ratio"] == pytest.approx(0.5)
    assert rows["m@32/executorch/fp32"]["p50_ms_ratio"] is None


def test_cli_report_and_compare(results, tmp_path, capsys):
    from edge.cli import main
    (tmp_path / "a").mkdir()
    write_all(results, tmp_path / "a")
    assert main(["report", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "report.html").is_file()
    assert main(["compare", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")]) == 0
    assert "m@32/onnx/int8" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"cells": 3}')
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert "not an edge bench results file" in capsys.readouterr().err


def test_load_results_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_results(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_results(tmp_path / "x.json")


def test_compare_verdict_is_noise_aware(results):
    from edge.report import format_compare, noise_verdict
    rng = np.random.default_rng(7)
    a = list(rng.lognormal(np.log(1.0), 0.1, 60))
    same = list(rng.lognormal(np.log(1.01), 0.1, 60))   # 1% apart: inside the run-to-run spread
    faster = list(rng.lognormal(np.log(0.7), 0.1, 60))
    assert noise_verdict(a, same)["verdict"] == "same"
    v = noise_verdict(a, faster)
    assert v["verdict"] == "faster" and v["p50_ratio_ci"][1] < 1
    assert noise_verdict(faster, a)["verdict"] == "slower"
    assert noise_verdict(a, None)["verdict"] is None
    b = json.loads(json.dumps(results))
    b["cells"][0]["samples_ms"] = [x * 0.5 for x in b["cells"][0]["samples_ms"]]
    rows = {r["id"]: r for r in compare(results, b)}
    assert rows["m@32/onnx/fp32"]["verdict"] == "faster" and rows["m@32/onnx/int8"]["verdict"] == "same"
    assert "  faster (x0." in format_compare(list(rows.values()))


def test_deployment_profile_and_placement_in_reports(results):
    from edge.report import html_report
    c = results["cells"][0]
    c.update(cold_load_ms=120.0, warm_load_ms=30.0, first_inference_ms=4.0, base_rss_mb=60.0, model_rss_mb=12.5,
             placement={"unit": "layers", "total": 3, "delegated": 2, "where": {"optimized": 2, "reference": 1},
                        "rows": [{"op": "conv", "type": "Convolution", "where": "optimized"},
                                 {"op": "fc", "type": "FullyConnected", "where": "optimized"},
                                 {"op": "topk", "type": "TopK", "where": "reference", "kernel": "ref_any_f32"}],
                        "summary": "2 of 3 layers on optimized kernels; f32 x3"})
    md, page = markdown(results), html_report(results)
    for text in (md, page):
        assert "Deployment profile" in text and "2 of 3 layers on optimized kernels" in text
        assert "topk (TopK, reference, ref_any_f32)" in text and "12.5" in text and "120.0" in text
    assert "| 2/3 layers |" in md
