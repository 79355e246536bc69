"""Artifacts: a folder with the model file(s) and ``manifest.json``.

The manifest records what was built and how it was checked: target, format, precision,
file hashes, input/output specs, the source, parity figures, versions and time.
Artifacts are assembled in a staging folder beside the destination and renamed into
place, so an interrupted run leaves nothing half-made.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edge.errors import ArtifactError, OutputPathError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
STATUS_VERIFIED = "verified"          # numerically checked against PyTorch and passed
STATUS_FAILED = "failed"              # checked and failed: edge.load refuses it by default
STATUS_CHECKED_SPEC = "spec-checked"  # runtime cannot execute here (CoreML off macOS): spec checks only
STATUS_UNVERIFIED = "unverified"      # the user asked for --no-verify


@dataclass
class TensorSpec:
    """Name, shape and dtype of one input or output. A string in ``shape`` marks a dynamic dim."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"

    def matches(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            isinstance(d, str) or d == s for d, s in zip(self.shape, shape))

    def concrete_shape(self, dynamic_value: int = 1) -> tuple[int, ...]:
        return tuple(dynamic_value if isinstance(d, str) else int(d) for d in self.shape)


@dataclass
class Manifest:
    """Everything ``manifest.json`` holds. Unknown keys from newer writers are kept in ``extra``."""

    target: str
    format: str
    runtime: str
    precision: str
    files: dict[str, str]                     # relative path -> sha256
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: dict[str, Any] = field(default_factory=dict)
    status: str = STATUS_UNVERIFIED
    parity: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)   # task, num_classes, preprocessing, labels
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["extra"] = {k: v for k, v in d.items() if k not in names}
        kw["inputs"] = [TensorSpec(**t) for t in d.get("inputs", [])]
        kw["outputs"] = [TensorSpec(**t) for t in d.get("outputs", [])]
        return cls(**kw)

    @property
    def main_file(self) -> str:
        return next(iter(self.files))


@dataclass
class Artifact:
    """A built artifact on disk.

    Example:
        >>> art = Artifact.open("out/vit-onnx")
        >>> art.manifest.target, art.file(art.manifest.main_file)
    """

    path: Path
    manifest: Manifest

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def main_path(self) -> Path:
        return self.path / self.manifest.main_file

    @classmethod
    def open(cls, path: str | os.PathLike, *, check_hashes: bool = True) -> "Artifact":
        """Read an artifact folder; with ``check_hashes`` refuse one whose files changed."""
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise ArtifactError(f"no artifact folder at {path}; create one with `edge convert`")
        if not mpath.is_file():
            raise ArtifactError(f"{path} has no {MANIFEST}: it is not an edge artifact (create one with `edge convert`)")
        try:
            manifest = Manifest.from_json(json.loads(mpath.read_text()))
        except (ValueError, TypeError, KeyError) as e:
            raise ArtifactError(f"{mpath} is not a valid manifest ({e}); rebuild the artifact with `edge convert`") from None
        art = cls(path, manifest)
        if check_hashes:
            art.check_hashes()
        return art

    def check_hashes(self) -> None:
        for rel, digest in self.manifest.files.items():
            f = self.path / rel
            if not f.exists():
                raise ArtifactError(f"artifact {self.path} is incomplete: {rel} is missing; rebuild it with `edge convert`")
            if sha256_path(f) != digest:
                raise ArtifactError(
                    f"artifact {self.path} was modified after it was built: the sha256 of {rel} does not match "
                    f"the manifest; rebuild it with `edge convert` (never edit an artifact in place)")

    def write_manifest(self) -> None:
        """Rewrite manifest.json atomically (used to record verification results)."""
        write_json_atomic(self.path / MANIFEST, self.manifest.to_json())


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files in sorted order (CoreML .mlpackage is a folder)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``final``; on success it replaces ``final``, on error it is removed.

    An existing ``final`` is replaced only if it is an edge artifact (has a manifest), so a
    user's own folder is never overwritten.
    """
    final = Path(final).absolute()
    if final.exists() and not (final / MANIFEST).is_file():
        if final.is_dir() and not any(final.iterdir()):
            pass  # an empty folder may be filled
        else:
            raise OutputPathError(f"{final} exists and is not an edge artifact; choose another -o folder or remove it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
    except OSError as e:
        raise OutputPathError(f"cannot write to {final.parent}: {e.strerror}; choose a writable -o folder") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
