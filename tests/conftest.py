from __future__ import annotations

import functools
import importlib.util
import os
import re

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


# Under `pytest -n N` (xdist's --dist load) every worker that runs a test of a module with a module-scoped fixture
# builds that fixture itself: the ExecuTorch and OpenVINO vit_tiny_digits conversions of test_executorch.py and
# test_openvino.py were built twice (93 s and 53 s each in CI on 2 cores). Here the tests of such a module form
# one unit of work, run by one worker; every other test is a unit of its own, handed to whichever worker is free.
# (xdist's own xdist_group marks cannot do this: xdist 3.8 renames the test ids through an attribute pytest 9 no
# longer reads.) A mode other than load (--dist loadfile, ...) is kept as chosen.
SHARED_FIXTURE = re.compile(r"""@pytest\.fixture\(\s*scope\s*=\s*["']module["']""")


@pytest.hookimpl(optionalhook=True)   # xdist's hook, on the controller
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    @functools.lru_cache(maxsize=None)
    def shares_a_fixture(path: str) -> bool:
        file = config.rootpath / path
        return file.suffix == ".py" and file.is_file() and bool(SHARED_FIXTURE.search(file.read_text()))

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if shares_a_fixture(path) else nodeid

    return SharedFixtureScheduling(config, log)
