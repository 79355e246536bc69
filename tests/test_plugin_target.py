"""A new target is one file: a plugin registers it through an entry point, with its own option and pass forms,
and converts through the CLI with the flag built from its declaration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = '''
from dataclasses import replace

from edge.converters.base import ConversionResult, Converter, Option
from edge.converters.onnx import export_to


class ToyConverter(Converter):
    """ONNX through edge's exporter, with its own opset option and the XNNPACK attention form."""
    name = "toy"
    format = "onnx"
    runtime = "onnxruntime"
    extra = "onnx"
    requires = ("onnx", "onnxruntime")
    options = {"toy_opset": Option(17, (17, 18), "the opset the toy target writes")}
    forms = {"attention": "xnnpack", "layernorm": "decomposed"}

    def convert(self, job):
        path = job.out_dir / "model.onnx"
        details = {"toy_opset": job.options["toy_opset"]}
        export_to(path, replace(job, options={"opset": job.options["toy_opset"]}), details)
        return ConversionResult(files=["model.onnx"], details=details)
'''


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    dist = site / "edge_toy_target-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edge-toy-target\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[edge.targets]\ntoy = edge_toy_target:ToyConverter\n")
    (site / "edge_toy_target.py").write_text(PLUGIN)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, env=env)


def test_plugin_target_gets_a_flag_and_converts(plugin_env, tmp_path):
    helps = _cli(plugin_env, "convert", "--help")
    assert helps.returncode == 0 and "--toy-opset" in helps.stdout and "toy: the opset" in helps.stdout
    out = tmp_path / "toy"
    r = _cli(plugin_env, "convert", "vit_tiny_digits", "--target", "toy", "--toy-opset", "18", "-o", str(out),
             "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"] == "toy" and m["status"] == "verified" and m["runtime"] == "onnxruntime"
    assert m["options"]["toy_opset"] == 18 and m["details"]["toy_opset"] == 18
    passes = {p["pass"]: p for p in m["details"]["optimize_passes"]}
    assert passes["attention"]["variant"] == "xnnpack" and passes["attention"]["rewrites"] > 0   # its forms
    assert passes["layernorm"]["variant"] == "decomposed"
    bad = _cli(plugin_env, "convert", "vit_tiny_digits", "--target", "toy", "--toy-opset", "99", "-o",
               str(tmp_path / "bad"))
    assert bad.returncode == 2 and "toy option 'toy_opset'" in bad.stderr and "17, 18" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


def test_declared_forms_are_checked():
    """A converter's forms are data checked against what the passes offer: a typo names the valid forms."""
    from edge.errors import PluginError
    from edge.passes import forms_for, list_forms, resolve_forms
    with pytest.raises(PluginError, match="no optimize pass offers.*attention"):
        resolve_forms({"atention": "xnnpack"}, owner="target 'toy'")
    with pytest.raises(PluginError, match="choices: sdpa, xnnpack"):
        resolve_forms({"attention": "flash"})
    with pytest.raises(PluginError, match="takes a int"):
        resolve_forms({"mingru_chunk": "four"})
    assert {f.name for f in list_forms()} >= {"attention", "rnn", "mingru_chunk", "layernorm"}
    assert forms_for("executorch")["attention"] == "xnnpack" and forms_for(None)["attention"] == "sdpa"
