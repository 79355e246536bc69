"""The Hugging Face family corpus (edge/zoo/hf.py) on every target, black-box through edge.convert.

Each conversion is verified against PyTorch by edge.convert itself; CoreML (off macOS) is spec-checked. ExecuTorch
artifacts must be fully delegated (at most 2 XNNPACK delegate calls, no portable op). To stay within CI's time
budget the default run converts a few families per target, chosen for the code paths they cover (relative-position
bias and constant folding, shifted windows, whole-input pools, the capture fallback, CoreML's decomposition
fallback, ONNX's strides under a view); EDGE_FULL_CONFORMANCE=1 runs every family on every target.
"""
from __future__ import annotations

import os

import pytest

import edge
from edge.converters import get_converter
from edge.errors import ConversionError
from tests.conftest import has

pytestmark = pytest.mark.skipif(not has("transformers"), reason="transformers not installed: pip install 'edge[dev]'")

FULL = os.environ.get("EDGE_FULL_CONFORMANCE") == "1"
# family -> why it is in the default run, per target
DEFAULT = {
    "executorch": {"beit": "SDPA with a float mask; relative-position index rebuilt in forward (constant folding)",
                   "swin": "roll, strided slices, window masks, adaptive_avg_pool1d",
                   "hiera": "max over a non-last dim of a 4-D map (ExecuTorch's serializer fails on it)"},
    "onnx": {"encodec": "torch.export fails: 0-d int64 buffers as constants",
             "beit": "a view after SDPA the exporter's decompositions make invalid; relative-position bias fused"},
    "openvino": {"efficientnet": "AvgPool2d(kernel > map, ceil_mode) as the global mean"},
    "coreml": {"dinov2": "bicubic resize: core ATen decomposition fallback (SDPA kept fused)",
               "dinov2_registers": "antialiased bicubic resize of weights alone: folded to a constant",
               "hiera": "rank-6 unroll/reroll, q/k/v split and query pooling lowered to rank <= 5 (Core ML's limit)"},
}
# (family, target) -> the ConversionError a refusal must give: what no route converts
REFUSED: dict[tuple[str, str], str] = {}
ET_MAX_CALLS = 2


def _cases() -> list:
    from edge.zoo.hf import FAMILIES
    out = []
    for target in ("executorch", "onnx", "openvino", "coreml"):
        for family in FAMILIES:
            marks = [] if FULL or family in DEFAULT[target] else [
                pytest.mark.skip(reason="not in the default run: EDGE_FULL_CONFORMANCE=1")]
            out.append(pytest.param(family, target, marks=marks, id=f"{family}-{target}"))
    return out


def test_corpus_outputs_are_of_order_one():
    import torch
    from edge.zoo.hf import FAMILIES, build
    for name in ("mobilevit", "efficientnet"):   # default init gives ~1e-40 / ~1e-30 logits
        model, x = build(name)
        with torch.no_grad():
            assert 1e-2 < float(model(*x).abs().max()) < 1e3, name
    assert len(FAMILIES) == 23


@pytest.mark.slow
@pytest.mark.parametrize("family,target", _cases())
def test_family_converts_and_verifies(family, target, tmp_path):
    from edge.zoo.hf import build
    conv = get_converter(target)
    missing = conv.missing()
    if missing:
        pytest.skip(f"{missing} not installed: pip install 'edge[{conv.extra}]'")
    model, x = build(family)
    if (family, target) in REFUSED:
        with pytest.raises(ConversionError, match=REFUSED[family, target]):
            edge.convert(model, target=target, example_inputs=x, out=tmp_path / "a")
        assert not (tmp_path / "a").exists()   # nothing half-written
        return
    art = edge.convert(model, target=target, example_inputs=x, out=tmp_path / "a")
    m = art.manifest
    assert m.details["capture"]["route"].startswith("torch.export")   # no family is left without a program
    if (family, target) == ("hiera", "coreml"):   # its rank-6 tensors were rewritten, checked bit-identical
        assert "rank_lowered" in m.details, m.details
    if conv.can_execute():
        assert m.status == "spec-checked" and m.parity["skipped"] == conv.can_execute()
        return
    assert m.status == "verified" and m.parity["passed"], m.parity
    if target == "onnx":   # ONNX Runtime's fused ops never had to be dropped for disagreeing with the graph
        assert "kept_unfused" not in m.details.get("fusion", {}), m.details["fusion"]
    if target == "executorch":
        d = m.details["delegation"]
        # a recurrent layer runs as a torch.scan loop (ExecuTorch's control flow) around its delegated body
        assert d["delegate_calls"] <= ET_MAX_CALLS and set(d.get("portable_ops", {})) <= {"scan"}, d
