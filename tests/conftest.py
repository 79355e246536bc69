from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs(module: str, extra: str):
    """Skip (with the pip line) where a backend package is not installed; in CI, where `make test` installs every
    extra, a missing backend is a failure instead, so a broken install never turns tests into skips."""
    missing = not has(module)
    if missing and os.environ.get("CI"):
        raise RuntimeError(f"{module} is missing in CI: `make test` installs edge[{extra}]; fix the install")
    return pytest.mark.skipif(missing, reason=f"{module} not installed: pip install 'edge[{extra}]'")


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory):
    """The bundled default converted once to ONNX fp32 (verified by edge.convert)."""
    import edge
    return edge.convert("vit_tiny_digits", target="onnx", out=tmp_path_factory.mktemp("art") / "vit-onnx")


class TinyNet(torch.nn.Module):
    """A small conv classifier for intake tests."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()
