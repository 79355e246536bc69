"""`edge serve` against hostile clients, with raw sockets (no client that normalises paths).

The served artifacts are small hand-made ONNX-format folders (the server never runs them), and the app
folder is a copy with a stand-in onnxruntime-web dist, so these tests need neither a conversion nor npm.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from edge.artifact import STATUS_FAILED, STATUS_VERIFIED, Artifact, Manifest, TensorSpec, sha256_path
from edge.errors import UsageError
from edge.serve import (MAX_JSON_DEPTH, MAX_POST, HttpError, clean_request_path, discover, file_inside,
                        json_depth_exceeds, make_server)

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"TOP-SECRET-outside-the-artifact"


def make_artifact(folder: Path, *, precision: str = "fp32", fmt: str = "onnx", status: str = STATUS_VERIFIED,
                  files: dict[str, bytes] | None = None, names: list[str] | None = None) -> Path:
    """An artifact folder with ``files`` written and ``names`` (default: the files) listed in its manifest."""
    folder.mkdir(parents=True)
    files = {"model.onnx": b"not really onnx " + precision.encode()} if files is None else files
    for name, data in files.items():
        (folder / name).write_bytes(data)
    listed = {n: sha256_path((folder / n)) for n in (names if names is not None else files)}
    m = Manifest(target="onnx" if fmt == "onnx" else fmt, format=fmt, runtime="onnxruntime", precision=precision,
                 files=listed, inputs=[TensorSpec("x", [1, 1, 32, 32])], outputs=[TensorSpec("y", [1, 10])],
                 status=status, model={"name": "tiny_digits", "task": "classification",
                                       "labels": [str(i) for i in range(10)]})
    Artifact(folder, m).write_manifest()
    return folder


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    """The web app's files with a stand-in runtime (the server only lists and sends its files)."""
    app = tmp_path_factory.mktemp("app") / "web"
    shutil.copytree(ROOT / "apps" / "web", app, ignore=shutil.ignore_patterns("node_modules"))
    dist = app / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    (dist / "ort.min.mjs").write_text("export const stand_in = true;\n")
    (dist / "ort-wasm-simd-threaded.jsep.wasm").write_bytes(b"\0asm")
    return app


@pytest.fixture
def layout(tmp_path) -> dict[str, Path]:
    """tmp/outside/secret.txt beside tmp/run/{fp32, int8} (the served folder)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    run = tmp_path / "run"
    make_artifact(run / "onnx-fp32")
    make_artifact(run / "onnx-int8", precision="int8")
    return {"root": tmp_path, "run": run, "secret": outside / "secret.txt"}


@pytest.fixture
def served(layout, app_dir):
    srv = make_server(layout["run"], port=0, results=layout["root"] / "results.json", app_dir=app_dir)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], layout
    srv.shutdown()
    srv.server_close()


def raw(port: int, data: bytes, *, close_write: bool = True) -> tuple[int, bytes]:
    """Send ``data`` as it is on a fresh connection; (status code, whole response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    resp = b"".join(chunks)
    assert resp.startswith(b"HTTP/"), resp[:200]
    return int(resp.split(b" ", 2)[1]), resp


def get(port: int, target: str | bytes) -> tuple[int, bytes]:
    t = target.encode("latin-1") if isinstance(target, str) else target
    return raw(port, b"GET " + t + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")


def post(port: int, body: bytes, headers: str | None = None) -> tuple[int, bytes]:
    head = headers if headers is not None else f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return raw(port, (f"POST /api/results HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n").encode() + body)


HOSTILE_PATHS = [
    "/artifact/../outside/secret.txt", "/artifact/../../outside/secret.txt", "/artifacts/0/../../../outside/secret.txt",
    "/artifact/%2e%2e/%2e%2e/outside/secret.txt", "/artifact/%2E%2E/%2E%2E/outside/secret.txt",
    "/artifact/..%2f..%2foutside%2fsecret.txt", "/artifact/%2e%2e%2f%2e%2e%2foutside%2fsecret.txt",
    "/artifact/..\\..\\outside\\secret.txt", "/artifact/%2e%2e%5c%2e%2e%5coutside%5csecret.txt",
    "//outside/secret.txt", "/artifact//outside/secret.txt", "/artifact/.//../outside/secret.txt",
    "/artifact/model.onnx%00.txt", "/artifact/model.onnx\x00", "/artifact/%c0%ae%c0%ae/outside/secret.txt",
    "/ort/../../../../outside/secret.txt", "/ort/%2e%2e/%2e%2e/package.json", "/./index.html", "/%2e/app.js",
    "/artifact/manifest.json/..", "/artifact/./model.onnx", "http://127.0.0.1/../outside/secret.txt",
    "../outside/secret.txt", "*", "/etc/passwd", "/artifact/other.txt", "/artifacts/9/model.onnx",
    "/artifacts/0/manifest.json%2f..%2f..%2f..%2foutside%2fsecret.txt", "/node_modules/onnxruntime-web/package.json",
    "/apps/web/index.html", "/.git/config", "/artifact/%ff%fe",
]


def test_hostile_paths_never_reach_outside_files_and_the_server_stays_up(served):
    port, lay = served
    secret_abs = str(lay["secret"])
    for path in HOSTILE_PATHS + ["/artifact/" + secret_abs, "/artifact/" + secret_abs.lstrip("/"),
                                 "/artifact/C:\\Windows\\win.ini"]:
        code, resp = get(port, path)
        assert 400 <= code < 500, (path, code)
        assert SECRET not in resp, path
    # malformed requests, unknown methods and garbage: 4xx, never a hang or a dropped connection
    for req in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /a b c HTTP/1.1\r\n\r\n",
                b"DELETE /artifact/model.onnx HTTP/1.1\r\n\r\n", b"PUT /artifact/x HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
                b"FOO / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
                b"GET /\x00 HTTP/1.1\r\n\r\n"):
        code, resp = raw(port, req)
        assert 400 <= code < 500, (req[:40], code)
    code, resp = get(port, "/artifact/manifest.json")
    assert code == 200 and b'"precision": "fp32"' in resp
    code, resp = get(port, "/artifacts/1/model.onnx")
    assert code == 200 and resp.endswith(b"not really onnx int8")


def test_a_file_swapped_for_a_symlink_after_start_is_not_served(served):
    port, lay = served
    model = lay["run"] / "onnx-fp32" / "model.onnx"
    model.unlink()
    model.symlink_to(lay["secret"])
    code, resp = get(port, "/artifacts/0/model.onnx")
    assert code == 404 and SECRET not in resp


@pytest.mark.parametrize("bad", ["../outside/secret.txt", "ABSOLUTE", "link.onnx", "sub/../../outside/secret.txt"])
def test_manifests_naming_files_outside_their_folder_are_not_offered(tmp_path, app_dir, bad):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    run = tmp_path / "run"
    make_artifact(run / "good")
    evil = make_artifact(run / "evil", files={"model.onnx": b"x"})
    name = str(outside / "secret.txt") if bad == "ABSOLUTE" else bad
    if bad == "link.onnx":
        (evil / "link.onnx").symlink_to(outside / "secret.txt")
    m = json.loads((evil / "manifest.json").read_text())
    m["files"] = {name: sha256_path(outside / "secret.txt")}    # the right hash: only the path check stops it
    (evil / "manifest.json").write_text(json.dumps(m))
    offered, skipped = discover(run)
    assert [o.rel for o in offered] == ["good"]
    assert [s["path"] for s in skipped] == ["evil"]
    with pytest.raises(UsageError):
        make_server(evil, port=0, app_dir=app_dir)       # served alone, it is refused
    srv = make_server(run, port=0, app_dir=app_dir, results=tmp_path / "r.json")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        port = srv.server_address[1]
        listing = json.loads(get(port, "/api/artifacts")[1].split(b"\r\n\r\n", 1)[1])
        assert [a["path"] for a in listing["artifacts"]] == ["good"]
        reason = listing["skipped"][0]["reason"]
        assert listing["skipped"][0]["path"] == "evil" and name.rsplit("/", 1)[-1] in reason, reason
        for path in ("/artifacts/1/" + name.lstrip("/"), "/artifacts/1/link.onnx", "/artifacts/1/manifest.json"):
            code, resp = get(port, path)
            assert code in (400, 404) and SECRET not in resp, path
    finally:
        srv.shutdown()
        srv.server_close()


def test_post_bodies_are_refused_before_they_are_read(served):
    port, lay = served
    results = lay["root"] / "results.json"
    # the headers alone: the server must answer without waiting for a body that never comes
    cases = [(f"Content-Length: {MAX_POST + 1}\r\n", 413), ("Content-Length: 99999999999999\r\n", 413),
             ("", 411), ("Transfer-Encoding: chunked\r\n", 411),
             ("Transfer-Encoding: chunked\r\nContent-Length: 10\r\n", 411), ("Content-Length: -1\r\n", 400),
             ("Content-Length: abc\r\n", 400), ("Content-Length: 1e3\r\n", 400), ("Content-Length: +5\r\n", 400),
             ("Content-Length: 0\r\n", 400), ("Content-Length: 5\r\nContent-Length: 6\r\n", 400)]
    for head, want in cases:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(f"POST /api/results HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
            resp = s.recv(65536)      # no shutdown, no body: a server that reads first would hang here
        assert int(resp.split(b" ", 2)[1]) == want, (head, resp[:120])
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"samples_ms": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"1" + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
                 b'{"a": ' * 5000 + b"1" + b"}" * 5000, b"\xff\xfe not utf-8", b"{not json", b"[1, 2]",
                 b'{"samples_ms": "fast"}', b'{"samples_ms": [1e999]}', b'{"samples_ms": [NaN]}',
                 b'{"samples_ms": [1], "artifact": "7"}', b'{"samples_ms": [' + b"9" * 5000 + b"]}"):
        code, resp = post(port, body)
        assert code == 400, (body[:40], code, resp[-200:])
    code, resp = post(port, b'{"samples_ms": [1.0, 2.0', f"Content-Length: 100\r\n")   # body ends early
    assert code == 400
    code, resp = raw(port, b"POST /api/other HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert code == 404
    assert not results.exists()
    # brackets inside strings are not nesting; the server is still up and takes a normal post
    ok = json.dumps({"samples_ms": [2.0, 1.0, 3.0], "user_agent": "[[[[" * 50, "artifact": "1"}).encode()
    code, resp = post(port, ok)
    assert code == 200, resp[-300:]
    (cell,) = json.loads(results.read_text())["cells"]
    assert cell["precision"] == "int8" and cell["p50_ms"] == 2.0
    code, resp = get(port, "/api/results")
    assert code == 200 and b'"p50_ms": 2.0' in resp and b"samples_ms" not in resp


def test_path_and_depth_checks_unit():
    assert clean_request_path("/artifact/model.onnx?x=1") == "/artifact/model.onnx"
    assert clean_request_path("/artifacts/0/a%20b.onnx") == "/artifacts/0/a b.onnx"
    for bad in ("//x", "x", "/a/../b", "/a/%2e%2e/b", "/a//b", "/a\\b", "/a%5cb", "/a%00", "/%ff", "/./a"):
        with pytest.raises(HttpError):
            clean_request_path(bad)
    assert not json_depth_exceeds('{"a": [[1]], "b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 3)
    assert json_depth_exceeds("[[[[1]]]]", 3)
    assert not json_depth_exceeds(r'["\"[[[[[", 1]', 1)


def test_file_inside(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.onnx").write_bytes(b"x")
    (tmp_path / "s.txt").write_bytes(b"s")
    os.symlink(tmp_path / "s.txt", tmp_path / "a" / "l.onnx")
    os.symlink(tmp_path, tmp_path / "a" / "up")
    assert file_inside(tmp_path / "a", "m.onnx") == (tmp_path / "a" / "m.onnx").resolve()
    for bad in ("../s.txt", str(tmp_path / "s.txt"), "l.onnx", "up/s.txt", "", ".", "a\\m.onnx", "m.onnx\x00",
                "C:/x", 3, None, "missing.onnx", "./m.onnx"):
        with pytest.raises(ValueError):
            file_inside(tmp_path / "a", bad)


def test_discover_offers_every_onnx_artifact_and_says_why_others_are_not(tmp_path):
    run = tmp_path / "run"
    make_artifact(run / "onnx-fp32")
    make_artifact(run / "onnx-int8", precision="int8")
    make_artifact(run / "other" / "onnx-fp16", precision="fp16")
    make_artifact(run / "onnx-bad", status=STATUS_FAILED)
    make_artifact(run / "openvino", fmt="openvino-ir")
    make_artifact(run / ".onnx.partial-1234")          # a staging folder: not looked at
    (run / "notes").mkdir()
    (run / "notes" / "manifest.json").write_text("[1, 2]")   # a web app's manifest, not an edge one
    offered, skipped = discover(run)
    assert [(o.rel, o.artifact.manifest.precision) for o in offered] == [
        ("onnx-fp32", "fp32"), ("onnx-int8", "int8"), ("other/onnx-fp16", "fp16")]
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert set(reasons) == {"onnx-bad", "openvino", "notes"}
    assert "parity" in reasons["onnx-bad"] and "ONNX" in reasons["openvino"]
    d = offered[1].describe()
    assert d["precision"] == "int8" and d["size_bytes"] == len(b"not really onnx int8") and d["has_labels"]
    with pytest.raises(UsageError, match="failed its parity"):
        discover(run / "onnx-bad")
    with pytest.raises(UsageError, match="is not served"):
        discover(run / "notes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no ONNX artifact"):
        discover(tmp_path / "empty")
