"""``edge serve ARTIFACT``: the phone web app (apps/web) with an ONNX artifact, and a results sink.

Routes: ``/`` and the app's files; ``/artifact/manifest.json`` and the files the manifest lists (nothing
else from the folder); ``/ort/*`` from ``apps/web/node_modules/onnxruntime-web/dist`` (no CDN); and
``POST /api/results``, where the page posts its latency samples. The server recomputes the statistics
with :func:`edge.profile.summarize` (the same figures every other cell has) and adds a ``browser`` cell,
with the device's user agent, to a results.json that ``edge report`` turns into the report.

Binds to loopback unless ``--host`` says otherwise. Responses carry COOP/COEP so the page is
cross-origin isolated and onnxruntime-web may use WASM threads.
"""
from __future__ import annotations

import json
import mimetypes
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edge.errors import UsageError
from edge.progress import console

APP_FILES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/sw.js": "sw.js",
             "/style.css": "style.css", "/manifest.webmanifest": "manifest.webmanifest", "/icon.svg": "icon.svg"}
MAX_POST = 4 << 20
MAX_SAMPLES = 100_000
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/manifest+json", ".webmanifest")


def default_app_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "apps" / "web"


def check_app(app_dir: Path) -> Path:
    """The onnxruntime-web dist folder, or a UsageError saying how to install it."""
    for name in set(APP_FILES.values()):
        if not (app_dir / name).is_file():
            raise UsageError(f"the web app is incomplete: {app_dir / name} is missing (edge serve needs the "
                             f"repository's apps/web folder; pass app_dir=)")
    dist = app_dir / "node_modules" / "onnxruntime-web" / "dist"
    if not (dist / "ort.min.mjs").is_file():
        raise UsageError(f"onnxruntime-web is not installed in {app_dir}; run `sh {app_dir / 'setup.sh'}` "
                         f"(npm ci, pinned by package-lock.json)")
    return dist


def browser_cell(manifest: Any, artifact: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Validate the page's post and turn it into a results cell (statistics recomputed here)."""
    from edge.matrix import CELL_FIELDS, STATUS_OK
    from edge.profile import summarize
    samples = body.get("samples_ms")
    if not isinstance(samples, list) or not 0 < len(samples) <= MAX_SAMPLES or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 3.6e6 for v in samples):
        raise UsageError(f"samples_ms must be a list of 1..{MAX_SAMPLES} latencies in ms")
    backend = str(body.get("backend") or "wasm")[:16]
    ua = str(body.get("user_agent") or "")[:400]
    model = (manifest.model or {}).get("name") or manifest.source.get("name") or artifact.name
    shape = manifest.inputs[0].shape if manifest.inputs else []
    res = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else None
    stats = summarize(samples)

    def num(key: str) -> float | None:
        v = body.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    cell = {k: None for k in CELL_FIELDS}
    cell.update(stats)
    cell.update(id=f"{model}@{res}/browser-{backend}/{manifest.precision}", model=model, resolution=res,
                target="browser", precision=manifest.precision, runtime=f"onnxruntime-web/{backend}",
                status=STATUS_OK, cached=True, artifact=str(artifact), samples_ms=[float(v) for v in samples],
                warmup=int(num("warmup") or 0), iters=len(samples), timer="performance.now",
                throughput_per_s=1e3 / stats["mean_ms"] if stats["mean_ms"] > 0 else None,
                load_ms=num("load_ms"), first_inference_ms=num("first_inference_ms"), user_agent=ua,
                device=" ".join(str(x) for x in (body.get("screen"), f"{body.get('hardware_concurrency')} threads")
                                if x) or None,
                browser={k: body.get(k) for k in ("hardware_concurrency", "device_memory_gb", "screen", "threads",
                                                   "cross_origin_isolated")})
    return cell


def add_cell(results_path: Path, cell: dict[str, Any]) -> None:
    """Add ``cell`` to results.json (created when missing); an earlier cell with the same id and user agent
    is replaced, so a re-run on the same phone updates its row."""
    from edge.artifact import now_iso, write_json_atomic
    from edge.matrix import SCHEMA, host_info
    from edge.report import load_results
    if results_path.is_file():
        data = load_results(results_path)
    else:
        data = {"schema": SCHEMA, "created": now_iso(), "host": host_info(), "settings": {}, "cells": [],
                "op_profile": None}
    data["cells"] = [c for c in data["cells"] if (c.get("id"), c.get("user_agent")) != (cell["id"], cell["user_agent"])]
    data["cells"].append(cell)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results_path, data)


def make_server(artifact: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                results: str | Path = "results.json", app_dir: str | Path | None = None,
                quiet: bool = True) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server; ``server.server_address`` has the bound port (``port=0``: any).

    Example:
        >>> srv = make_server("out/vit-onnx", port=0); threading.Thread(target=srv.serve_forever).start()
    """
    from edge.artifact import STATUS_FAILED, Artifact
    art = Artifact.open(artifact)
    m = art.manifest
    if m.format != "onnx":
        raise UsageError(f"edge serve runs ONNX artifacts in the browser; {artifact} is {m.target}/{m.format}. "
                         f"Convert one with `edge convert MODEL -t onnx -o DIR`")
    if m.status == STATUS_FAILED:
        raise UsageError(f"{artifact} failed its parity check; it is not served (rebuild it with `edge convert`)")
    if len(m.inputs) != 1 or len(m.inputs[0].shape) != 4:
        raise UsageError(f"the web app feeds one image tensor [N, C, H, W]; {artifact} takes "
                         f"{[t.shape for t in m.inputs]}")
    app = Path(app_dir) if app_dir else default_app_dir()
    dist = check_app(app)
    results_path = Path(results).absolute()
    lock = threading.Lock()
    art_files = {"manifest.json": art.path / "manifest.json", **{rel: art.path / rel for rel in m.files}}

    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-serve"

        def log_message(self, fmt: str, *args: Any) -> None:
            if not quiet:
                super().log_message(fmt, *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, data: Any) -> None:
            self._send(code, json.dumps(data, default=str).encode(), "application/json")

        def _file(self, path: Path) -> None:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._send(HTTPStatus.OK, path.read_bytes(), ctype)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = unquote(urlsplit(self.path).path)
            if path in APP_FILES:
                return self._file(app / APP_FILES[path])
            if path.startswith("/artifact/") and path[len("/artifact/"):] in art_files:
                return self._file(art_files[path[len("/artifact/"):]])
            if path.startswith("/ort/"):
                name = path[len("/ort/"):]
                f = dist / name
                if "/" not in name and name and not name.startswith(".") and f.is_file():
                    return self._file(f)
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such file: {path}"})

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802
            if urlsplit(self.path).path != "/api/results":
                return self._json(HTTPStatus.NOT_FOUND, {"error": "POST only to /api/results"})
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if not 0 < n <= MAX_POST:
                    raise UsageError(f"the results body must be 1..{MAX_POST} bytes")
                body = json.loads(self.rfile.read(n))
                if not isinstance(body, dict):
                    raise UsageError("the results body must be a JSON object")
                cell = browser_cell(m, art.path, body)
                with lock:
                    add_cell(results_path, cell)
            except (UsageError, ValueError) as e:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            if not quiet:
                print(f"browser cell {cell['id']}: p50 {cell['p50_ms']:.3f} ms ({cell['iters']} iters) from "
                      f"{cell['user_agent']} -> {results_path}", file=console(), flush=True)
            self._json(HTTPStatus.OK, {"ok": True, "results": str(results_path), "cell": {
                k: v for k, v in cell.items() if k != "samples_ms"}})

    try:
        srv = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None
    srv.daemon_threads = True
    return srv


def lan_address() -> str | None:
    """This machine's address on the network the default route uses (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return None


def serve(artifact: str | Path, *, host: str = "127.0.0.1", port: int = 8000, results: str | Path = "results.json",
          app_dir: str | Path | None = None) -> None:
    """Serve until Ctrl-C, printing the URL to open (on the LAN when ``host`` is not loopback)."""
    srv = make_server(artifact, host=host, port=port, results=results, app_dir=app_dir, quiet=False)
    bound = srv.server_address[1]
    if host in ("0.0.0.0", "", "::"):
        ip = lan_address() or socket.gethostname()
        url = f"http://{ip}:{bound}/"
        note = ("\n  open it on a phone on the same network. Browsers allow WebGPU, the camera stream and the\n"
                "  service worker only on https or localhost; over plain http the page falls back to WASM and\n"
                "  the photo picker (or use an https tunnel, or `adb reverse tcp:PORT tcp:PORT` + localhost).")
    else:
        url, note = f"http://{'127.0.0.1' if host in ('localhost',) else host}:{bound}/", \
            "\n  loopback only; pass --host 0.0.0.0 to reach it from a phone on the LAN"
    print(f"edge serve: {artifact} at {url}{note}\n  browser results join {Path(results).absolute()} "
          f"(then: edge report {results})", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
