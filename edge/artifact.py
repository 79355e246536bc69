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
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edge.errors import ArtifactError, OutputPathError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
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
    def from_json(cls, d: Any) -> "Manifest":
        """Build a Manifest from parsed JSON, checking it against the schema first.

        Raises:
            ArtifactError: naming the first field that is missing or of the wrong type.
        """
        validate_manifest(d)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["extra"] = {k: v for k, v in d.items() if k not in names}
        kw["inputs"] = [TensorSpec(t["name"], list(t["shape"]), t.get("dtype", "float32")) for t in d["inputs"]]
        kw["outputs"] = [TensorSpec(t["name"], list(t["shape"]), t.get("dtype", "float32")) for t in d["outputs"]]
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
        """The path of a file the manifest lists, checked to lie inside the artifact folder."""
        if rel not in self.manifest.files:
            raise ArtifactError(f"artifact {self.path} does not list {rel!r} in its manifest")
        return member_path(self.path, rel)

    @property
    def main_path(self) -> Path:
        return member_path(self.path, self.manifest.main_file)

    @classmethod
    def open(cls, path: str | os.PathLike, *, check_hashes: bool = True) -> "Artifact":
        """Read an artifact folder; with ``check_hashes`` refuse one whose files changed.

        The manifest is checked against its schema, and every file it names must lie inside the folder
        (no ``..``, no absolute path, no symbolic link): an artifact is untrusted input.
        """
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            if path.exists():
                raise ArtifactError(f"{path} is a file, not an artifact folder; pass the folder `edge convert -o` "
                                    f"created")
            raise ArtifactError(f"no artifact folder at {path}; create one with `edge convert`")
        if mpath.is_symlink() or (mpath.exists() and not mpath.is_file()):
            raise ArtifactError(f"{mpath} is not a plain file; an artifact's manifest must be a regular file "
                                f"inside its folder (rebuild it with `edge convert`)")
        if not mpath.is_file():
            raise ArtifactError(f"{path} has no {MANIFEST}: it is not an edge artifact (create one with `edge convert`)")
        data = read_json(mpath, ArtifactError, "rebuild the artifact with `edge convert`", limit=MAX_MANIFEST_BYTES)
        art = cls(path, Manifest.from_json(data))
        for rel in art.manifest.files:
            member_path(path, rel)
        if check_hashes:
            art.check_hashes()
        return art

    def check_hashes(self) -> None:
        for rel, digest in self.manifest.files.items():
            f = member_path(self.path, rel)
            if not f.exists():
                raise ArtifactError(f"artifact {self.path} is incomplete: {rel} is missing; rebuild it with `edge convert`")
            if sha256_path(f) != digest:
                raise ArtifactError(
                    f"artifact {self.path} was modified after it was built: the sha256 of {rel} does not match "
                    f"the manifest; rebuild it with `edge convert` (never edit an artifact in place)")

    def write_manifest(self) -> None:
        """Rewrite manifest.json atomically (used to record verification results)."""
        write_json_atomic(self.path / MANIFEST, self.manifest.to_json())


def read_json(path: Path, error: type[Exception], todo: str, *, limit: int = 1 << 30) -> Any:
    """Parse an untrusted JSON file; any way it can be bad (too large, not UTF-8, not JSON, nested past
    Python's recursion limit, unreadable) becomes one ``error`` naming the file, ending with ``todo``."""
    try:
        if path.stat().st_size > limit:
            raise error(f"{path} is over {limit >> 20} MiB; {todo}")
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        reason = "it nests too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:120]
        raise error(f"{path} is not valid JSON ({reason}); {todo}") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}; {todo}") from None


_REQUIRED_TEXT = ("target", "format", "runtime", "precision")
_OPTIONAL_DICTS = ("source", "parity", "options", "details", "model", "versions")
_STATUSES = (STATUS_VERIFIED, STATUS_FAILED, STATUS_CHECKED_SPEC, STATUS_UNVERIFIED)
_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


class _SchemaError(Exception):
    pass


def validate_manifest(d: Any) -> None:
    """Check parsed ``manifest.json`` against the schema (types and required keys).

    Raises:
        ArtifactError: naming the field that is wrong (the message ends with what to do).
    """
    try:
        _validate(d)
    except _SchemaError as e:
        raise ArtifactError(f"the manifest is malformed: {e}; rebuild the artifact with `edge convert`") from None


def _validate(d: Any) -> None:
    if not isinstance(d, dict):
        raise _SchemaError(f"it is a JSON {type(d).__name__}, not an object")
    for key in _REQUIRED_TEXT:
        if not isinstance(d.get(key), str) or not d[key]:
            raise _SchemaError(f"{key!r} must be a non-empty string (got {_short(d.get(key))})")
    files = d.get("files")
    if not isinstance(files, dict) or not files:
        raise _SchemaError(f"'files' must be an object of path -> sha256 with at least one file (got {_short(files)})")
    for rel, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _SchemaError(f"'files'[{rel!r}] must be a sha256 hex digest (got {_short(digest)})")
        check_member_name(rel, what="'files'")
    for key in ("inputs", "outputs"):
        specs = d.get(key)
        if not isinstance(specs, list) or not specs:
            raise _SchemaError(f"{key!r} must be a non-empty list of tensor specs (got {_short(specs)})")
        for i, t in enumerate(specs):
            where = f"{key}[{i}]"
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
                raise _SchemaError(f"{where} must be an object with a non-empty 'name' (got {_short(t)})")
            shape = t.get("shape")
            if not isinstance(shape, list) or not all(
                    (isinstance(s, int) and not isinstance(s, bool) and s > 0) or (isinstance(s, str) and s)
                    for s in shape):
                raise _SchemaError(f"{where}.shape must be a list of positive integers or dynamic-dim names "
                                   f"(got {_short(shape)})")
            if "dtype" in t and t["dtype"] not in _DTYPES:
                raise _SchemaError(f"{where}.dtype must be one of {', '.join(_DTYPES)} (got {_short(t['dtype'])})")
            if set(t) - {"name", "shape", "dtype"}:
                raise _SchemaError(f"{where} has unknown keys {sorted(set(t) - {'name', 'shape', 'dtype'})}")
    for key in _OPTIONAL_DICTS:
        if key in d and not isinstance(d[key], dict):
            raise _SchemaError(f"{key!r} must be an object (got {_short(d[key])})")
    if "status" in d and d["status"] not in _STATUSES:
        raise _SchemaError(f"'status' must be one of {', '.join(_STATUSES)} (got {_short(d['status'])})")
    for key in ("created",):
        if key in d and not isinstance(d[key], str):
            raise _SchemaError(f"{key!r} must be a string (got {_short(d[key])})")
    if "schema_version" in d and (not isinstance(d["schema_version"], int) or isinstance(d["schema_version"], bool)
                                  or d["schema_version"] > SCHEMA_VERSION):
        raise _SchemaError(f"'schema_version' must be an integer up to {SCHEMA_VERSION}, this edge's "
                           f"(got {_short(d['schema_version'])}; a newer edge may read it)")


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_member_name(rel: Any, *, what: str = "a file") -> str:
    """A path an artifact names must be relative, inside the folder and plain: no ``..``, no absolute or
    drive path, no backslash, no NUL. (Symlinks are checked against the disk by :func:`member_path`.)"""
    if not isinstance(rel, str) or not rel or rel.strip() != rel:
        raise _SchemaError(f"{what} names a path that is not a plain relative path: {_short(rel)}")
    if "\\" in rel or "\0" in rel or rel.startswith("/") or ":" in rel.split("/")[0]:
        raise _SchemaError(f"{what} names {rel!r}, which is absolute or not a plain relative path; "
                           f"an artifact may only name files inside its folder")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _SchemaError(f"{what} names {rel!r}, which leaves or escapes the artifact folder; "
                           f"an artifact may only name files inside its folder")
    if rel == MANIFEST:
        raise _SchemaError(f"{what} names {MANIFEST} itself")
    return rel


def member_path(root: Path, rel: str) -> Path:
    """``root / rel`` after checking that it resolves inside ``root``, with no symlink on the way
    (nor inside it, for a folder such as CoreML's .mlpackage).

    Raises:
        ArtifactError: the path leaves the artifact folder.
    """
    try:
        check_member_name(rel)
    except _SchemaError as e:
        raise ArtifactError(f"artifact {root} is unsafe: {e}") from None
    path = root / rel
    real_root = os.path.realpath(root)
    cur = root
    for part in rel.split("/"):
        cur = cur / part
        if cur.is_symlink():
            raise ArtifactError(f"artifact {root} is unsafe: {rel} is (or passes through) a symbolic link; "
                                f"an artifact may only hold plain files. Rebuild it with `edge convert`")
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise ArtifactError(f"artifact {root} is unsafe: {rel} resolves outside the artifact folder")
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                if os.path.islink(os.path.join(dirpath, name)):
                    inner = os.path.relpath(os.path.join(dirpath, name), root)
                    raise ArtifactError(f"artifact {root} is unsafe: {inner} is a symbolic link; an artifact may "
                                        f"only hold plain files. Rebuild it with `edge convert`")
    return path


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
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it into place.

    Raises:
        OutputPathError: the file cannot be written (a full disk, a read-only folder); nothing is left behind.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputPathError(f"cannot write {path}: {e.strerror or e} (is the disk full or the folder "
                              f"read-only?); free space or choose another folder") from None


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


STAGING_MARK = ".edge-staging"   # inside a staging folder: who made it, so a later run can clean it up


def is_edge_artifact(folder: Path) -> bool:
    """True when ``folder``'s manifest.json is an edge manifest (a web app's manifest.json is not)."""
    mpath = folder / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        return False
    try:
        validate_manifest(json.loads(mpath.read_text(encoding="utf-8")))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, ArtifactError):
        return False
    return True


def check_destination(final: str | os.PathLike) -> Path:
    """Check, before any work, that an artifact can be written at ``final``; returns its absolute path.

    ``final`` may be missing, an empty folder, or an edge artifact holding only the files its manifest lists
    (it is then replaced). Anything else (a file, a symbolic link, a user's folder, a folder that cannot be
    written) is an OutputPathError, so a run never deletes a user's files or fails halfway through.
    """
    final = Path(os.path.abspath(final))
    if final.is_symlink():
        raise OutputPathError(f"{final} is a symbolic link; pass the folder itself as -o")
    if final.exists():
        if not final.is_dir():
            raise OutputPathError(f"{final} exists and is a file, not a folder; choose another -o folder")
        entries = {p.name for p in final.iterdir()}
        if entries:
            if not is_edge_artifact(final):
                raise OutputPathError(f"{final} exists and is not an edge artifact; choose another -o folder or "
                                      f"remove it (edge replaces only folders it wrote)")
            manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
            ours = {MANIFEST} | {rel.split("/")[0] for rel in manifest["files"]}
            foreign = sorted(entries - ours)
            if foreign:
                raise OutputPathError(f"{final} is an edge artifact but also holds files edge did not write "
                                      f"({', '.join(foreign[:5])}); move them out or choose another -o folder")
    probe_at = final.parent
    while not probe_at.exists():
        probe_at = probe_at.parent
    if not probe_at.is_dir():
        raise OutputPathError(f"cannot write to {final}: {probe_at} is a file, not a folder; choose another -o folder")
    try:   # root passes os.access everywhere: try it for real
        os.rmdir(tempfile.mkdtemp(prefix=".edge-probe-", dir=probe_at))
    except OSError as e:
        raise OutputPathError(f"cannot write to {probe_at}: {e.strerror or e}; choose a writable -o folder") from None
    return final


def clean_stale_staging(final: Path) -> list[Path]:
    """Remove staging folders that an earlier run into ``final`` left behind when it was killed.

    Only folders edge made (``.<name>.partial-*`` holding edge's marker, ``.<name>.old-<pid>-*``) whose
    process is no longer running on this machine are removed; anything else is left alone.
    """
    removed = []
    for p in final.parent.glob(f".{final.name}.partial-*"):
        mark = p / STAGING_MARK
        if p.is_symlink() or not p.is_dir() or not mark.is_file():
            continue
        try:
            info = json.loads(mark.read_text())
            pid, host = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host == socket.gethostname() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in final.parent.glob(f".{final.name}.old-*-*"):
        pid = p.name[len(f".{final.name}.old-"):].split("-")[0]
        if pid.isdigit() and not p.is_symlink() and p.is_dir() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``final``; on success it replaces ``final``, on error it is removed.

    ``final`` is checked with :func:`check_destination` (a user's own folder is never replaced), and
    staging folders a killed earlier run left beside it are cleaned up first.
    """
    final = check_destination(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(final)
        stage = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        (stage / STAGING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                       "created": now_iso()}))
    except OSError as e:
        raise OutputPathError(f"cannot write to {final.parent}: {e.strerror}; choose a writable -o folder") from None
    try:
        yield stage
        (stage / STAGING_MARK).unlink()
        final = check_destination(final)   # nothing else may have taken the place meanwhile
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        try:
            os.replace(stage, final)
        except OSError as e:
            if old is not None:
                os.replace(old, final)
            raise OutputPathError(f"cannot move the artifact into {final}: {e.strerror}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
