"""cuda target: AOTInductor packages (CPU here, CUDA where a GPU is), the ONNX Runtime CUDA route, the aoti runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import edge
from edge.converters.cuda import CudaConverter, ort_cuda_providers
from edge.errors import PlatformError, UsageError

CUDA = torch.cuda.is_available()


class SmallNet(torch.nn.Module):
    """Conv + layer norm + linear: small enough that the CPU C++ compile stays short."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, stride=2)
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.norm(torch.relu(self.conv(x)).mean((2, 3))))


@pytest.fixture
def small():
    torch.manual_seed(0)
    return SmallNet().eval()


def test_device_auto_resolves_to_what_is_here():
    if CUDA:
        assert CudaConverter().resolve_options({}) == {"device": "cuda", "route": "aoti"}
    else:   # no quiet CPU package: --device cpu must be asked for
        with pytest.raises(PlatformError, match="--device cpu"):
            CudaConverter().resolve_options({})
    assert CudaConverter().resolve_options({"device": "cpu"}) == {"device": "cpu", "route": "aoti"}


def test_onnxruntime_route_on_cpu_is_refused():
    with pytest.raises(UsageError, match="--target onnx"):
        CudaConverter().resolve_options({"route": "onnxruntime", "device": "cpu"})


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_names_device_cpu(small, tmp_path):
    with pytest.raises(PlatformError, match="--device cpu"):
        edge.convert(small, target="cuda", example_inputs=(torch.randn(2, 1, 12, 12),), out=tmp_path / "a",
                     options={"device": "cuda"})
    assert not (tmp_path / "a").exists()   # nothing half-written


@pytest.mark.skipif(bool(ort_cuda_providers()), reason="this ONNX Runtime has a CUDA provider")
def test_onnxruntime_route_without_cuda_provider(small, tmp_path):
    with pytest.raises(PlatformError, match="onnxruntime-gpu"):
        edge.convert(small, target="cuda", example_inputs=(torch.randn(2, 1, 12, 12),), out=tmp_path / "a",
                     options={"route": "onnxruntime"})


@pytest.mark.slow
def test_aoti_cpu_fp32_and_bf16_verify_and_run(small, tmp_path):
    x = torch.randn(2, 1, 12, 12)
    arts = edge.convert_all(small, targets=["cuda"], precisions=["fp32", "bf16"], example_inputs=(x,),
                            out=tmp_path, options={"device": "cpu"})
    for art in arts:
        m = art.manifest
        assert m.status == "verified" and m.parity["passed"] is True
        assert m.runtime == "aoti" and m.format == "aoti-pt2" and m.options["device"] == "cpu"
        assert art.main_path.name == "model.pt2" and art.main_path.stat().st_size > 0
        assert m.details["io_dtype"] == "float32"
        assert m.details["compute_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[m.precision]
    fp32, bf16 = arts
    assert fp32.manifest.parity["outputs"]["output"]["max_abs"] < 1e-4
    with edge.load(fp32.path) as s:
        (y,) = s.run(x)
        assert s.timer == "perf_counter"
        np.testing.assert_allclose(y, small(x).detach().numpy(), atol=1e-4, rtol=1e-3)
        with pytest.raises(edge.errors.InputError, match="shape"):
            s.run(torch.randn(3, 1, 12, 12))
    rep = edge.benchmark(bf16.path, warmup=2, iters=5, native_profile=False)
    assert rep.runtime == "aoti" and rep.p50_ms > 0 and rep.timer == "perf_counter"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and a CUDA build of PyTorch")
def test_aoti_cuda_fp16_cuda_event_timing(tmp_path):
    art = edge.convert("vit_tiny_digits", target="cuda", precision="fp16", out=tmp_path / "a",
                       options={"device": "cuda"})
    assert art.manifest.status == "verified" and art.manifest.details["device"] == "cuda"
    rep = edge.benchmark(art.path, warmup=3, iters=10, native_profile=True)
    assert rep.timer == "cuda-event" and rep.p50_ms > 0
    assert rep.load_details["gpu_peak_mib"] > 0 and "gpu_load_mib" in rep.load_details
    assert rep.native_profile and all(r["type"] == "cuda-kernel" for r in rep.native_profile)


@pytest.mark.gpu
@pytest.mark.skipif(not ort_cuda_providers(), reason="needs ONNX Runtime with the CUDA execution provider")
def test_onnxruntime_cuda_route(small, tmp_path):
    art = edge.convert(small, target="cuda", precision="fp16", example_inputs=(torch.randn(2, 1, 12, 12),),
                       out=tmp_path / "a", options={"route": "onnxruntime"})
    m = art.manifest
    assert m.runtime == "onnxruntime" and m.status == "verified"
    assert m.options["providers"][-1] == "CPUExecutionProvider" and len(m.options["providers"]) >= 2
    with edge.load(art.path) as s:
        assert s.load_details["providers"][0] == m.options["providers"][0]
