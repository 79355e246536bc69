"""coreml target: ML Programs checked from their spec on Linux; prediction tests run on macOS only."""
from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

import edge
from edge.converters.base import ConversionJob
from edge.converters.coreml import CoreMLConverter, check_package
from edge.errors import ConversionError, PlatformError, UnknownNameError

MACOS = platform.system() == "Darwin"
NOT_MACOS = "CoreML prediction needs macOS (this is Linux)"


def test_can_execute_says_why_off_macos():
    reason = CoreMLConverter().can_execute()
    assert (reason is None) if MACOS else reason.startswith("CoreML prediction needs macOS")


def test_options_are_validated():
    conv = CoreMLConverter()
    assert conv.resolve_options({}) == {"coreml_target": "iOS18", "compute_units": "all", "image_input": False}
    with pytest.raises(UnknownNameError, match="iOS18"):
        conv.resolve_options({"coreml_target": "iOS16"})
    with pytest.raises(UnknownNameError, match="cpu_and_ne"):
        conv.resolve_options({"compute_units": "gpu"})


@pytest.mark.skipif(MACOS, reason="on macOS w8a8 calibrates with Core ML itself")
def test_w8a8_off_macos_is_a_platform_error(tmp_path):
    job = ConversionJob(program=None, module=None, example_inputs=(), inputs=[], outputs=[], precision="w8a8",
                        out_dir=tmp_path, options={"coreml_target": "iOS18"})
    with pytest.raises(PlatformError, match="macOS.*int8-weights"):
        CoreMLConverter().convert(job)


@pytest.fixture(scope="module")
def vit_prepared():
    """vit_tiny_digits resolved once; its coreml program is captured once for every test here."""
    from edge.api import prepare
    return prepare("vit_tiny_digits")


@pytest.fixture(scope="module")
def vit_coreml(tmp_path_factory, vit_prepared):
    """vit_tiny_digits as fp16 and 6-bit palettized ML Programs."""
    out = tmp_path_factory.mktemp("coreml")
    return edge.convert_all("vit_tiny_digits", targets=["coreml"], precisions=["fp16", "palettize6"], out=out,
                            prepared=vit_prepared)


@pytest.mark.slow
def test_vit_fp16_and_palettized_pass_spec_checks(vit_coreml):
    for art in vit_coreml:
        m = art.manifest
        assert art.main_path.name == "model.mlpackage" and art.main_path.is_dir()
        assert m.format == "mlpackage" and m.runtime == "coreml"
        d = m.details
        assert d["spec_version"] == 9 and d["coreml_target"] == "iOS18"
        assert d["spec_inputs"] == ["input"] and d["spec_outputs"] == ["output"]
        # the 4 attention blocks stay fused on iOS18
        assert d["mil_op_histogram"]["scaled_dot_product_attention"] == 4
        assert d["attention"] == "fused scaled_dot_product_attention"
        assert "matmul" not in d["mil_op_histogram"] and "softmax" not in d["mil_op_histogram"]
        if MACOS:
            assert m.status == "verified"
        else:
            assert m.status == "spec-checked" and m.parity == {"passed": None, "skipped": NOT_MACOS}
    fp16, pal = vit_coreml
    assert fp16.manifest.details["compute_precision"] == "float16"
    assert pal.manifest.details["mil_op_histogram"]["constexpr_lut_to_dense"] > 0
    assert pal.manifest.details["compression"]["nbits"] == 6


@pytest.mark.slow
def test_spec_check_failures_raise(vit_coreml):
    art = vit_coreml[0]
    from edge.artifact import TensorSpec
    job = ConversionJob(program=None, module=None, example_inputs=(), inputs=[TensorSpec("image", [1, 1, 32, 32])],
                        outputs=art.manifest.outputs, precision="fp16", out_dir=art.path,
                        options={"coreml_target": "iOS18"})
    with pytest.raises(ConversionError, match="inputs are \\['input'\\], expected \\['image'\\]"):
        check_package(art.main_path, job, "iOS18")
    job = dataclasses.replace(job, inputs=[TensorSpec("input", [1, 1, 28, 28])])
    with pytest.raises(ConversionError, match="shape"):
        check_package(art.main_path, job, "iOS18")
    job = dataclasses.replace(job, inputs=art.manifest.inputs, precision="int8-weights")
    with pytest.raises(ConversionError, match="constexpr"):   # claims int8 weights, has none
        check_package(art.main_path, job, "iOS18")


@pytest.mark.slow
def test_ios17_int8_weights_has_unfused_attention(tmp_path, vit_prepared):
    art, = edge.convert_all("vit_tiny_digits", targets=["coreml"], precisions=["int8-weights"], out=tmp_path,
                            options={"coreml_target": "iOS17"}, prepared=vit_prepared)
    d = art.manifest.details
    assert d["spec_version"] == 8
    assert "scaled_dot_product_attention" not in d["mil_op_histogram"]
    assert d["attention"].startswith("matmul/softmax")
    assert d["mil_op_histogram"].get("constexpr_affine_dequantize", 0) + \
        d["mil_op_histogram"].get("constexpr_blockwise_shift_scale", 0) > 0


@pytest.mark.slow
def test_image_input_records_normalization(tmp_path, vit_prepared):
    art, = edge.convert_all("vit_tiny_digits", targets=["coreml"], precisions=["fp16"], out=tmp_path,
                            options={"image_input": True}, prepared=vit_prepared)
    rec = art.manifest.details["image_input"]
    # digits: (pixel / 255 - 0.5) / 0.5 = pixel * (2 / 255) - 1
    assert rec["color_layout"] == "GRAYSCALE" and rec["normalization_in_program"] is False
    assert rec["scale"] == pytest.approx(2 / 255) and rec["bias"] == [pytest.approx(-1.0)]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gru_digits", "visiongru_digits"])
def test_recurrent_digits_convert_to_supported_ops(model, tmp_path):
    art = edge.convert(model, target="coreml", precision="fp16", out=tmp_path / "a")
    ops = art.manifest.details["mil_op_histogram"]
    assert "gru" not in ops and "while_loop" not in ops   # the tuned, unrolled form
    assert art.manifest.status == ("verified" if MACOS else "spec-checked")


@pytest.mark.skipif(MACOS, reason="on macOS the session loads")
def test_runtime_off_macos_is_a_platform_error(tmp_path):
    from edge.artifact import Artifact, Manifest, TensorSpec
    from edge.runtimes.coreml import CoreMLSession
    m = Manifest(target="coreml", format="mlpackage", runtime="coreml", precision="fp16", files={"model.mlpackage": ""},
                 inputs=[TensorSpec("input", [1, 1, 32, 32])], outputs=[TensorSpec("output", [1, 10])])
    with pytest.raises(PlatformError, match="needs macOS"):
        CoreMLSession(Artifact(Path(tmp_path), m))


def test_other_compute_units_are_a_numeric_option():
    """The Neural Engine computes in fp16: compute units other than the converted ones need their own check."""
    from edge.artifact import Manifest, TensorSpec
    from edge.runtimes.coreml import CoreMLSession

    def manifest(units):
        return Manifest(target="coreml", format="mlpackage", runtime="coreml", precision="fp32", files={},
                        inputs=[TensorSpec("input", [1, 1, 32, 32])], outputs=[TensorSpec("output", [1, 10])],
                        options={} if units is None else {"compute_units": units})
    assert CoreMLSession.numeric_key({"compute_units": "cpu_only"}, manifest(None)) == "compute_units=cpu_only"
    assert CoreMLSession.numeric_key({"compute_units": "all"}, manifest(None)) == ""
    assert CoreMLSession.numeric_key({"compute_units": "cpu_only"}, manifest("cpu_only")) == ""
    assert CoreMLSession.numeric_key({"compute_units": "all"}, manifest("cpu_only")) == "compute_units=all"


@pytest.mark.macos
@pytest.mark.skipif(not MACOS, reason=NOT_MACOS)
def test_prediction_matches_pytorch_on_macos(vit_coreml):
    from edge.zoo import create_model
    model, _ = create_model("vit_tiny_digits")
    x = torch.randn(1, 1, 32, 32)
    with edge.load(vit_coreml[0].path) as s:
        (y,) = s.run(x)
    ref = model(x).detach().numpy()
    assert np.abs(y - ref).max() <= 1e-2 + 5e-2 * np.abs(ref).max()
    rep = edge.benchmark(vit_coreml[0].path, warmup=2, iters=5, native_profile=False)
    assert rep.p50_ms > 0


class _QueriesOnWeights(torch.nn.Module):
    """DETR's first decoder self-attention: zero queries plus learned position embeddings, weights alone (a
    constant coremltools folds away); then a cross-attention from those queries to the image tokens."""

    def __init__(self):
        super().__init__()
        self.queries, self.proj = torch.nn.Parameter(torch.randn(1, 2, 5, 8)), torch.nn.Conv2d(3, 16, 4, 4)

    def forward(self, x):
        q = torch.zeros_like(self.queries) + self.queries
        q = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        kv = self.proj(x).flatten(2).transpose(1, 2).reshape(1, -1, 2, 8).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, kv, kv).flatten(1)


def test_attention_on_weights_alone_is_not_required_in_the_ml_program(tmp_path):
    from edge.converters.coreml import _sdpa_in_program
    model, x = _QueriesOnWeights().eval(), torch.randn(1, 3, 16, 16)
    assert _sdpa_in_program(torch.export.export(model, (x,))) == 1   # the cross-attention reads the input
    art = edge.convert(model, target="coreml", example_inputs=(x,), out=tmp_path / "a")
    d = art.manifest.details
    assert art.manifest.status == ("verified" if MACOS else "spec-checked")
    assert d["mil_op_histogram"]["scaled_dot_product_attention"] >= 1
