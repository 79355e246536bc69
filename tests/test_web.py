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
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge.errors import UsageError

WEB = Path(__file__).resolve().parent / "web"
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
    for bad in ("/artifact/other.txt", "/etc/passwd", "/artifacts/1/model.onnx"):
        assert _get(url + bad)[0] == 404, bad
    # (urllib normalises nothing here either; tests/test_serve_security.py sends unnormalised paths raw)
    for bad in ("/artifact/../manifest.json", "/ort/../package.json"):
        assert _get(url + bad)[0] == 400, bad
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



# ------------------------------------------------------------------------------ the phone app in Chromium

CAMERA_DIGITS = (2, 3, 5, 8)     # what the fake camera shows (the pad draws a 1 and a 7)
FRAME = 256                      # camera frame side: the 32x32 digit scaled up 8x (nearest)
BENCH_ITERS = 50


def _serve(root: Path, results: Path):
    from edge.serve import make_server
    srv = make_server(root, host="127.0.0.1", port=0, results=results)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def digits_run(digits_onnx, tmp_path_factory):
    """A run folder as `edge convert -p fp32,int8 -o run` leaves it, plus a failed artifact (not offered),
    and a desktop results.json with the run's own ONNX Runtime cells."""
    _require_browser_stack()     # before the conversion it would waste
    import edge
    from edge.artifact import STATUS_FAILED, Artifact
    from edge.matrix import CELL_FIELDS, SCHEMA, host_info
    root = tmp_path_factory.mktemp("web") / "run"
    shutil.copytree(digits_onnx.path, root / "onnx-fp32")
    edge.convert("vit_tiny_digits", target="onnx", precision="int8", out=root / "onnx-int8")
    shutil.copytree(root / "onnx-int8", root / "onnx-broken")
    broken = Artifact.open(root / "onnx-broken")
    broken.manifest.status = STATUS_FAILED
    broken.write_manifest()
    cells = []
    for p in ("fp32", "int8"):
        rep = edge.benchmark(root / f"onnx-{p}", warmup=5, iters=30, native_profile=False).to_json(samples=True)
        cell = {k: rep.get(k) for k in CELL_FIELDS}
        cell.update(id=f"vit_tiny_digits@32/onnx/{p}", model="vit_tiny_digits", resolution=32, target="onnx",
                    precision=p, runtime="onnxruntime", status="ok", samples_ms=rep["samples_ms"])
        cells.append(cell)
    results = root.parent / "results.json"
    results.write_text(json.dumps({"schema": SCHEMA, "created": "", "host": host_info(), "settings": {},
                                   "cells": cells, "op_profile": None}))
    return root, results


def drive_browser(args: list[str], srv, timeout: float = 300) -> tuple[dict, str]:
    """Run tests/web/pwa.mjs; stop ``srv`` when it prints STOP_SERVER (the offline step). (page JSON, stderr)"""
    proc = subprocess.Popen(["node", str(WEB / "pwa.mjs"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "CHROMIUM": CHROMIUM})
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            if line.strip() == "STOP_SERVER":
                srv.shutdown()
                srv.server_close()
            lines.append(line)
        err = proc.stderr.read()
        proc.wait()
    finally:
        watchdog.cancel()
    found = [ln for ln in lines if ln.startswith("{")]
    assert found, f"no output from the playwright driver: {''.join(lines)[-2000:]} {err[-2000:]}"
    return json.loads(found[-1]), err


def write_y4m(path: Path, frames: np.ndarray, *, fps: int = 10, hold: int = 6) -> None:
    """Grey uint8 frames [N, H, W] as a YUV4MPEG2 file (4:2:0, studio-range luma, neutral chroma), each
    frame held ``hold`` times: what Chromium's --use-file-for-fake-video-capture plays in a loop."""
    n, h, w = frames.shape
    chroma = bytes([128]) * ((h // 2) * (w // 2) * 2)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for fr in frames:
            y = np.round(16 + fr.astype(np.float32) * (219 / 255)).astype(np.uint8).tobytes()
            for _ in range(hold):
                f.write(b"FRAME\n" + y + chroma)


def _camera_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(32x32 model inputs, labels, 256x256 uint8 frames) of test-set digits the fp32 model gets right."""
    from edge.zoo.digits import test_set
    x, y = test_set()
    idx = [int(np.flatnonzero(y == d)[0]) for d in CAMERA_DIGITS]
    u8 = np.clip(np.round((x[idx, 0] * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)
    return x[idx], y[idx], np.kron(u8, np.ones((FRAME // 32, FRAME // 32), np.uint8))


def _top5_matches(page_top5: list[dict], logits: np.ndarray, labels: list[str], tie: float) -> None:
    """The page's top-5 labels are ONNX Runtime's, in order (neighbours closer than ``tie`` may swap)."""
    order = np.argsort(-logits, kind="stable")[:5]
    got = [t["index"] for t in page_top5]
    assert [t["label"] for t in page_top5] == [labels[i] for i in got]
    assert set(got[:4]) <= set(np.argsort(-logits)[:6]), (got, order)
    for a, b in zip(got, order):
        assert a == b or abs(logits[a] - logits[b]) < tie, (got, order.tolist(), logits[got].tolist())


@pytest.mark.slow
def test_phone_app_in_mobile_chromium(digits_run, tmp_path, capsys):
    """Picker, pad, camera, backends, benchmark, share, offline, WebGPU: one mobile Chromium session."""
    _require_browser_stack()
    import edge
    from edge.report import load_results
    root, desktop_results = digits_run
    results = tmp_path / "results.json"
    shutil.copy(desktop_results, results)
    x_cam, y_cam, frames = _camera_digits()
    video = tmp_path / "digits.y4m"
    write_y4m(video, frames)
    srv = _serve(root, results)
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    t0 = time.perf_counter()
    try:
        page, err = drive_browser([url, str(tmp_path), str(APP), str(WEB / "strokes.json"), str(video),
                                   str(BENCH_ITERS)], srv)
    finally:
        srv.shutdown()
        srv.server_close()
    wall = time.perf_counter() - t0
    assert page["ok"], (page.get("error"), page.get("log"), page.get("steps"))
    assert page["cross_origin_isolated"] is True and page["manifest_name"] == "edge on this device"
    labels = [str(i) for i in range(10)]
    sessions = {p: edge.load(root / f"onnx-{p}") for p in ("fp32", "int8")}

    def ort_logits(snap: dict) -> np.ndarray:
        a = np.asarray(snap["input"], np.float32).reshape(1, 1, 32, 32)
        return sessions[snap["precision"]].run(a)[0][0]

    def check(snap: dict, want: str, tie: float = 1e-3) -> None:
        ref = ort_logits(snap)
        _top5_matches(snap["top5"], ref, labels, tie)
        atol = 1e-3 if snap["precision"] == "fp32" else 5e-2   # int8: the WASM and x86 kernels round apart
        np.testing.assert_allclose(np.asarray(snap["logits"], np.float32), ref, atol=atol, rtol=1e-3)
        assert snap["top5"][0]["label"] == want, snap["top5"]

    # the picker offers the run's fp32 and int8, not the failed copy (listed with the reason)
    cat = page["catalogue"]
    assert sorted(a["precision"] for a in cat["artifacts"]) == ["fp32", "int8"]
    assert [(s["path"], "parity" in s["reason"]) for s in cat["skipped"]] == [("onnx-broken", True)]
    assert all("MB" in o["text"] and "vit_tiny_digits" in o["text"] for o in page["options"])
    # backends: wasm (SIMD, threads: the page is cross-origin isolated); no GPU here, so webgpu greyed with why
    bk = page["backends"]
    assert bk["wasm"]["available"] and "SIMD" in bk["wasm"]["detail"] and "threads" in bk["wasm"]["detail"]
    buttons = {b["ep"]: b for b in page["backend_buttons"]}
    for ep in ("webgpu", "webnn"):
        assert bk[ep]["available"] or (buttons[ep]["disabled"] and bk[ep]["reason"] and buttons[ep]["title"])
    assert not bk["webgpu"]["available"] and bk["webgpu"]["reason"]     # --disable-gpu in this browser
    # the drawing pad: a finger-drawn 1 and 7, fp32; then the 7 again after the picker switched to int8
    for digit in ("1", "7"):
        assert page["pad"][digit]["precision"] == "fp32" and page["pad"][digit]["backend"] == "wasm"
        check(page["pad"][digit], digit)
    assert page["pad_int8_7"]["precision"] == "int8"
    check(page["pad_int8_7"], "7", tie=5e-2)
    # the camera loop: each sampled frame is one of the shown digits, classified as ONNX Runtime does
    assert len(page["camera"]) == 4
    for snap in page["camera"]:
        assert snap["source"] == "camera" and snap["precision"] == "int8"
        a = np.asarray(snap["input"], np.float32).reshape(32, 32)
        dist = ((x_cam[:, 0] - a) ** 2).mean(axis=(1, 2))
        k = int(dist.argmin())
        assert dist[k] < 0.05, dist      # the frame came through camera, YUV and resizing close to the digit
        check(snap, str(int(y_cam[k])), tie=5e-2)
    cam = page["camera_timing"]
    assert cam["frames"] >= 40 and "ms p50" in cam["hud"][0] and "fps" in cam["hud"][1]
    assert page["paused"]["running"] is False and page["paused"]["paused"] is True
    assert page["paused"]["frames_while_hidden"] <= 1 and page["resumed"]
    # the benchmark view, its share (a browser cell in results.json beside the desktop cells) and download
    b = page["bench"]
    assert b["status"].startswith("benchmark done") and len(b["samples"]) == BENCH_ITERS and b["hist_bars"] == 18
    for key in ("load_ms", "warm_load_ms", "first_inference_ms", "p50_ms", "p90_ms", "p99_ms"):
        assert isinstance(b[key], float) and b[key] > 0, key
    assert any("onnx/int8" in r for r in b["desktop_rows"]) and any("onnx/fp32" in r for r in b["desktop_rows"])
    assert page["share_status"].startswith("posted"), page["share_status"]
    data = load_results(results)
    (cell,) = [c for c in data["cells"] if c["target"] == "browser"]
    assert cell["iters"] == BENCH_ITERS and cell["precision"] == "int8" and cell["runtime"] == "onnxruntime-web/wasm"
    assert cell["id"] == "vit_tiny_digits@32/browser-wasm/int8" and cell["user_agent"].endswith("edge-test")
    assert cell["p50_ms"] == pytest.approx(float(np.percentile(b["samples"], 50)))
    assert cell["browser"]["warm_load_ms"] == pytest.approx(b["warm_load_ms"])
    assert len([c for c in data["cells"] if c["target"] == "onnx"]) == 2
    assert page["download"]["samples_ms"] == b["samples"] and page["download_name"].endswith(".json")
    # offline: `edge serve` was stopped before the reload; the service worker's cache served the app, the
    # runtime and the int8 artifact, and the pad still classifies
    off = page["offline"]
    assert off["precision"] == "int8" and "service worker on" in off["footer"] and "1 artifact kept" in off["footer"]
    check(off, "1", tie=5e-2)
    # WebGPU through SwiftShader when this Chromium offers an adapter; otherwise the greyed reason
    gpu = page["webgpu"]
    if gpu["backends"]["webgpu"]["available"]:
        assert gpu["backend"] == "webgpu" or gpu["fallback"], gpu
        if gpu["backend"] == "webgpu":
            assert gpu["pad7"]["backend"] == "webgpu"
            check(gpu["pad7"], "7")
            assert isinstance(gpu["placement"], list)
    else:
        assert gpu["backends"]["webgpu"]["reason"] and "webgpu unavailable" in gpu["notes"]
    for name in ("web-camera.png", "web-draw.png", "web-bench.png", "web-backends.png", "web-offline.png"):
        assert (tmp_path / name).stat().st_size > 5000, name
        if os.environ.get("EDGE_UPDATE_DOCS") == "1":    # refresh the README's screenshots
            shutil.copy(tmp_path / name, ROOT / "docs" / name)
    for s in sessions.values():
        s.close()
    # the page's own cost per frame over onnxruntime-web's session.run (preprocessing, top-5, drawing)
    run_p50, frame_p50 = np.median(cam["run"]), np.median(cam["frame"])
    over = np.median(np.asarray(cam["frame"]) - np.asarray(cam["run"]))
    pad_over = [page["pad"][d]["frameMs"] - page["pad"][d]["runMs"] for d in ("1", "7")]
    with capsys.disabled():
        print(f"\nphone app (mobile Chromium, wasm, int8 camera loop over {len(cam['run'])} frames): session.run p50 "
              f"{run_p50:.3f} ms, frame p50 {frame_p50:.3f} ms, page overhead p50 {over:.3f} ms per frame "
              f"({100 * over / frame_p50:.0f}% of the frame); pad overhead {pad_over[0]:.2f} / {pad_over[1]:.2f} ms; "
              f"webgpu: {gpu['backend'] if gpu['backends']['webgpu']['available'] else gpu['backends']['webgpu']['reason']}"
              f"{'; not on webgpu: ' + str(gpu['placement']) if gpu.get('placement') else ''}; "
              f"driver steps {page['steps']} ; wall {wall:.1f} s (measured under load)")
