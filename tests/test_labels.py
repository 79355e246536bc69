"""`edge convert --labels FILE`: class names in the manifest (what `edge serve`'s page shows)."""
from __future__ import annotations

import json

import pytest

from edge.cli import main

MODEL = '''
import torch

def build():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3))
'''


@pytest.mark.slow
def test_labels_file_goes_to_the_manifest(tmp_path, capsys):
    (tmp_path / "m.py").write_text(MODEL)
    (tmp_path / "labels.txt").write_text("cat\ndog\nsmall bird\n")
    out = tmp_path / "art"
    base = ["convert", f"{tmp_path / 'm.py'}:build", "--input-shape", "1,3,8,8", "-t", "onnx", "-o"]
    assert main(base + [str(out), "--labels", str(tmp_path / "labels.txt")]) == 0
    assert json.loads((out / "manifest.json").read_text())["model"]["labels"] == ["cat", "dog", "small bird"]
    (tmp_path / "labels.json").write_text('["a", "b", "c"]')
    assert main(base + [str(tmp_path / "j"), "--labels", str(tmp_path / "labels.json")]) == 0
    assert json.loads((tmp_path / "j" / "manifest.json").read_text())["model"]["labels"] == ["a", "b", "c"]
    capsys.readouterr()
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    for bad in ("two.txt", "missing.txt"):
        assert main(base + [str(tmp_path / "bad"), "--labels", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("edge convert: error: --labels") and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()
