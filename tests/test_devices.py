"""Devices measuring bench cells: the CLI on a factory model, a runtime crashing in its profiler, version and
hash checks before timing, artifacts sent as bytes, and the browser device resolving on the page's post."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from edge.cells import CellSpec, bench_cell
from edge.devices import BrowserDevice, LocalDevice

pytestmark = pytest.mark.skipif(not __import__("importlib.util").util.find_spec("onnxruntime"),
                                reason="onnxruntime is not installed (pip install 'edge[onnx]')")

from test_matrix import TINY  # noqa: E402  (a small conv classifier factory's source)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """`edge bench tiny.py:make --input-shape ...` through the CLI: one onnx cell, converted and measured."""
    pytest.importorskip("matplotlib", reason="reports need matplotlib (pip install 'edge[report]')")
    from edge.cli import main
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "tiny.py").write_text(TINY)
    rc = main(["bench", f"{tmp / 'tiny.py'}:make", "--input-shape", "1,1,8,8", "--targets", "onnx", "--warmup", "1",
               "--iters", "5", "--cache-dir", str(tmp / "cache"), "-o", str(tmp / "out")])
    results = json.loads((tmp / "out" / "results.json").read_text())
    return rc, results, tmp


@pytest.mark.slow
def test_cli_bench_takes_a_factory_model(bench_run):
    rc, results, tmp = bench_run
    assert rc == 0 and results["complete"] is True
    (cell,) = results["cells"]
    assert cell["status"] == "ok" and cell["resolution"] == 8 and cell["device"] == "local"
    assert cell["placement"]["summary"].endswith("nodes on CPUExecutionProvider")
    assert results["op_profile"]["cell"] == cell["id"] and results["op_profile"]["rows"]
    md, html = (tmp / "out" / "report.md").read_text(), (tmp / "out" / "report.html").read_text()
    for text in (md, html):
        assert "Deployment profile" in text and cell["placement"]["summary"].split(";")[0] in text


def _record(results):
    cell = results["cells"][0]
    return {"key": cell["cache_key"], "status": "ok", "artifact": cell["artifact"], "cached": True}


def _copy(results, tmp_path, **manifest_changes):
    """A copy of the bench run's artifact whose manifest (not hashed) says something else."""
    dest = tmp_path / "copy"
    shutil.copytree(results["cells"][0]["artifact"], dest)
    m = json.loads((dest / "manifest.json").read_text())
    for key, value in manifest_changes.items():
        m[key] = {**m[key], **value} if isinstance(value, dict) else value
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


SPEC = CellSpec(model="tiny.py:make", resolution=8, target="onnx", precision="fp32", warmup=1, iters=3)

CRASHING = """import os

from edge.runtimes.onnxruntime import OnnxRuntimeSession


class CrashingProfiler(OnnxRuntimeSession):
    name = "crashing-profiler"

    def native_profile(self, inputs, iters=20, top=25):
        os.abort()   # as a runtime that crashes natively inside its profiler
"""


@pytest.mark.slow
def test_a_runtime_crashing_in_its_profiler_fails_one_cell(bench_run, tmp_path, monkeypatch):
    """The per-op profile runs in the cell's own process: a native crash there fails that cell, not the run."""
    import importlib.util
    _, results, _ = bench_run
    plugin = tmp_path / "plugin"
    (plugin / "crashrt-0.1.dist-info").mkdir(parents=True)
    (plugin / "crashrt.py").write_text(CRASHING)
    (plugin / "crashrt-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: crashrt\nVersion: 0.1\n")
    (plugin / "crashrt-0.1.dist-info" / "entry_points.txt").write_text(
        "[edge.runtimes]\ncrashing-profiler = crashrt:CrashingProfiler\n")
    monkeypatch.setenv("PYTHONPATH", str(plugin))   # the cell's process finds the plugin by its entry point
    from edge.runtimes import RUNTIMES
    spec = importlib.util.spec_from_file_location("crashrt", plugin / "crashrt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(RUNTIMES._loaded, "crashing-profiler", mod.CrashingProfiler)   # and this process
    art = _copy(results, tmp_path, runtime="crashing-profiler")
    device = LocalDevice(cache_dir=tmp_path / "cache")
    crashed = bench_cell(SPEC, {**_record(results), "artifact": str(art)}, device)
    assert crashed["status"] == "failed" and "died during this cell (killed by SIGABRT)" in crashed["error"]
    fine = bench_cell(SPEC, _record(results), device)   # the next cell of the run is measured
    assert fine["status"] == "ok" and fine["placement"]["total"] > 0
    no_profile = bench_cell(CellSpec(**{**SPEC.to_json(), "op_profile": False}),
                            {**_record(results), "artifact": str(art)}, device)
    assert no_profile["status"] == "ok"   # the same runtime without its profiler runs


@pytest.mark.slow
def test_device_checks_versions_and_hashes(bench_run, tmp_path):
    from importlib.metadata import version
    _, results, _ = bench_run
    device = LocalDevice(cache_dir=tmp_path / "cache")
    art = _copy(results, tmp_path, versions={"onnxruntime": "0.0.1"})
    cell = bench_cell(SPEC, {**_record(results), "artifact": str(art)}, device)
    assert cell["status"] == "failed" and "onnxruntime 0.0.1" in cell["error"] \
        and f"onnxruntime {version('onnxruntime')}" in cell["error"]
    # an artifact sent as bytes (Ray's object store) is unpacked into the device's cache and checked by hash
    from edge.store import pack
    good = _copy(results, tmp_path / "g")
    sent = {**_record(results), "artifact": "/nonexistent/on/this/node", "packed": pack(good)}
    assert bench_cell(SPEC, sent, device)["status"] == "ok"
    assert (tmp_path / "cache" / "artifacts" / f"{sent['key']}.device" / "manifest.json").is_file()
    model = next(p for p in good.iterdir() if p.suffix == ".onnx")
    model.write_bytes(model.read_bytes()[:-8] + b"\0" * 8)
    tampered = bench_cell(SPEC, {**sent, "key": "other", "packed": pack(good)}, device)
    assert tampered["status"] == "failed" and "modified after it was built" in tampered["error"]


APP = Path(__file__).resolve().parent.parent / "apps" / "web"


@pytest.mark.slow
def test_browser_device_resolves_when_the_page_posts(bench_run, tmp_path):
    """The browser kind serves the artifact with edge serve's functions and returns the page's samples (the
    post is made here as the page makes it; tests/test_web.py runs the page itself in Chromium)."""
    if not (APP / "node_modules" / "onnxruntime-web" / "dist" / "ort.min.mjs").is_file():
        msg = "apps/web/node_modules/onnxruntime-web is missing (run `sh apps/web/setup.sh`: npm ci)"
        if os.environ.get("EDGE_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    _, results, _ = bench_run
    device = BrowserDevice("browser-test", port=0, app_dir=APP, timeout_s=60, cache_dir=tmp_path)
    assert device.info()["kind"] == "browser"
    out = {}
    worker = threading.Thread(target=lambda: out.update(cell=bench_cell(SPEC, _record(results), device)))
    worker.start()
    while not getattr(device, "url", None):
        time.sleep(0.05)
    page = urllib.request.urlopen(device.url + "artifact/manifest.json", timeout=10).read()
    assert json.loads(page)["target"] == "onnx"
    body = {"samples_ms": [2.0, 1.0, 3.0, 2.5, 1.5], "backend": "wasm", "user_agent": "TestPhone/1.0",
            "load_ms": 40.0, "first_inference_ms": 9.0}
    req = urllib.request.Request(device.url + "api/results", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    assert json.loads(urllib.request.urlopen(req, timeout=10).read())["ok"] is True
    worker.join(30)
    cell = out["cell"]
    assert cell["status"] == "ok" and cell["p50_ms"] == 2.0 and cell["user_agent"] == "TestPhone/1.0"
    assert cell["device"] == "browser-test" and cell["runtime"] == "onnxruntime-web/wasm"
