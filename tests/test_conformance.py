"""Conformance: every registered target on every zoo model, black-box through edge.convert (ExecuTorch's flow idea).

Each conversion is verified against PyTorch by edge.convert itself (it raises on a parity failure). A target whose
backend is not installed is skipped with the pip extra in the reason; a target that cannot execute here
(CoreML off macOS) is spec-checked. Runtime settings with their own numerics that this machine runs
(``Session.numeric_variants``: OpenVINO's bf16 hint on a bf16 CPU) are verified as well. To keep CI within its
time budget, models that take any resolution or length run at their entry's ``test_shapes``, and models tagged
"large" (>= 20M parameters) or identical in architecture to another zoo model (``same_as``) run only with
EDGE_FULL_CONFORMANCE=1; the models that run cover the same code paths. A model's test module may hand checks of
its default artifact to a cell (``EXTRA_CHECKS``), so that artifact is not converted a second time elsewhere.
"""
from __future__ import annotations

import os

import pytest
import torch

import edge
from edge.converters import TARGETS, get_converter
from edge.runtimes import RUNTIMES
from edge.zoo import get_entry, list_models
from test_visiongru import CONFORMANCE_CHECKS

FULL = os.environ.get("EDGE_FULL_CONFORMANCE") == "1"
# (model, target) -> a model's own checks of its artifact, run here so that artifact is converted once per suite
EXTRA_CHECKS = {**CONFORMANCE_CHECKS}


def _models() -> list:
    out = []
    for name in list_models():
        entry = get_entry(name)
        reason = ("large model (>= 20M parameters)" if "large" in entry.tags else
                  f"same architecture as {entry.same_as}" if entry.same_as else None)
        marks = [pytest.mark.skip(reason=f"{reason}: run with EDGE_FULL_CONFORMANCE=1")] if reason and not FULL else []
        out.append(pytest.param(name, marks=marks))
    return out


def _target_options(target: str) -> dict:
    if target == "cuda":
        return {"device": "cuda" if torch.cuda.is_available() else "cpu"}
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS.names())
@pytest.mark.parametrize("model", _models())
def test_target_converts_and_verifies_model(model, target, tmp_path):
    conv = get_converter(target)   # a registered built-in that fails to import is a failure, not a skip
    missing = conv.missing()
    if missing:
        if os.environ.get("CI"):   # `make test` installs every extra: a missing backend is a broken install
            pytest.fail(f"{missing} is missing in CI: `make test` installs edge[{conv.extra}]")
        pytest.skip(f"{missing} not installed: pip install 'edge[{conv.extra}]'")
    precision = "fp16" if target == "coreml" else "fp32"
    shapes = None if FULL else get_entry(model).test_shapes
    art = edge.convert(model, target=target, precision=precision, out=tmp_path / "a", input_shapes=shapes,
                       options=_target_options(target))
    m = art.manifest
    assert m.target == target and m.files and all(len(h) == 64 for h in m.files.values())
    reason = conv.can_execute_artifact(m) if hasattr(conv, "can_execute_artifact") else conv.can_execute()
    if reason:
        assert m.status == "spec-checked" and m.parity["skipped"] == reason
        return
    assert m.status == "verified" and m.parity["passed"], m.parity
    if (model, target) in EXTRA_CHECKS:
        EXTRA_CHECKS[model, target](model, art)
    with edge.load(art.path) as session:
        outs = session.run(*edge.api.default_inputs(art))
        assert len(outs) == len(m.outputs)
    # runtime settings with their own numerics that this machine runs (OpenVINO's bf16 hint on a bf16 CPU: the
    # CPU plugin's default there) are checked too; two OpenVINO bugs gave wrong numbers only under it
    for options in RUNTIMES.get(m.runtime).numeric_variants():
        assert edge.verify(art.path, runtime_options=options)["passed"]
