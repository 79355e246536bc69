"""The CLI as a user runs it: real processes, exit codes 0/1/2, clear errors and no tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def edge_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def assert_clean_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_help_and_listings():
    r = edge_cli("--help")
    assert r.returncode == 0 and "convert" in r.stdout and "bench" in r.stdout
    models = json.loads(edge_cli("models", "--json").stdout)
    assert "vit_tiny_digits" in {m["name"] for m in models}
    targets = {t["name"]: t for t in json.loads(edge_cli("targets", "--json").stdout)}
    assert {"onnx", "openvino", "executorch", "coreml", "cuda"} <= set(targets)
    assert targets["onnx"]["available"] and "fp32" in targets["onnx"]["precisions"]
    assert targets["onnx"]["options"]["opset"]["default"] == 18 and 17 in targets["onnx"]["options"]["opset"]["choices"]
    assert targets["executorch"]["forms"]["attention"] == "xnnpack" and targets["coreml"]["sources"] == ["program"]


def test_convert_verify_info_bench(tmp_path):
    out = tmp_path / "vit-onnx"
    r = edge_cli("convert", "vit_tiny_digits", "--target", "onnx", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["status"] == "verified"
    r = edge_cli("verify", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["passed"], r.stderr
    info = json.loads(edge_cli("info", str(out), "--json").stdout)
    assert info["target"] == "onnx" and info["status"] == "verified"
    assert "vit_tiny_digits" in edge_cli("info", str(out)).stdout
    r = edge_cli("bench", str(out), "--warmup", "2", "--iters", "20", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["iters"] == 20 and rep["p50_ms"] > 0 and rep["native_profile"]
    text = edge_cli("bench", str(out), "--warmup", "1", "--iters", "5").stdout
    assert "p50" in text and "top ops" in text


@pytest.mark.parametrize("args,code,needles", [
    (["convert", "vit_tiny_digits", "--target", "openvno", "-o", "{tmp}/x"], 2,
     ["unknown target 'openvno'", "did you mean 'openvino'", "available:"]),
    (["convert", "no_such_file.py:build", "--input-shape", "1,3,8,8", "-o", "{tmp}/x"], 2, ["does not exist"]),
    (["convert", "vit_tiny_digits", "--input-shape", "1,a,3", "-o", "{tmp}/x"], 2, ["--input-shape"]),
    (["convert", "vit_tiny_digits", "--precision", "int3", "-o", "{tmp}/x"], 2, ["int3", "fp32"]),
    (["verify", "{tmp}/nowhere"], 2, ["no artifact folder"]),
    (["bench", "{tmp}/nowhere"], 2, ["no artifact folder"]),
    (["bench", "vit_tiny_digits", "--runtime-option", "precision_hint=bf16"], 2, ["applies to artifact folders"]),
    (["verify", "{tmp}/nowhere", "--runtime-option", "bf16"], 2, ["--runtime-option 'bf16' must look like key=value"]),
])
def test_bad_input_exit_2(tmp_path, args, code, needles):
    r = edge_cli(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert_clean_error(r, code, *needles)
    assert not (tmp_path / "x").exists()


def test_corrupt_checkpoint_and_unwritable_output(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    factory = f"{Path(__file__).parent}/models_for_tests.py:build"
    r = edge_cli("convert", factory, "--weights", str(bad), "--input-shape", "1,3,8,8", "-o", str(tmp_path / "o"))
    assert_clean_error(r, 2, "corrupt")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root ignores permissions)")
        r = edge_cli("convert", factory, "--input-shape", "1,3,8,8", "-o", str(locked / "out"))
        assert_clean_error(r, 2, "cannot write")
    finally:
        locked.chmod(0o700)


def test_unwritable_output_as_file(tmp_path):
    """An -o path below a regular file cannot be created: a clear error even as root."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = edge_cli("convert", "vit_tiny_digits", "-o", str(blocker / "out"))
    assert_clean_error(r, 2, "cannot write")
    assert blocker.read_text() == "x"


def test_verification_failure_exit_1(tmp_path):
    """A model the ONNX exporter lowers wrongly (logcumsumexp with a global max: early positions of a rising
    ramp underflow) fails its parity check: exit 1, the artifact written and marked failed, one clear line."""
    scan = tmp_path / "scan.py"
    scan.write_text("import torch\nclass S(torch.nn.Module):\n    def forward(self, x):\n"
                    "        ramp = torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, 1) * 2.0\n"
                    "        return torch.logcumsumexp(x + ramp, dim=1)\ndef build():\n    return S()\n")
    r = edge_cli("convert", f"{scan}:build", "--input-shape", "1,196,8", "--no-optimize", "-o", str(tmp_path / "o"))
    assert_clean_error(r, 1, "failed its fp32 parity check", f"{tmp_path / 'o'} failed")
    assert ".partial-" not in r.stderr   # the message names the destination, not the staging folder
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["status"] == "failed" and ".partial-" not in m["parity"]["error"]
