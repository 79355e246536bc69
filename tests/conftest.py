from __future__ import annotations

import importlib.util

import pytest
import torch


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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
