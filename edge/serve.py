"""``edge serve DIR``: the phone web app (apps/web) with every ONNX artifact below DIR, and a results sink.

DIR is one artifact folder or a folder of artifacts (an ``edge convert ... -o out/demo`` run with several
precisions, or several models): every ONNX artifact below it that passed (or was not given) its parity check
is offered; failed, non-ONNX or malformed ones are listed with the reason and not served.

Routes (an allow-list built at start-up; anything else is 404, a malformed path 400):

* ``/`` and the app's own files (:data:`APP_FILES`);
* ``/ort/NAME``: the files of ``apps/web/node_modules/onnxruntime-web/dist`` (no CDN);
* ``/artifacts/ID/manifest.json`` and ``/artifacts/ID/FILE`` for each file its manifest lists (every one
  resolved inside its artifact folder: no ``..``, no absolute path, no symlink leaving it; checked again on
  each request); ``/artifact/...`` is the first artifact (one-artifact URLs of earlier versions);
* ``GET /api/artifacts``: what is offered (model, precision, size) and what was skipped and why;
* ``GET /api/results``: the cells of results.json without their samples (the page shows the desktop cell
  of the same model beside its own);
* ``POST /api/results``: the page's latency samples. The server recomputes the statistics with
  :func:`edge.profile.summarize` and adds a ``browser`` cell, with the device's user agent, to results.json.

Hostile requests get a 4xx and the server stays up: paths are checked before any lookup, bodies need a
Content-Length of at most :data:`MAX_POST` bytes (no chunked bodies) and JSON nesting is bounded
(:data:`MAX_JSON_DEPTH`) before the body is parsed. Binds to loopback unless ``--host`` says otherwise.
Responses carry COOP/COEP so the page is cross-origin isolated and onnxruntime-web may use WASM threads.
"""
from __future__ import annotations

import json
import mimetypes
import os
import re
import shutil
import socket
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from edge.errors import EdgeError, UsageError
from edge.progress import console

APP_FILES = ("index.html", "app.js", "infer.js", "camera.js", "pad.js", "bench.js", "sw.js", "style.css",
             "manifest.webmanifest", "icon.svg", "icon-192.png", "icon-512.png")
MAX_POST = 4 << 20          # bytes; 100,000 samples as JSON fit in about 2 MB
MAX_SAMPLES = 100_000
MAX_JSON_DEPTH = 32
MAX_SCAN_DEPTH = 6          # how deep below DIR artifacts are looked for
REQUEST_TIMEOUT_S = 30      # a client that stops sending mid-request is dropped
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/manifest+json", ".webmanifest")
mimetypes.add_type("image/svg+xml", ".svg")


class HttpError(Exception):
    """A request that is answered with ``status`` and a one-line JSON error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def default_app_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "apps" / "web"


def check_app(app_dir: Path) -> Path:
    """The onnxruntime-web dist folder, or a UsageError saying how to install it."""
    for name in ("index.html", "app.js", "sw.js", "manifest.webmanifest"):
        if not (app_dir / name).is_file():
            raise UsageError(f"the web app is incomplete: {app_dir / name} is missing (edge serve needs the "
                             f"repository's apps/web folder; pass app_dir=)")
    dist = app_dir / "node_modules" / "onnxruntime-web" / "dist"
    if not (dist / "ort.min.mjs").is_file():
        raise UsageError(f"onnxruntime-web is not installed in {app_dir}; run `sh {app_dir / 'setup.sh'}` "
                         f"(npm ci, pinned by package-lock.json)")
    return dist


# ---------------------------------------------------------------------------------------------- paths

def file_inside(folder: Path, rel: Any) -> Path:
    """``folder / rel`` resolved, or a ValueError when ``rel`` is not a plain relative path whose file
    (symlinks followed) lies inside ``folder``."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise ValueError(f"{rel!r} is not a relative file name")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", rel) or any(p in ("", ".", "..") for p in rel.split("/")):
        raise ValueError(f"{rel!r} leaves the artifact folder (absolute, '..' or empty parts)")
    root = folder.resolve()
    try:
        path = (root / pure).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ValueError(f"{rel!r} is missing") from None
    if not path.is_relative_to(root):
        raise ValueError(f"{rel!r} resolves outside the artifact folder (a symlink to {path})")
    if not path.is_file():
        raise ValueError(f"{rel!r} is not a regular file")
    return path


def clean_request_path(raw: str) -> str:
    """The decoded path of a request target, or an HttpError(400) for anything unusual: not origin-form,
    ``.``/``..`` segments (also percent-encoded), empty segments, backslashes, control characters, bad UTF-8."""
    target = raw.split("?", 1)[0].split("#", 1)[0]
    if not target.startswith("/") or target.startswith("//"):
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request path must start with a single '/'")
    try:
        path = unquote(target, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request path is not UTF-8") from None
    if any(ord(ch) < 32 or ch in "\\\x7f" for ch in path):
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request path holds control characters or backslashes")
    parts = path.split("/")[1:]
    if any(p in (".", "..") for p in parts) or "" in parts[:-1]:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request path holds '.', '..' or empty segments")
    return path


# ------------------------------------------------------------------------------------------- bodies

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``limit`` (brackets inside strings ignored);
    a loop, not recursion, so a hostile body cannot exhaust the stack before it is refused."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def parse_json_body(data: bytes) -> Any:
    """Decode a POST body: UTF-8 JSON nested at most :data:`MAX_JSON_DEPTH` deep, else HttpError(400)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the body is not UTF-8") from None
    if json_depth_exceeds(text):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except RecursionError:   # cannot happen after the depth check; kept so a request never dies unanswered
        raise HttpError(HTTPStatus.BAD_REQUEST, "the JSON body nests too deep") from None
    except ValueError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {e}") from None


def content_length(headers: Any) -> int:
    """The declared body size, refused before any of it is read: 411 without one (chunked included),
    400 when malformed or empty, 413 above :data:`MAX_POST`."""
    if headers.get("Transfer-Encoding") is not None:
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send a Content-Length")
    values = headers.get_all("Content-Length") or []
    if not values:
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
    if len(set(v.strip() for v in values)) != 1 or not re.fullmatch(r"[0-9]{1,15}", values[0].strip()):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length {values!r} is not one non-negative integer")
    n = int(values[0])
    if n == 0:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the body is empty")
    if n > MAX_POST:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {n} bytes; at most {MAX_POST} are accepted")
    return n


# ---------------------------------------------------------------------------------------- artifacts

@dataclass
class Offered:
    """An artifact the page may load: its URL id, folder and the files it may fetch (name -> path)."""

    id: str
    rel: str
    artifact: Any
    files: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        m = self.artifact.manifest
        from edge.parity import ParityReport
        first = ParityReport.from_dict(m.parity).first_output
        return {"id": self.id, "path": self.rel, "model": model_name(m, self.artifact.path),
                "precision": m.precision, "target": m.target, "status": m.status,
                "size_bytes": sum(p.stat().st_size for n, p in self.files.items() if n != "manifest.json"),
                "main": m.main_file, "files": [f for f in m.files], "input": {"name": m.inputs[0].name,
                                                                                "shape": m.inputs[0].shape},
                "task": (m.model or {}).get("task"), "has_labels": bool((m.model or {}).get("labels")),
                "cosine": first.get("cosine"), "accuracy": first.get("accuracy"),
                "url": f"/artifacts/{self.id}/"}


def model_name(manifest: Any, folder: Path) -> str:
    return (manifest.model or {}).get("name") or (manifest.source or {}).get("name") or folder.name


def why_not_offered(art: Any) -> str | None:
    """None when the browser can run ``art``; else the reason it is left out."""
    from edge.artifact import STATUS_FAILED
    m = art.manifest
    if m.format != "onnx":
        return f"it is {m.target}/{m.format}; the browser runs ONNX artifacts (edge convert MODEL -t onnx)"
    if m.status == STATUS_FAILED:
        return "it failed its parity check (rebuild it with `edge convert`)"
    if len(m.inputs) != 1 or len(m.inputs[0].shape) != 4:
        return f"the web app feeds one image tensor [N, C, H, W]; it takes {[t.shape for t in m.inputs]}"
    return None


def _candidates(root: Path) -> list[Path]:
    """Artifact folders at or below ``root`` (hidden folders, such as staging ones, and symlinked
    folders are not entered; an artifact's own subfolders are not searched)."""
    if (root / "manifest.json").is_file():
        return [root]
    found = []
    for here, dirs, files in os.walk(root, followlinks=False):
        depth = len(Path(here).relative_to(root).parts)
        if "manifest.json" in files and Path(here) != root:
            found.append(Path(here))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_SCAN_DEPTH else []
    return sorted(found)


def discover(root: str | Path) -> tuple[list[Offered], list[dict[str, str]]]:
    """Every artifact below ``root`` the browser may run, and the others with the reason they are skipped.

    Raises:
        UsageError: ``root`` is missing, or nothing under it can be served (the reasons are listed).

    Example:
        >>> offered, skipped = discover("out/demo"); [o.describe()["precision"] for o in offered]
    """
    from edge.artifact import Artifact
    root = Path(root)
    if not root.is_dir():
        Artifact.open(root)   # raises the usual "no artifact folder at ..." error
    single = (root / "manifest.json").is_file()
    offered: list[Offered] = []
    skipped: list[dict[str, str]] = []
    for folder in _candidates(root):
        rel = "." if folder == root else folder.relative_to(root).as_posix()
        try:
            art = Artifact.open(folder)
            reason = why_not_offered(art)
            files = {}
            if reason is None:
                files = {"manifest.json": file_inside(folder, "manifest.json"),
                         **{name: file_inside(folder, name) for name in art.manifest.files}}
        except (EdgeError, ValueError, OSError, TypeError, AttributeError) as e:
            reason = f"it cannot be served: {e}"
        if reason is not None:
            skipped.append({"path": rel, "reason": reason})
            if single:
                raise UsageError(f"{root} is not served: {reason}")
            continue
        offered.append(Offered(str(len(offered)), rel, art, files))
    if not offered:
        why = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped) or "no manifest.json below it"
        raise UsageError(f"no ONNX artifact to serve under {root} ({why}); convert one with "
                         f"`edge convert MODEL -t onnx -o DIR`")
    return offered, skipped


# --------------------------------------------------------------------------------------- results

def browser_cell(manifest: Any, artifact: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Validate the page's post and turn it into a results cell (statistics recomputed here)."""
    from edge.cells import CELL_FIELDS, STATUS_OK
    from edge.profile import summarize
    samples = body.get("samples_ms")
    if not isinstance(samples, list) or not 0 < len(samples) <= MAX_SAMPLES or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 3.6e6 for v in samples):
        raise UsageError(f"samples_ms must be a list of 1..{MAX_SAMPLES} latencies in ms")
    backend = str(body.get("backend") or "wasm")[:16]
    ua = str(body.get("user_agent") or "")[:400]
    model = model_name(manifest, artifact)
    shape = manifest.inputs[0].shape if manifest.inputs else []
    res = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else None
    stats = summarize(samples)

    def num(key: str) -> float | None:
        v = body.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e12 else None

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
                                                   "cross_origin_isolated", "warm_load_ms", "fallback")})
    if len(json.dumps(cell["browser"], default=str)) > 4000:   # the page's free-form details stay small
        cell["browser"] = {"note": "browser details over 4000 characters were dropped"}
    return cell


def add_cell(results_path: Path, cell: dict[str, Any]) -> None:
    """Add ``cell`` to results.json (created when missing); an earlier cell with the same id and user agent
    is replaced, so a re-run on the same phone updates its row."""
    from edge.artifact import now_iso, write_json_atomic
    from edge.cells import SCHEMA, host_info
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


def results_summary(results_path: Path) -> dict[str, Any]:
    """The cells of results.json without samples (what the page shows beside its own cell)."""
    from edge.report import load_results
    if not results_path.is_file():
        return {"cells": [], "results": str(results_path)}
    try:
        data = load_results(results_path)
    except UsageError as e:
        return {"cells": [], "results": str(results_path), "error": str(e)}
    keep = ("id", "model", "resolution", "target", "precision", "runtime", "status", "p50_ms", "p90_ms", "p99_ms",
            "mean_ms", "load_ms", "first_inference_ms", "iters", "device", "user_agent")
    host = data.get("host") if isinstance(data.get("host"), dict) else {}
    return {"results": str(results_path), "host": {k: host.get(k) for k in ("cpu", "machine", "system") if k in host},
            "cells": [{k: c.get(k) for k in keep} for c in data["cells"] if isinstance(c, dict)]}


# ------------------------------------------------------------------------------------------ server

def build_routes(offered: list[Offered], app: Path, dist: Path) -> dict[str, tuple[Path | None, str | Path]]:
    """The allow-list: URL path -> (artifact folder, file name) or (None, app/runtime file). Nothing else is
    ever read for a GET; an artifact's file is resolved again on each request (its folder may change)."""
    routes: dict[str, tuple[Path | None, str | Path]] = {"/": (None, app / "index.html")}
    routes.update({f"/{name}": (None, app / name) for name in APP_FILES if (app / name).is_file()})
    for f in sorted(dist.iterdir()):
        if f.is_file() and not f.is_symlink() and not f.name.startswith("."):
            routes[f"/ort/{f.name}"] = (None, f)
    for o in offered:
        for name in o.files:
            routes[f"/artifacts/{o.id}/{name}"] = (o.artifact.path, name)
            if o.id == "0":
                routes[f"/artifact/{name}"] = (o.artifact.path, name)
    return routes


def make_server(artifact: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                results: str | Path = "results.json", app_dir: str | Path | None = None,
                quiet: bool = True) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server for one artifact or a folder of artifacts; ``server.server_address``
    has the bound port (``port=0``: any); ``server.offered`` / ``server.skipped`` list the artifacts.

    Example:
        >>> srv = make_server("out/demo", port=0); threading.Thread(target=srv.serve_forever).start()
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"--port {port!r} is not a TCP port; pick one from 1 to 65535 (0: any free port)")
    try:   # the options first: a host that does not resolve is named before the artifacts and the app are read
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}; "
                         f"pick another --host/--port") from None
    offered, skipped = discover(artifact)
    app = Path(app_dir) if app_dir else default_app_dir()
    dist = check_app(app)
    routes = build_routes(offered, app, dist)
    by_id = {o.id: o for o in offered}
    catalogue = json.dumps({"artifacts": [o.describe() for o in offered], "skipped": skipped,
                            "default": offered[0].id}).encode()
    results_path = Path(results).absolute()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-serve"
        sys_version = ""
        timeout = REQUEST_TIMEOUT_S
        default_request_version = "HTTP/1.0"   # a malformed request line still gets a status line

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # http.server's own refusals (bad request line, 414, 431) in the same JSON form as ours
            # (505 for an unknown HTTP version becomes 400: every bad request is the client's 4xx)
            self._error(HttpError(code if code < 500 else HTTPStatus.BAD_REQUEST, message or HTTPStatus(code).phrase))

        def log_message(self, fmt: str, *args: Any) -> None:
            if not quiet:
                super().log_message(fmt, *args)

        def __getattr__(self, name: str) -> Any:
            # any other method (PUT, DELETE, FOO) is a 405, not http.server's 501
            if name.startswith("do_"):
                return self._not_allowed
            raise AttributeError(name)

        def _headers(self, code: int, ctype: str, length: int) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            if code >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()

        def _json(self, code: int, data: Any) -> None:
            body = data if isinstance(data, bytes) else json.dumps(data, default=str).encode()
            self._headers(code, "application/json", len(body))
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, e: HttpError) -> None:
            self._json(e.status, {"error": str(e)})

        def _not_allowed(self) -> None:
            self._error(HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command[:20]!r} is not allowed here"))

        def _file(self, folder: Path | None, name: str | Path) -> None:
            path = Path(name) if folder is None else file_inside(folder, str(name))   # still inside, a file
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                self._headers(HTTPStatus.OK, ctype, size)
                if self.command != "HEAD":
                    shutil.copyfileobj(fh, self.wfile, 1 << 20)

        def _answer(self, fn: Any) -> None:
            try:
                fn()
            except HttpError as e:
                self._error(e)
            except (UsageError, ValueError) as e:
                self._error(HttpError(HTTPStatus.BAD_REQUEST, str(e)))
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
            except Exception as e:   # a bug must not leave the client without an answer
                self._error(HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}"))

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(self._get)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(self._post)

        def _get(self) -> None:
            path = clean_request_path(self.path)
            if path == "/api/artifacts":
                return self._json(HTTPStatus.OK, catalogue)
            if path == "/api/results":
                return self._json(HTTPStatus.OK, results_summary(results_path))
            if path in routes:
                try:
                    return self._file(*routes[path])
                except (ValueError, OSError):
                    pass   # the file left its folder or vanished since start-up
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such file: {path[:200]}")

        def _post(self) -> None:
            self.close_connection = True    # an error may leave body bytes unread: never parse them as a request
            if clean_request_path(self.path) != "/api/results":
                raise HttpError(HTTPStatus.NOT_FOUND, "POST only to /api/results")
            n = content_length(self.headers)
            data = self.rfile.read(n)
            if len(data) != n:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"the body ended after {len(data)} of {n} bytes")
            body = parse_json_body(data)
            if not isinstance(body, dict):
                raise HttpError(HTTPStatus.BAD_REQUEST, "the results body must be a JSON object")
            chosen = by_id.get(str(body.get("artifact", offered[0].id)))
            if chosen is None:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown artifact {str(body.get('artifact'))[:40]!r}; "
                                f"GET /api/artifacts lists them")
            cell = browser_cell(chosen.artifact.manifest, chosen.artifact.path, body)
            with lock:
                add_cell(results_path, cell)
            if not quiet:
                print(f"browser cell {cell['id']}: p50 {cell['p50_ms']:.3f} ms ({cell['iters']} iters) from "
                      f"{cell['user_agent']} -> {results_path}", file=console(), flush=True)
            self._json(HTTPStatus.OK, {"ok": True, "results": str(results_path), "cell": {
                k: v for k, v in cell.items() if k != "samples_ms"}})

    try:
        srv = ThreadingHTTPServer((host, port), Handler)
    except (OSError, OverflowError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise UsageError(f"cannot listen on {host}:{port}: {reason}; pick another --host/--port") from None
    srv.daemon_threads = True
    srv.offered, srv.skipped = offered, skipped   # type: ignore[attr-defined]
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
    arts = "\n".join(f"  [{o.id}] {o.rel}: {model_name(o.artifact.manifest, o.artifact.path)} "
                     f"{o.artifact.manifest.precision}" for o in srv.offered)
    left = "".join(f"\n  not offered: {s['path']}: {s['reason']}" for s in srv.skipped)
    print(f"edge serve: {artifact} at {url}{note}\n{arts}{left}\n  browser results join {Path(results).absolute()} "
          f"(then: edge report {results})", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
