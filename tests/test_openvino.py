"""OpenVINO target: every precision of vit_tiny_digits converted, run and verified; calibration errors;
the session's precision hint, cache and per-layer counters."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytest.importorskip("nncf", reason="the openvino extra (nncf) is not installed")

import edge  # noqa: E402
from edge.errors import (ArtifactError, CalibrationError, RuntimeLoadError, UsageError,  # noqa: E402
                         VerificationError)
from edge.profile import op_kinds  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8", "int8-weights", "int4-weights")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """All five precisions of vit_tiny_digits, captured once (edge.convert_all), each verified by the spine."""
    out = tmp_path_factory.mktemp("ov")
    arts = edge.convert_all("vit_tiny_digits", targets=["openvino"], precisions=PRECISIONS, out=out)
    return {a.manifest.precision: a for a in arts}


def _out(art):
    return next(iter(art.manifest.parity["outputs"].values()))


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_verified(artifacts, precision):
    art = artifacts[precision]
    m = art.manifest
    assert m.status == "verified" and m.parity["passed"] is True
    assert m.parity["input_kind"] == "test-set"
    assert (art.path / "model.xml").is_file() and (art.path / "model.bin").is_file()
    assert m.details["source"]["converted_from"] == "ExportedProgram"   # a ViT has no recurrent layer
    assert m.details["input_shapes"]["saved"] == ["[1,1,32,32]"]        # static, as captured (not [?,?,?,?])
    out = _out(art)
    assert out["top1_agreement"] >= 0.98
    assert out["accuracy"] >= out["reference_accuracy"] - 0.02


@pytest.mark.slow
def test_fp32_keeps_fp32_weights_and_fp16_compresses(artifacts):
    assert "f16" not in artifacts["fp32"].manifest.details["constants"]
    assert _out(artifacts["fp32"])["max_abs"] < 1e-4
    fp32_bin = (artifacts["fp32"].path / "model.bin").stat().st_size
    fp16_bin = (artifacts["fp16"].path / "model.bin").stat().st_size
    assert fp16_bin < 0.6 * fp32_bin


@pytest.mark.slow
def test_int8_accuracy_within_one_point_of_fp32(artifacts):
    int8, fp32 = _out(artifacts["int8"]), _out(artifacts["fp32"])
    assert int8["accuracy_samples"] >= 100
    assert int8["accuracy"] >= fp32["accuracy"] - 0.01
    q = artifacts["int8"].manifest.details["quantization"]
    assert q["model_type"] == "TRANSFORMER" and q["fake_quantize_ops"] > 0
    assert artifacts["int8"].manifest.details["calibration"]["kind"] == "testset"


@pytest.mark.slow
def test_weight_compression_records_layers(artifacts):
    q8 = artifacts["int8-weights"].manifest.details["quantization"]
    assert q8["mode"] == "int8_asym" and q8["compressed"].get("u8", 0) == q8["weight_layers"]
    q4 = artifacts["int4-weights"].manifest.details["quantization"]
    assert q4["mode"] == "int4_sym" and q4["int4_layers"]
    # NNCF keeps the first and last weight layers in the int8 backup: recorded, not hidden
    assert len(q4["int4_layers"]) + len(q4["backup_layers"]) == q4["weight_layers"]


@pytest.mark.slow
def test_native_profile_shows_int8_kernels(artifacts):
    with edge.load(artifacts["int8"].path, cache_dir=False) as s:
        assert s.load_details["inference_precision"] == "f32"
        x = edge.api.default_inputs(s.artifact)
        table = s.native_profile(s.prepare(*x), iters=3)
        kinds = op_kinds(s.native_profile(s.prepare(*x), iters=3, top=None), iters=3)
    assert table and all({"op", "type", "exec_type", "precision", "mean_ms", "share"} <= set(r) for r in table)
    assert any(r["precision"] == "i8" and r["type"].startswith("FullyConnected") for r in table)
    # summed per layer type and kernel: the int8 FullyConnected layers under their AMX/VNNI kernel
    assert any(k["kind"].startswith("FullyConnected") and k["kind"].endswith("_i8") for k in kinds)


@pytest.mark.slow
def test_session_options_and_model_cache(artifacts, tmp_path):
    path = artifacts["fp32"].path
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    with edge.load(path, cache_dir=tmp_path / "c", hint="throughput", threads=1) as s:
        first = s.load_details
        y = s.run(x)[0]
    with edge.load(path, cache_dir=tmp_path / "c", hint="throughput", threads=1) as s:
        second = s.load_details
        y2 = s.run(torch.from_numpy(x))[0]
    assert first["cache"].startswith("miss") and second["cache"] == "hit"
    assert second["config"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert second["compiled_properties"]["INFERENCE_NUM_THREADS"] == "1"
    np.testing.assert_array_equal(y, y2)
    with edge.load(path, cache_dir=False, snippets=0) as s:   # no fused JIT subgraphs: the same numbers
        assert s.load_details["config"]["SNIPPETS_MODE"] == "DISABLE"
        np.testing.assert_allclose(s.run(x)[0], y, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="precision_hint"):
        edge.load(path, precision_hint="int3")
    with pytest.raises(UsageError, match="snippets"):
        edge.load(path, snippets=2)
    with pytest.raises(UsageError, match="hint"):
        edge.load(path, hint="fastest")
    with pytest.raises(RuntimeLoadError, match="could not load .* device=NOPE: RuntimeError: .*NOPE"):
        edge.load(path, device="NOPE", cache_dir=False)   # what OpenVINO says, without its C++ stack


class _KeyMaskedAttention(torch.nn.Module):
    """Attention over 40 tokens with a key-padding mask ([1, 1, 1, 40]: the last 7 keys masked)."""

    def __init__(self, boolean: bool):
        super().__init__()
        self.qkv, self.proj = torch.nn.Linear(48, 144), torch.nn.Linear(48, 10)
        keep = torch.ones(1, 1, 1, 40, dtype=torch.bool)
        keep[..., 33:] = False
        self.register_buffer("mask", keep if boolean else torch.zeros(1, 1, 1, 40).masked_fill(~keep, -1e4))

    def forward(self, x):
        q, k, v = (t.reshape(1, 40, 3, 16).permute(0, 2, 1, 3) for t in self.qkv(x).chunk(3, dim=-1))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.proj(o.permute(0, 2, 1, 3).reshape(1, 40, 48)).mean(1)


def _has_bf16() -> bool:
    """The bf16 hint is among the OpenVINO runtime's numeric variants only on a CPU with bf16 kernels."""
    from edge.runtimes.openvino import OpenVinoSession
    return {"precision_hint": "bf16"} in OpenVinoSession.numeric_variants()


@pytest.mark.slow
@pytest.mark.parametrize("boolean", [False, True], ids=["float-mask", "bool-mask"])
def test_query_broadcast_mask(tmp_path, boolean):
    """OpenVINO 2026.4 computes SDPA with a [.., 1, Lk] mask wrongly in int8 and under the bf16 hint (cosine
    0.01-0.79 to PyTorch); the converter expands the mask to [.., Lq, Lk] so both come out right."""
    torch.manual_seed(0)
    model = _KeyMaskedAttention(boolean).eval()
    x = torch.randn(1, 40, 48)
    arts = edge.convert_all(model, example_inputs=(x,), targets=["openvino"], precisions=["fp32", "int8"],
                            out=tmp_path, calib="synthetic")
    for art in arts:   # the int8 artifact failed its parity check (cosine 0.79) before the mask was expanded
        assert art.manifest.status == "verified", art.manifest.parity
        assert "bf16 hint" in art.manifest.details["attention_masks"]
        assert art.manifest.details["op_histogram"]["Broadcast"] == 1
    if not _has_bf16():
        pytest.skip("this CPU has no bf16 kernels: OpenVINO runs the bf16 hint in f32")
    for art in arts:   # fp32 judged as bf16 (cosine >= 0.999), int8 as int8; before: cosine 0.01-0.08
        rec = edge.verify(art.path, model, runtime_options={"precision_hint": "bf16"})
        assert rec["passed"] and rec["precision"] == ("bf16" if art.manifest.precision == "fp32" else "int8")


needs_bf16 = pytest.mark.skipif("not _has_bf16()", reason="this CPU has no bf16 kernels: OpenVINO runs the "
                                                               "bf16 hint in f32, so there is nothing else to check")


@pytest.mark.slow
@needs_bf16
def test_verify_under_the_bf16_hint(artifacts, tmp_path):
    """`edge verify --runtime-option precision_hint=bf16`: judged as bf16, recorded beside the fp32 record."""
    import shutil
    path = tmp_path / "fp32"
    shutil.copytree(artifacts["fp32"].path, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edge.load(path, precision_hint="bf16").close()
    assert any("edge verify" in str(w.message) and "precision_hint=bf16" in str(w.message) for w in caught)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "bench", str(path), "--runtime-option", "precision_hint=bf16",
                        "--iters", "3", "--no-native-profile"], capture_output=True, text=True)
    assert r.returncode == 0 and "openvino/fp32" in r.stdout, r.stderr
    assert r.stderr.startswith("edge bench: warning: ") and "edge verify" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "edge.cli", "verify", str(path), "--runtime-option", "precision_hint=bf16"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "under precision_hint=bf16" in r.stdout, r.stderr
    m = edge.artifact.Artifact.open(path).manifest
    check = m.parity["runtime_checks"]["precision_hint=bf16"]
    assert check["passed"] is True and check["precision"] == "bf16" and check["tolerance"]["min_cosine"] == 0.999
    assert m.status == "verified" and m.parity["precision"] == "fp32" and m.parity["passed"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a checked option loads without the warning
        edge.load(path, precision_hint="bf16").close()
    edge.verify(path)                    # the default check again keeps the bf16 record
    assert "precision_hint=bf16" in edge.artifact.Artifact.open(path).manifest.parity["runtime_checks"]
    r = subprocess.run([sys.executable, "-m", "edge.cli", "verify", str(path), "--runtime-option", "precision_hint"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--runtime-option 'precision_hint' must look like key=value" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
@needs_bf16
def test_a_failed_runtime_check_stops_those_options(tmp_path, monkeypatch):
    """Without the mask expansion OpenVINO's bf16 attention is wrong: verify under bf16 fails, records it, and
    edge.load refuses the bf16 hint for that artifact while its checked default (f32) still loads."""
    import edge.converters.openvino as ovc
    monkeypatch.setattr(ovc, "broadcast_query_masks", lambda model: 0)
    torch.manual_seed(0)
    model = _KeyMaskedAttention(boolean=False).eval()
    x = torch.randn(1, 40, 48)
    art = edge.convert(model, example_inputs=(x,), target="openvino", out=tmp_path / "m")
    assert art.manifest.status == "verified"
    with pytest.raises(VerificationError, match="bf16 parity check under precision_hint=bf16: output"):
        edge.verify(art.path, model, runtime_options={"precision_hint": "bf16"})
    m = edge.artifact.Artifact.open(art.path).manifest
    assert m.status == "verified" and m.parity["runtime_checks"]["precision_hint=bf16"]["passed"] is False
    edge.load(art.path).close()
    with pytest.raises(ArtifactError, match="precision_hint=bf16"):
        edge.load(art.path, precision_hint="bf16")
    edge.load(art.path, precision_hint="bf16", allow_failed=True).close()


@pytest.mark.slow
@needs_bf16
def test_model_cache_keeps_precision_hints_apart(artifacts, tmp_path):
    """OpenVINO's cache key leaves out the precision hint: loaded under bf16 from a blob compiled under f32, the
    digits model returned NaN. Each hint now has its own cache folder; every load matches PyTorch."""
    from edge.zoo import create_model
    model, entry = create_model("vit_tiny_digits")
    x = np.asarray(entry.test_set()[0][:4])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    folders = set()
    for hint in ("f32", "bf16", "f32", "bf16"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # bf16 is not checked on this artifact: this test checks it
            s = edge.load(artifacts["fp32"].path, precision_hint=hint, cache_dir=tmp_path)
        got = np.concatenate([s.run(x[i:i + 1])[0] for i in range(len(x))])
        folders.add(s.load_details["cache_dir"])
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, atol=1e-4 if hint == "f32" else 0.05)
        s.close()
    assert len(folders) == 2 and all(f.startswith(str(tmp_path)) for f in folders)


def _gru_model():
    class TinyGru(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(8, 16, batch_first=True)
            self.head = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.gru(x)[0][:, -1])

    torch.manual_seed(0)
    return TinyGru().eval()


@pytest.mark.slow
def test_recurrent_model_converts_from_module(tmp_path):
    art = edge.convert(_gru_model(), example_inputs=(torch.randn(1, 12, 8),), target="openvino", out=tmp_path / "g")
    d = art.manifest.details
    assert art.manifest.status == "verified"
    assert d["source"]["converted_from"].startswith("module") and "GRU" in d["source"]["reason"]
    assert d["op_histogram"].get("GRUSequence") == 1


@pytest.mark.slow
def test_dynamic_batch_from_module(tmp_path):
    """The module path marks the batch dim dynamic itself (the traced module would fix it at the example's)."""
    import openvino as ov
    from edge.artifact import TensorSpec
    from edge.converters import get_converter
    from edge.converters.base import ConversionJob
    model, x = _gru_model(), torch.randn(2, 12, 8)
    conv = get_converter("openvino")
    job = ConversionJob(program=None, module=model, example_inputs=(x,), inputs=[TensorSpec("x", ["batch", 12, 8])],
                        outputs=[TensorSpec("y", ["batch", 4])], precision="fp32", out_dir=tmp_path,
                        options=conv.resolve_options({}), dynamic_batch=True)
    res = conv.convert(job)
    assert res.details["source"]["converted_from"].startswith("module")
    compiled = ov.Core().compile_model(str(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.inputs[0].get_partial_shape()[0].is_dynamic
    x5 = torch.randn(5, 12, 8)
    got = compiled(x5.numpy())[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x5).numpy(), atol=1e-5)


def _bad_calib_sources(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "text"
    text.mkdir()
    for i in range(3):
        (text / f"note{i}.txt").write_text("not an image")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not really a png")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((8, 3, 28, 28), np.float32))
    strings = tmp_path / "strings.npy"
    np.save(strings, np.full((4, 1, 32, 32), "x"))
    return {"empty folder": (empty, "no images"), "non-image files": (text, "no images"),
            "corrupt image": (corrupt, "not a readable image"), "wrong-shape npy": (wrong, r"\[3, 28, 28\]"),
            "non-numeric npy": (strings, "numbers")}


def test_bad_calibration_is_a_calibration_error(tmp_path):
    """Checked before any conversion work, nothing is written (fast: no conversion starts)."""
    for what, (src, msg) in _bad_calib_sources(tmp_path).items():
        out = tmp_path / f"out-{what.replace(' ', '-')}"
        with pytest.raises(CalibrationError, match=msg):
            edge.convert("vit_tiny_digits", target="openvino", precision="int8", calib=src, out=out)
        assert not out.exists(), what


def test_bad_options():
    from edge.converters import get_converter
    conv = get_converter("openvino")
    with pytest.raises(UsageError, match="source"):
        conv.resolve_options({"source": "tflite"})
    with pytest.raises(UsageError, match="regex"):
        conv.resolve_options({"ignored_scope": "(unclosed"})
    assert conv.resolve_options({"ignored_scope": ".*head.*"})["ignored_scope"] == [".*head.*"]
    assert conv.needs_calibration == ("int8",)


def test_import_edge_loads_no_backend():
    code = ("import sys, edge, edge.converters.openvino, edge.runtimes.openvino; "
            "print(json.dumps([m for m in ('openvino', 'nncf') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("dynamic", [False, True])
def test_session_runs_every_input_it_is_given(tiny, tmp_path, dynamic):
    """Small inputs are copied into the request's own buffers, others bound as they are: each call's output
    is that input's (no stale buffer), for a static artifact and a dynamic-batch one alike."""
    art = edge.convert(tiny, example_inputs=(torch.randn(1, 3, 16, 16),), target="openvino", out=tmp_path / "t",
                       dynamic_batch=dynamic)
    with edge.load(art.path) as session:
        assert bool(session._in_views) is not dynamic
        for n in ((1, 5, 1) if dynamic else (1, 1, 1)):
            x = torch.randn(n, 3, 16, 16)
            (y,) = session.run(x)
            with torch.no_grad():
                np.testing.assert_allclose(y, tiny(x).numpy(), atol=1e-5)


@pytest.mark.slow
def test_int8_preset_option_is_recorded(tmp_path):
    """PERFORMANCE by default (symmetric activations), NNCF's MIXED on request; both verified."""
    arts = {p: edge.convert("vit_tiny_digits", target="openvino", precision="int8", out=tmp_path / p,
                            options={} if p == "performance" else {"int8_preset": p})
            for p in ("performance", "mixed")}
    for preset, art in arts.items():
        assert art.manifest.status == "verified"
        assert art.manifest.details["quantization"]["preset"] == preset.upper()
    with pytest.raises(edge.errors.UnknownNameError, match="int8_preset"):
        edge.convert("vit_tiny_digits", target="openvino", precision="int8", out=tmp_path / "x",
                     options={"int8_preset": "auto"})
