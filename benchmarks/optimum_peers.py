"""Hugging Face Optimum's exports of a saved transformers image classifier, each in its own environment.

Shared by ``benchmarks/openvino_vs_optimum.py`` and ``benchmarks/vs_optimum.py``. The three Optimum packages pin
different transformers versions than the 5.5 edge uses (optimum-onnx 0.1: transformers < 4.58; optimum-executorch
1.1: transformers == 5.0.0rc1; optimum-intel 2.1: transformers < 5.6), so each is installed with ``--no-deps`` into
its own folder under ``.bench-deps/`` (git-ignored) and reuses .venv's torch 2.13, onnx, onnxruntime, executorch,
openvino and nncf; nothing in .venv changes. Run as a script with that folder first on ``PYTHONPATH``,
this module exports the model in a subprocess (:func:`run_peer`), so the process that times the artifacts never
imports a second transformers.

Install (from the repository root; each line pulls no torch: ``--no-deps``)::

    .venv/bin/pip install --no-deps --target .bench-deps/optimum optimum-intel==2.1.0 optimum==2.3.0 \\
        transformers==5.5.4 huggingface_hub==1.21.0 tokenizers==0.22.2 safetensors==0.7.0 httpx==0.28.1 \\
        httpcore==1.0.9 typer==0.25.1 shellingham==1.5.4 annotated-doc==0.0.7
    .venv/bin/pip install --no-deps --target .bench-deps/optimum-onnx optimum-onnx==0.1.0 optimum==2.1.0 \\
        transformers==4.57.6 huggingface_hub==0.36.2 accelerate==1.12.0
    .venv/bin/pip install --no-deps --target .bench-deps/optimum-executorch optimum-executorch==1.1.0 \\
        optimum==2.0.0 transformers==5.0.0rc1 accelerate==1.12.0

optimum-executorch 1.1 declares ``executorch>=1.0`` and runs on edge's executorch 1.5.1 / torch 2.13.

Example:
    >>> paths = run_peer("onnx", Path("hf_model"), Path("out"))   # {"onnx": ".../model.onnx", "onnx_o3": ...}
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEPS = {"openvino": ROOT / ".bench-deps" / "optimum", "onnx": ROOT / ".bench-deps" / "optimum-onnx",
        "executorch": ROOT / ".bench-deps" / "optimum-executorch"}
IMAGE = (1, 3, 224, 224)
MARK = "optimum-peer-result: "   # the line of the subprocess's stdout that run_peer reads (backends print too)


def export_onnx(hf_dir: Path, out: Path, calib: Path | None = None) -> dict[str, str]:
    """Optimum's default ONNX export, and the same graph through ``ORTOptimizer`` with the O3 config (what
    ``optimum-cli export onnx --optimize O3`` does after exporting)."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer
    main_export(str(hf_dir), output=out / "onnx", task="image-classification", do_validation=False)
    optimizer = ORTOptimizer.from_pretrained(out / "onnx", file_names=["model.onnx"])
    optimizer.optimize(save_dir=out / "onnx-o3", optimization_config=AutoOptimizationConfig.O3(), file_suffix="")
    return {"onnx": str(out / "onnx" / "model.onnx"), "onnx_o3": str(out / "onnx-o3" / "model.onnx")}


def export_executorch(hf_dir: Path, out: Path, calib: Path | None = None) -> dict[str, str]:
    """optimum-executorch's XNNPACK recipe (``optimum-cli export executorch --recipe xnnpack``)."""
    from optimum.exporters.executorch import main_export
    main_export(model_name_or_path=str(hf_dir), task="image-classification", recipe="xnnpack",
                output_dir=str(out / "executorch"))
    return {"executorch": str(next((out / "executorch").glob("*.pte")))}


def export_openvino(hf_dir: Path, out: Path, calib: Path | None = None, samples: int = 64) -> dict[str, str]:
    """Optimum-Intel's fp32 IR (``from_pretrained(export=True)``) and its static int8 IR (``OVQuantizer`` with
    ``OVQuantizationConfig``'s defaults) calibrated on ``calib`` (an .npy of images) or ``samples`` random normals."""
    import nncf
    from optimum.intel import OVConfig, OVModelForImageClassification, OVQuantizationConfig, OVQuantizer
    if calib is not None:
        images = np.load(calib)
    else:
        images = np.random.default_rng(0).standard_normal((samples, *IMAGE[1:])).astype(np.float32)
    exported = OVModelForImageClassification.from_pretrained(hf_dir, export=True, compile=False)
    exported.save_pretrained(out / "fp32")
    dataset = nncf.Dataset([{"pixel_values": img[None]} for img in images])
    quantizer = OVQuantizer.from_pretrained(OVModelForImageClassification.from_pretrained(out / "fp32", compile=False))
    quantizer.quantize(calibration_dataset=dataset, save_directory=out / "int8",
                       ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(images))))
    return {"openvino_fp32": str(out / "fp32" / "openvino_model.xml"),
            "openvino_int8": str(out / "int8" / "openvino_model.xml")}


EXPORTS = {"onnx": export_onnx, "executorch": export_executorch, "openvino": export_openvino}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    got = {}
    for pkg in ("optimum", "optimum-onnx", "optimum-executorch", "optimum-intel", "transformers"):
        try:
            got[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return got


def run_peer(peer: str, hf_dir: Path, out: Path, calib: Path | None = None, *, deps: Path | None = None,
             timeout: float = 900) -> dict[str, Any]:
    """Export ``hf_dir`` with Optimum's ``peer`` (onnx / executorch / openvino) in a subprocess whose path starts
    with that peer's folder under .bench-deps (or ``deps``). Returns ``{artifact name: path, "versions": {...},
    "seconds": ...}``, or ``{"error": ...}`` naming what failed (a missing install: where the pip command is)."""
    deps = Path(deps) if deps is not None else DEPS[peer]
    if not deps.is_dir():
        return {"error": f"{deps} is missing; install it with the pip command in benchmarks/optimum_peers.py"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(deps), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), peer, str(hf_dir), str(out)]
    if calib is not None:
        cmd += ["--calib", str(calib)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"Optimum's {peer} export ran past {timeout:.0f} s"}
    lines = [line[len(MARK):] for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-3:]
        return {"error": f"Optimum's {peer} export failed (exit {proc.returncode}): " + " | ".join(tail)}
    return {**json.loads(lines[-1]), "seconds": time.perf_counter() - t0}


def cosine(a: Any, b: Any) -> float:
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class IrSession:
    """An IR edge did not build (Optimum's), compiled and called as edge's OpenVINO runtime does: batch fixed
    to the input's shape, LATENCY hint, inputs copied into the request's buffers, ``start_async`` + ``wait``
    (``infer()`` runs on the calling thread, which is slower; see runtimes/openvino.py)."""

    def __init__(self, xml: str | Path, hint: str = "f32", shape: tuple[int, ...] = IMAGE):
        import openvino as ov
        core = ov.Core()
        model = core.read_model(str(xml))
        model.reshape({model.inputs[0]: list(shape)})
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint})
        self.request = compiled.create_infer_request()
        self.view = self.request.get_input_tensor(0).data

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.view[...] = x
        self.request.start_async()
        self.request.wait()
        return [self.request.get_output_tensor(0).data.copy()]

    def synchronize(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description="export a saved transformers image classifier with Optimum "
                                             "(run with the peer's .bench-deps folder first on PYTHONPATH)")
    ap.add_argument("peer", choices=sorted(EXPORTS))
    ap.add_argument("hf_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--calib", type=Path, default=None, help=".npy of calibration images (openvino int8)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    paths = EXPORTS[args.peer](args.hf_dir, args.out, args.calib)
    print(MARK + json.dumps({**paths, "versions": versions()}), flush=True)


if __name__ == "__main__":
    main()
