"""Bad input, hostile artifacts and faults, as a careless user or an attacker would bring them.

Every case checks the exit code (CLI) or the error type (SDK), that the message is one clear line (no traceback),
that nothing half-written is left (no staging folders, no new output), and that the user's files are
byte-identical afterwards. The CLI cases run ``edge.cli.main`` in this process (the same code path as the
``edge`` program, minus the backend-log redirection, which has its own subprocess tests below).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge
from edge.artifact import STAGING_MARK, Artifact
from edge.cli import main
from edge.errors import (ArtifactError, EdgeError, InputError, ModelLoadError, OutputPathError, UnknownNameError,
                         UsageError)

CUDA = torch.cuda.is_available()

MODELS_PY = '''
import sys
import torch


class Fixed(torch.nn.Module):
    """Takes exactly [N, 3, 8, 8]: the Linear after the flatten fixes the size."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build():
    return Fixed()


def exits():
    sys.exit(3)


class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:   # data-dependent control flow: a trace would keep one branch
            return x * 2
        return x - 1


def branches():
    return Branchy()


def not_a_module():
    return 42


def explodes():
    raise ValueError("bad config")
'''


def sha_tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks as their target text) -> its sha256."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A verified ONNX artifact of a small factory model, converted once."""
    root = tmp_path_factory.mktemp("built")
    (root / "models.py").write_text(MODELS_PY)
    art = edge.convert(f"{root}/models.py:build", input_shapes=[(1, 3, 8, 8)], target="onnx", out=root / "art")
    assert art.manifest.status == "verified"
    return art.path


@pytest.fixture
def user(tmp_path, built):
    """The user's folder: model code, weights, a web app, an artifact; snapshot taken before the case."""
    (tmp_path / "models.py").write_text(MODELS_PY)
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "syntax.py").write_text("def build(:\n")
    (tmp_path / "records_import.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('IMPORTED').write_text('x')\n"
        "import torch\n\ndef build():\n    return torch.nn.Linear(8, 2)\n")
    torch.manual_seed(0)
    from importlib import util
    spec = util.spec_from_file_location("user_models_for_bad_input", tmp_path / "models.py")
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.build().state_dict(), tmp_path / "good.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a checkpoint")
    (tmp_path / "corrupt.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "weights_dir").mkdir()
    (tmp_path / "webapp").mkdir()
    (tmp_path / "webapp" / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (tmp_path / "webapp" / "index.html").write_text("<h1>mine</h1>")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "secret.txt").write_text("outside the artifact")
    shutil.copytree(built, tmp_path / "art")
    (tmp_path / "results.json").write_text("[1, 2")
    return tmp_path


def tamper(art: Path, change) -> None:
    m = json.loads((art / "manifest.json").read_text())
    m = change(m)
    (art / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outside_file(art: Path, m: dict, rel: str) -> dict:
    """Point the manifest at ``rel`` (a path leaving the folder) with the right sha256 of what it reaches."""
    target = (art / rel) if not rel.startswith("/") else Path(rel)
    m["files"] = {rel: sha(target), **m["files"]}
    return m


# (id, argv with {u} for the user's folder, exit code, text the error must contain, setup(u) or None)
CLI_CASES = [
    # --input-shape and the model's own forward
    ("shape-letter", ["convert", "{u}/models.py:build", "--input-shape", "1,3,x", "-o", "{u}/o"], 2,
     "not a list of integers", None),
    ("shape-empty-dim", ["convert", "{u}/models.py:build", "--input-shape", "1,3,,8", "-o", "{u}/o"], 2,
     "not a list of integers", None),
    ("shape-zero", ["convert", "{u}/models.py:build", "--input-shape", "0,3,8,8", "-o", "{u}/o"], 2,
     "positive sizes", None),
    ("shape-negative", ["convert", "{u}/models.py:build", "--input-shape", "1,-3,8,8", "-o", "{u}/o"], 2,
     "not a list of integers", None),
    ("shape-float", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8.5,8", "-o", "{u}/o"], 2,
     "not a list of integers", None),
    ("shape-huge", ["convert", "{u}/models.py:build", "--input-shape", "1,3,100000,100000", "-o", "{u}/o"], 2,
     "too large", None),
    ("shape-wrong-size", ["convert", "{u}/models.py:build", "--input-shape", "1,3,7,7", "-o", "{u}/o"], 2,
     "forward failed on input shape 1,3,7,7", None),
    ("shape-wrong-rank", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8", "-o", "{u}/o"], 2,
     "forward failed on input shape 1,3,8", None),
    ("shape-two-for-one", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--input-shape", "1,4",
                           "-o", "{u}/o"], 2, "(2 inputs)", None),
    ("no-shape", ["convert", "{u}/models.py:build", "-o", "{u}/o"], 2, "needs an input shape", None),
    ("data-dependent-branch", ["convert", "{u}/models.py:branches", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 1,
     "data-dependent control flow", None),
    # targets, precisions, options
    ("target-empty", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-t", "", "-o", "{u}/o"], 2,
     "no target given", None),
    ("target-commas", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-t", ",", "-o", "{u}/o"], 2,
     "no target given", None),
    ("precision-empty", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-p", " ", "-o", "{u}/o"], 2,
     "no precision given", None),
    ("target-typo", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-t", "onnxx", "-o", "{u}/o"], 2,
     "did you mean 'onnx'", None),
    ("precision-unknown", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-p", "int3", "-o", "{u}/o"],
     2, "unknown precision", None),
    ("option-unknown", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--option", "opsett=18",
                        "-o", "{u}/o"], 2, "unknown target option 'opsett'", None),
    ("option-not-pair", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--option", "opset",
                         "-o", "{u}/o"], 2, "must look like key=value", None),
    ("option-bad-value", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--option", "opset=99",
                          "-o", "{u}/o"], 2, "opset", None),
    ("option-other-target", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--device", "cpu",
                             "-o", "{u}/o"], 2, "unknown target option 'device'", None),
    ("keep-tokens", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--keep-tokens", "2",
                     "-o", "{u}/o"], 2, "--keep-tokens", None),
    ("disable-pass-unknown", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--disable-pass",
                              "no_such_pass", "-o", "{u}/o"], 2, "no_such_pass", None),
    ("calib-missing", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-p", "int8", "--calib",
                       "{u}/no_images", "-o", "{u}/o"], 2, "does not exist", None),
    # output folders
    ("out-is-file", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/a_file"], 2,
     "is a file", None),
    ("out-webapp", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/webapp"], 2,
     "not an edge artifact", None),
    ("out-user-folder", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/mine"], 2,
     "not an edge artifact", None),
    ("out-under-file", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/a_file/o"], 2,
     "is a file, not a folder", None),
    ("out-empty", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", ""], 2, "-o/--out is empty",
     None),
    ("out-proc", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", "/proc/edge-out"], 2,
     "cannot write", None),
    ("out-symlink", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/link"], 2,
     "symbolic link", lambda u: (u / "link").symlink_to(u / "mine")),
    ("out-artifact-with-user-file", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/art"],
     2, "files edge did not write (mine.txt)", lambda u: (u / "art" / "mine.txt").write_text("keep me")),
    ("out-second-target-blocked", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-t",
                                   "onnx,openvino", "-o", "{u}/multi"], 2, "openvino",
     lambda u: ((u / "multi").mkdir(), (u / "multi" / "openvino").write_text("user file"))),
    # model sources
    ("model-missing", ["convert", "{u}/nope.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "does not exist", None),
    ("model-folder", ["convert", "{u}/mine.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "is a folder", lambda u: (u / "mine.py").mkdir()),
    ("model-syntax", ["convert", "{u}/syntax.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "SyntaxError", None),
    ("model-exit-on-import", ["convert", "{u}/exits_on_import.py:build", "--input-shape", "1,3,8,8", "-o", "{u}/o"],
     2, "sys.exit(0)", None),
    ("factory-exit", ["convert", "{u}/models.py:exits", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "sys.exit(3)", None),
    ("factory-raises", ["convert", "{u}/models.py:explodes", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "ValueError: bad config", None),
    ("factory-not-module", ["convert", "{u}/models.py:not_a_module", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "not a torch.nn.Module", None),
    ("factory-missing", ["convert", "{u}/models.py:nope", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "no callable 'nope'", None),
    ("module-missing", ["convert", "no_such_pkg.models:build", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "cannot import module", None),
    ("module-malformed", ["convert", "a b:build", "--input-shape", "1,3,8,8", "-o", "{u}/o"], 2,
     "neither file.py:factory nor package.module:factory", None),
    ("zoo-unknown", ["convert", "vit_tiny_digitz", "-o", "{u}/o"], 2, "did you mean 'vit_tiny_digits'", None),
    ("weights-missing", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--weights", "{u}/no.pt",
                         "-o", "{u}/o"], 2, "does not exist", None),
    ("weights-folder", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--weights", "{u}/weights_dir",
                        "-o", "{u}/o"], 2, "is a folder", None),
    ("weights-corrupt", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--weights", "{u}/corrupt.pt",
                         "-o", "{u}/o"], 2, "corrupt or not a PyTorch checkpoint", None),
    ("weights-pickled", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--weights", "{u}/pickled.pt",
                         "-o", "{u}/o"], 2, "--trust-weights", None),
    ("weights-wrong", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "--weights", "{u}/wrong.pt",
                       "-o", "{u}/o"], 2, "do not fit the model", None),
    ("pt2-corrupt", ["convert", "{u}/corrupt.pt2", "-o", "{u}/o"], 2, "not a loadable torch.export program", None),
    ("pt2-missing", ["convert", "{u}/none.pt2", "-o", "{u}/o"], 2, "does not exist", None),
    # hostile or broken artifacts
    ("manifest-list", ["info", "{u}/art"], 2, "JSON list, not an object",
     lambda u: tamper(u / "art", lambda m: [m])),
    ("manifest-files-null", ["info", "{u}/art"], 2, "'files' must be an object",
     lambda u: tamper(u / "art", lambda m: {**m, "files": None})),
    ("manifest-shape-string", ["verify", "{u}/art"], 2, "inputs[0].shape",
     lambda u: tamper(u / "art", lambda m: {**m, "inputs": [{**m["inputs"][0], "shape": "1,3,8,8"}]})),
    ("manifest-dtype", ["info", "{u}/art"], 2, "inputs[0].dtype",
     lambda u: tamper(u / "art", lambda m: {**m, "inputs": [{**m["inputs"][0], "dtype": "float99"}]})),
    ("manifest-no-inputs", ["bench", "{u}/art"], 2, "'inputs' must be a non-empty list",
     lambda u: tamper(u / "art", lambda m: {**m, "inputs": []})),
    ("manifest-status", ["info", "{u}/art"], 2, "'status' must be one of",
     lambda u: tamper(u / "art", lambda m: {**m, "status": "trusted"})),
    ("manifest-target-number", ["info", "{u}/art"], 2, "'target' must be a non-empty string",
     lambda u: tamper(u / "art", lambda m: {**m, "target": 7})),
    ("manifest-not-json", ["info", "{u}/art"], 2, "not valid JSON",
     lambda u: tamper(u / "art", lambda m: "{not json")),
    ("manifest-deep", ["info", "{u}/art"], 2, "nests too deeply",
     lambda u: tamper(u / "art", lambda m: "[" * 100000 + "]" * 100000)),
    ("manifest-symlink", ["info", "{u}/art"], 2, "not a plain file",
     lambda u: ((u / "m.json").write_text((u / "art" / "manifest.json").read_text()),
                (u / "art" / "manifest.json").unlink(), (u / "art" / "manifest.json").symlink_to(u / "m.json"))),
    ("files-dotdot", ["verify", "{u}/art"], 2, "escapes the artifact folder",
     lambda u: tamper(u / "art", lambda m: outside_file(u / "art", m, "../secret.txt"))),
    ("files-absolute", ["info", "{u}/art", "--no-check"], 2, "absolute",
     lambda u: tamper(u / "art", lambda m: outside_file(u / "art", m, str(u / "secret.txt")))),
    ("files-symlink", ["bench", "{u}/art"], 2, "symbolic link",
     lambda u: ((u / "art" / "extra.bin").symlink_to(u / "secret.txt"),
                tamper(u / "art", lambda m: outside_file(u / "art", m, "extra.bin")))),
    ("files-symlinked-dir", ["info", "{u}/art"], 2, "symbolic link",
     lambda u: ((u / "art" / "sub").symlink_to(u), tamper(u / "art", lambda m: outside_file(u / "art", m,
                                                                                           "sub/secret.txt")))),
    ("files-tampered", ["verify", "{u}/art"], 2, "modified after it was built",
     lambda u: (u / "art" / "model.onnx").write_bytes((u / "art" / "model.onnx").read_bytes() + b"\0")),
    ("files-missing", ["bench", "{u}/art"], 2, "is incomplete",
     lambda u: (u / "art" / "model.onnx").unlink()),
    ("artifact-is-file", ["info", "{u}/a_file"], 2, "is a file, not an artifact folder", None),
    ("artifact-missing", ["verify", "{u}/nowhere"], 2, "no artifact folder", None),
    ("verify-factory-untrusted", ["verify", "{u}/art"], 2, "--trust-source",
     lambda u: tamper(u / "art", lambda m: {**m, "source": {"kind": "factory", "name": f"{u}/records_import.py:build",
                                                           "init": "random"}})),
    ("verify-zoo-name-is-code", ["verify", "{u}/art"], 2, "which this edge does not have",
     lambda u: tamper(u / "art", lambda m: {**m, "source": {"kind": "zoo", "name": f"{u}/records_import.py:build"}})),
    ("verify-pt2-outside", ["verify", "{u}/art"], 2, "--trust-source",
     lambda u: tamper(u / "art", lambda m: {**m, "source": {"kind": "exported_program", "name": "x",
                                                           "path": "/etc/passwd.pt2", "init": "random"}})),
    ("verify-module-source", ["verify", "{u}/art"], 2, "in-memory module",
     lambda u: tamper(u / "art", lambda m: {**m, "source": {"kind": "module", "name": "Net"}})),
    ("verify-runtime-option-unknown", ["verify", "{u}/art", "--runtime-option", "precision_hint=bf16"], 2,
     "unknown onnxruntime runtime option 'precision_hint'", None),
    ("bench-runtime-option-unknown", ["bench", "{u}/art", "--runtime-option", "treads=2"], 2,
     "did you mean 'threads'", None),
    ("bench-runtime-option-value", ["bench", "{u}/art", "--runtime-option", "threads=many"], 2,
     "must be a whole number", None),
    ("bench-iters", ["bench", "{u}/art", "--iters", "0"], 2, "--iters >= 1", None),
    ("report-not-json", ["report", "{u}/results.json"], 2, "is not valid JSON", None),
    ("report-missing", ["report", "{u}/none.json"], 2, "does not exist", None),
    ("report-deep", ["report", "{u}/deep.json"], 2, "nests too deeply",
     lambda u: (u / "deep.json").write_text("[" * 100000 + "]" * 100000)),
    ("compare-not-results", ["compare", "{u}/webapp/manifest.json", "{u}/webapp/manifest.json"], 2,
     "not an edge bench results file", None),
    ("serve-not-artifact", ["serve", "{u}/mine", "--port", "0"], 2, "no ONNX artifact to serve", None),
    ("serve-bad-port", ["serve", "{u}/art", "--port", "99999"], 2, "is not a TCP port", None),
    ("serve-bad-host", ["serve", "{u}/art", "--host", "no such host!", "--port", "0"], 2, "cannot listen on", None),
]
if not CUDA:
    CLI_CASES.append(("cuda-without-gpu", ["convert", "{u}/models.py:build", "--input-shape", "1,3,8,8", "-t", "cuda",
                                           "-o", "{u}/o"], 2, "--device cpu", None))


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, user, capsys):
    name, argv, code, needle, setup = case
    if setup is not None:
        setup(user)
    before = sha_tree(user)
    rc = main([a.replace("{u}", str(user)) for a in argv])
    out, err = capsys.readouterr()
    assert rc == code, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"edge {argv[0]}: error: "), err
    assert needle in lines[-1], err
    assert sha_tree(user) == before, "the user's files changed"
    assert not (user / "IMPORTED").exists(), "code named by an artifact was imported"
    assert not list(user.rglob("*.partial-*")) and not (user / "o").exists()


def test_multi_target_checks_every_destination_first(user, capsys):
    """The blocked second destination is found before the first target writes anything."""
    (user / "multi").mkdir()
    (user / "multi" / "openvino").write_text("user file")
    rc = main(["convert", f"{user}/models.py:build", "--input-shape", "1,3,8,8", "-t", "onnx,openvino",
               "-o", str(user / "multi")])
    assert rc == 2 and "openvino" in capsys.readouterr().err
    assert sorted(p.name for p in (user / "multi").iterdir()) == ["openvino"]


def test_replacing_an_artifact_keeps_a_users_other_folders(user, capsys):
    """A folder that is an edge artifact is replaced; the folders beside it are not touched."""
    before = sha_tree(user / "mine")
    assert main(["convert", f"{user}/models.py:build", "--input-shape", "1,3,8,8", "-o", str(user / "art")]) == 0
    assert Artifact.open(user / "art").manifest.status == "verified"
    assert sha_tree(user / "mine") == before


def test_stale_staging_folders_are_cleaned_and_only_those(user, capsys):
    """A run killed with SIGKILL leaves `.<name>.partial-*`; the next run into the same place removes the ones
    edge made for a process that is gone, and nothing else."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    import socket
    stale = user / ".o.partial-deadbeef"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    (stale / STAGING_MARK).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    alive = user / ".o.partial-cafecafe"   # a running conversion's folder
    alive.mkdir()
    (alive / STAGING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    users = user / ".o.partial-mine"        # looks alike, not edge's
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    old = user / f".o.old-{dead}-12345678"
    old.mkdir()
    assert main(["convert", f"{user}/models.py:build", "--input-shape", "1,3,8,8", "-o", str(user / "o")]) == 0
    assert not stale.exists() and not old.exists()
    assert alive.exists() and (users / "keep.txt").read_text() == "mine"


def test_sigkill_during_conversion_then_rerun(user):
    """A real SIGKILL in the middle of a conversion, then the same command again: no staging folder survives."""
    code = (f"import os, edge, edge.api\n"
            f"real = edge.api.verify_artifact\n"
            f"def die(*a, **k):\n    os.kill(os.getpid(), 9)\n"
            f"edge.api.verify_artifact = die\n"
            f"edge.convert('{user}/models.py:build', input_shapes=[(1, 3, 8, 8)], target='onnx', out='{user}/o')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == -9
    assert len(list(user.glob(".o.partial-*"))) == 1 and not (user / "o").exists()
    assert main(["convert", f"{user}/models.py:build", "--input-shape", "1,3,8,8", "-o", str(user / "o")]) == 0
    assert not list(user.glob(".o.partial-*")) and Artifact.open(user / "o").manifest.status == "verified"


def test_full_disk_while_writing_the_manifest(user, monkeypatch):
    """ENOSPC while the manifest is written: a clear OutputPathError and no staging folder or temp file left."""
    import errno
    real_open = open

    def full(path, mode="r", *a, **k):
        if "w" in mode and Path(path).name.startswith(".manifest.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(OutputPathError, match="No space left on device"):
        edge.convert(f"{user}/models.py:build", input_shapes=[(1, 3, 8, 8)], target="onnx", out=user / "o")
    assert not (user / "o").exists() and not list(user.glob(".o.*"))


def test_session_misuse(built):
    s = edge.load(built)
    with pytest.raises(InputError, match="numeric array"):
        s.run(np.array([["a"] * 8] * 8))
    with pytest.raises(InputError, match="numeric array"):
        s.run(None)
    with pytest.raises(InputError, match="numeric array"):
        s.run("1,2,3")
    with pytest.raises(InputError, match="not an array"):
        s.run([[1, 2], [3]])
    with pytest.raises(InputError, match="expects"):
        s.run(np.zeros((1, 3, 9, 9), np.float32))
    with pytest.raises(InputError, match="takes 1 input"):
        s.run(np.zeros((1, 3, 8, 8), np.float32), np.zeros(1))
    assert s.run(np.zeros((1, 3, 8, 8), np.float32))[0].shape == (1, 4)
    s.close()
    s.close()   # twice is fine
    with pytest.raises(InputError, match="was closed"):
        s.run(np.zeros((1, 3, 8, 8), np.float32))


def test_load_options(built):
    with pytest.raises(UnknownNameError, match="did you mean 'threads'"):
        edge.load(built, treads=1)
    with pytest.raises(UsageError, match="whole number"):
        edge.load(built, threads=-1)
    with pytest.raises(UsageError, match="whole number"):
        edge.load(built, threads=True)
    assert edge.load(built, threads="1").options["threads"] == 1


def test_onnxruntime_lean_memory_options_agree_with_the_default_session(built):
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    lean = edge.load(built, mem_arena=0, mem_pattern=0, prepacking=0)
    so = lean.sess.get_session_options()
    assert not so.enable_cpu_mem_arena and not so.enable_mem_pattern
    assert so.get_session_config_entry("session.disable_prepacking") == "1"
    # unpacked weights take another GEMM kernel: equal up to fp32 rounding, not bit for bit
    assert np.allclose(lean.run(x)[0], edge.load(built).run(x)[0], rtol=1e-5, atol=1e-6)


def test_sdk_bad_targets_and_options(user):
    with pytest.raises(UsageError, match="no target given"):
        edge.convert_all(f"{user}/models.py:build", input_shapes=[(1, 3, 8, 8)], targets=[], out=user / "o")
    with pytest.raises(UsageError, match="no precision given"):
        edge.convert_all(f"{user}/models.py:build", input_shapes=[(1, 3, 8, 8)], targets=["onnx"], precisions=[],
                         out=user / "o")
    with pytest.raises(UsageError, match="must be names"):
        edge.convert_all(f"{user}/models.py:build", input_shapes=[(1, 3, 8, 8)], targets=[None], out=user / "o")
    with pytest.raises(UsageError, match="unknown target option 'opset_version'"):
        edge.convert(f"{user}/models.py:build", input_shapes=[(1, 3, 8, 8)], out=user / "o",
                     options={"opset_version": 18})
    with pytest.raises(UsageError, match="example input 0 is a tuple, not a tensor"):   # one level too deep
        edge.convert(torch.nn.Linear(2, 2), example_inputs=((torch.randn(1, 2),),), out=user / "o")
    assert not (user / "o").exists()


def test_verify_with_trust_or_an_explicit_model(user, capsys):
    """A factory source is rebuilt once the user trusts it or names the model; a zoo name always is."""
    assert main(["convert", f"{user}/records_import.py:build", "--input-shape", "1,8", "-o", str(user / "r")]) == 0
    (user / "IMPORTED").unlink()
    assert main(["verify", str(user / "r")]) == 2 and "--trust-source" in capsys.readouterr().err
    assert not (user / "IMPORTED").exists()
    assert main(["verify", str(user / "r"), "--trust-source"]) == 0
    assert main(["verify", str(user / "r"), "--model", f"{user}/records_import.py:build"]) == 0


def test_weights_recorded_in_the_manifest_need_trust(user, capsys):
    """The weights path a manifest names is outside the artifact: read only with --trust-source, and only while
    its sha256 still matches."""
    assert main(["convert", f"{user}/models.py:build", "--input-shape", "1,3,8,8", "--weights", str(user / "good.pt"),
                 "-o", str(user / "w")]) == 0
    assert main(["verify", str(user / "w")]) == 2 and "--weights" in capsys.readouterr().err
    assert main(["verify", str(user / "w"), "--trust-source"]) == 0
    assert main(["verify", str(user / "w"), "--model", f"{user}/models.py:build", "--weights",
                 str(user / "good.pt")]) == 0
    torch.save({k: v + 1 for k, v in torch.load(user / "good.pt").items()}, user / "good.pt")
    capsys.readouterr()
    assert main(["verify", str(user / "w"), "--trust-source"]) == 2
    assert "changed since" in capsys.readouterr().err


def run_edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True)


def test_corrupt_pt2_prints_no_torch_traceback(user):
    """torch logs a traceback for a corrupt archive before raising; the user sees edge's one line."""
    import zipfile
    with zipfile.ZipFile(user / "bad.pt2", "w") as z:
        z.writestr("bad/archive_format", "pt2")
    r = run_edge("convert", str(user / "bad.pt2"), "-o", str(user / "o"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith("edge convert: error:") and "Traceback" not in r.stderr


@pytest.mark.slow
def test_backend_noise_is_hidden_unless_verbose(user):
    """Converting to ExecuTorch prints torchao's and cpuinfo's lines and torch's warnings: hidden by default,
    shown with --verbose; edge's own result line is there either way."""
    args = ("convert", f"{user}/models.py:build", "--input-shape", "1,3,8,8", "-t", "executorch")
    r = run_edge(*args, "-o", str(user / "quiet"))
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    noise = [ln for ln in r.stderr.splitlines() if not ln.startswith("edge convert: warning:")]
    assert noise == [], r.stderr
    v = run_edge(*args, "-o", str(user / "loud"), "--verbose")
    assert v.returncode == 0 and "verified" in v.stdout
    assert len(v.stderr.splitlines()) > len(r.stderr.splitlines()), v.stderr


def test_internal_error_is_one_line_with_the_log_named(user):
    """An unexpected exception (here a broken runtime plugin) is one line naming the kept log, exit 1."""
    code = ("import sys, edge.cli, edge.artifact\n"
            "def boom(*a, **k):\n    raise RuntimeError('deep backend failure\\nlast line')\n"
            "edge.artifact.Artifact.open = boom\n"
            f"sys.exit(edge.cli.main())\n")
    r = subprocess.run([sys.executable, "-c", code, "info", str(user / "art")], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith("edge info: internal error: RuntimeError: last line; the traceback is in ")
    log = Path(line.rsplit(" ", 1)[1])
    assert "Traceback" in log.read_text() and "Traceback" not in r.stderr
    log.unlink()
    v = subprocess.run([sys.executable, "-c", code, "info", str(user / "art"), "--verbose"], capture_output=True,
                       text=True)
    assert v.returncode == 1 and "Traceback" in v.stderr


# --- property-based: whatever a manifest holds, opening it is an ArtifactError or a safe artifact -------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                    max_leaves=10)
FIELDS = ["target", "format", "runtime", "precision", "files", "inputs", "outputs", "source", "status", "parity",
          "options", "details", "model", "versions", "created", "schema_version"]
PATHS = st.sampled_from(["../secret.txt", "/etc/passwd", "a/../../secret.txt", "./model.onnx", "sub//x", "",
                         "model.onnx/..", "..", "C:/x", "a\\..\\b", "x\x00y", " model.onnx", "manifest.json"]) | \
    st.text(alphabet="./\\ab:", min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_manifest_field_value_is_safe(tmp_path_factory, built, field, value):
    art = tmp_path_factory.mktemp("prop") / "art"
    shutil.copytree(built, art)
    tamper(art, lambda m: {**m, field: value})
    try:
        opened = Artifact.open(art)
    except ArtifactError as e:
        assert "\n" not in str(e)
        return
    for rel in opened.manifest.files:   # whatever was accepted names only files inside the folder
        assert os.path.realpath(art / rel).startswith(os.path.realpath(art) + os.sep)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rel=PATHS)
def test_no_manifest_path_reaches_outside(tmp_path_factory, built, rel):
    root = tmp_path_factory.mktemp("prop")
    art = root / "art"
    shutil.copytree(built, art)
    (root / "secret.txt").write_text("outside")
    tamper(art, lambda m: {**m, "files": {rel: "0" * 64, **m["files"]}})
    try:
        opened = Artifact.open(art, check_hashes=False)
    except ArtifactError:
        return
    for name in opened.manifest.files:
        real = os.path.realpath(art / name)
        assert real.startswith(os.path.realpath(art) + os.sep), name


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789,x;- .a", max_size=16))
def test_input_shapes_parse_or_refuse(text):
    from edge.sources import parse_shapes
    try:
        shapes = parse_shapes(text)
    except UsageError as e:
        assert "--input-shape" in str(e)
        return
    assert shapes and all(s and all(isinstance(d, int) and d > 0 for d in s) for s in shapes)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_=-0123456789", max_size=12), max_size=4))
def test_cli_options_are_known_keys_or_usage_errors(pairs):
    from edge.api import check_option_keys
    from edge.cli import _parse_options
    from edge.converters import get_converter
    convs = [get_converter("onnx"), get_converter("openvino")]
    try:
        options = _parse_options(pairs)
        check_option_keys(convs, options)
        for conv in convs:
            conv.resolve_options({k: v for k, v in options.items() if k in conv.options})
    except EdgeError as e:
        assert e.exit_code == 2
        return
    assert set(options) <= {k for c in convs for k in c.options}
