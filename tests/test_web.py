"""The phone web app in headless Chromium (mobile emulation), served by `edge serve` with an ONNX artifact.

Needs /usr/bin/chromium (Debian's package), node and apps/web/node_modules (`sh apps/web/setup.sh`; `make test`
runs it). Without them the browser test skips with the reason, warns, and fails when EDGE_REQUIRE_BROWSER=1 (CI).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "apps" / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not __import__("importlib.util").util.find_spec("onnxruntime"),
                                reason="onnxruntime is not installed (pip install 'edge[onnx]')")


def _missing_browser_stack() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (apt-get install -y chromium, or `sh apps/web/setup.sh`)"
    if shutil.which("node") is None:
        return "node is missing (apt-get install -y nodejs npm)"
    for pkg in ("onnxruntime-web", "playwright-core"):
        if not (APP / "node_modules" / pkg / "package.json").is_file():
            return f"apps/web/node_modules/{pkg} is missing (run `sh apps/web/setup.sh`: npm ci)"
    return None


def _require_browser_stack() -> None:
    why = _missing_browser_stack()
    if why is None:
        return
    msg = f"BROWSER TEST NOT RUN: {why}"
    if os.environ.get("EDGE_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + " (EDGE_REQUIRE_BROWSER=1)")
    warnings.warn(msg)   # listed in pytest's warnings summary, so the skip is not silent
    print(f"\n*** {msg} ***")
    pytest.skip(msg)


@pytest.fixture
def server(digits_onnx, tmp_path):
    from edge.serve import check_app, make_server
    try:
        check_app(APP)
    except UsageError:
        _require_browser_stack()
        raise
    results = tmp_path / "results.json"
    srv = make_server(digits_onnx.path, host="127.0.0.1", port=0, results=results)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", results
    srv.shutdown()
    srv.server_close()


def _get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_server_routes_and_validation(server, digits_onnx):
    url, results = server
    code, body, headers = _get(url + "/")
    assert code == 200 and b"manifest.webmanifest" in body
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert _get(url + "/artifact/manifest.json")[0] == 200
    code, body, headers = _get(url + "/artifact/model.onnx")
    assert code == 200 and body == digits_onnx.main_path.read_bytes()
    assert _get(url + "/ort/ort-wasm-simd-threaded.wasm")[2]["Content-Type"] == "application/wasm"
    for bad in ("/artifact/../manifest.json", "/artifact/other.txt", "/ort/../package.json", "/etc/passwd"):
        assert _get(url + bad)[0] == 404, bad
    code, reply = _post(url + "/api/results", b'{"samples_ms": "fast"}')
    assert code == 400 and "samples_ms" in reply["error"]
    assert _post(url + "/api/results", b"[1, 2]")[0] == 400
    assert not results.exists()
    code, reply = _post(url + "/api/results", json.dumps({"samples_ms": [2.0, 1.0, 3.0], "backend": "wasm",
                                                          "user_agent": "ua-1"}).encode())
    assert code == 200 and reply["cell"]["p50_ms"] == 2.0 and reply["cell"]["target"] == "browser"


@pytest.mark.slow
def test_serve_refuses_what_it_cannot_serve(digits_onnx, tmp_path):
    from edge.serve import make_server
    with pytest.raises(UsageError, match="onnxruntime-web is not installed"):
        empty = tmp_path / "app"
        shutil.copytree(APP, empty, ignore=shutil.ignore_patterns("node_modules"))
        make_server(digits_onnx.path, port=0, app_dir=empty)
    with pytest.raises(Exception, match="no artifact folder"):
        make_server(tmp_path / "nothing", port=0)


@pytest.mark.slow
def test_pwa_on_mobile_chromium_matches_onnxruntime(server, digits_onnx, tmp_path):
    _require_browser_stack()
    from PIL import Image

    import edge
    from edge.report import load_results
    from edge.zoo.digits import test_set
    url, results = server
    x, y = test_set()
    i = 7
    pixels = np.clip(np.round((x[i, 0] * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)   # 32x32: no resampling
    png = tmp_path / "digit.png"
    Image.fromarray(pixels, "L").convert("RGB").save(png)
    proc = subprocess.run(["node", str(ROOT / "tests" / "web" / "pwa.mjs"), url + "/", str(png), str(APP), "20"],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "CHROMIUM": CHROMIUM})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no output from the playwright driver: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    page = json.loads(lines[-1])
    assert page["ok"], page
    assert page["cross_origin_isolated"] is True and page["manifest_name"] == "edge on this device"
    # the same picture through the manifest's preprocessing and ONNX Runtime on the CPU
    pre = digits_onnx.manifest.model["preprocessing"]
    a = (np.asarray(Image.open(png).convert("L"), np.float32) * pre["scale"] - pre["mean"][0]) / pre["std"][0]
    with edge.load(digits_onnx.path) as s:
        (ref,) = s.run(a[None, None])
    got = np.asarray(page["output"]["logits"], np.float32)
    assert page["output"]["top"] == int(ref[0].argmax()) == int(y[i])
    assert page["output"]["label"] == digits_onnx.manifest.model["labels"][int(y[i])]
    np.testing.assert_allclose(got, ref[0], atol=1e-3, rtol=1e-3)
    # the posted statistics arrived and are recomputed on the server
    assert page["status"].startswith("posted"), page["status"]
    data = load_results(results)
    (cell,) = [c for c in data["cells"] if c["user_agent"] == page["user_agent"]]
    assert cell["target"] == "browser" and cell["iters"] == 20 and len(cell["samples_ms"]) == 20
    assert cell["runtime"] == f"onnxruntime-web/{page['output']['backend']}"
    assert cell["p50_ms"] == pytest.approx(float(np.percentile(cell["samples_ms"], 50)))
    assert cell["id"] == f"vit_tiny_digits@32/browser-{page['output']['backend']}/fp32"
