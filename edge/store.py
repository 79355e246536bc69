"""Artifact stores for the bench matrix: where a converted artifact lives between conversion and benchmark.

A store maps a cache key (the digest of what was lowered, :func:`edge.cells.artifact_key`) to an artifact
folder. Two are built in:

- :class:`PathStore`: a folder of artifacts (``~/.cache/edge/artifacts/<key>``), the cache of a local run;
  on a cluster it is the shared store when every node mounts the same path (``--cache-dir /mnt/shared``).
- Ray's object store, for one run: a Ray conversion task stores the artifact in its node's :class:`PathStore`
  and returns it packed (:func:`pack`) with its record, so it travels through the object store to the
  devices, which unpack it into their own cache (:func:`fetch`). Nothing needs to be shared between nodes.

Artifacts are immutable and hash-checked (:meth:`edge.artifact.Artifact.open`), so whatever a device
receives is checked before it runs, and ``put`` is idempotent (a race writes the same bytes twice).

Example:
    >>> store = PathStore("~/.cache/edge")
    >>> store.get(key) or store.put(key, "out/new-artifact")
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Protocol

from edge.errors import ArtifactError, EdgeError


class ArtifactStore(Protocol):
    """What the matrix needs of a store: a checked artifact for a key, and a way to add one."""

    def get(self, key: str) -> Path | None:
        """The folder of a complete, unmodified, verified artifact stored under ``key``, or None."""

    def put(self, key: str, folder: Path) -> Path:
        """Store the artifact ``folder`` under ``key`` (moved in); returns where it now lives."""


def usable_artifact(path: Path):
    """The artifact at ``path`` if it is complete, unchanged (hashes) and verified or spec-checked, else None."""
    from edge.artifact import STATUS_CHECKED_SPEC, STATUS_VERIFIED, Artifact
    if not (path / "manifest.json").is_file():
        return None
    try:
        art = Artifact.open(path)
    except EdgeError:
        return None
    return art if art.manifest.status in (STATUS_VERIFIED, STATUS_CHECKED_SPEC) else None


class PathStore:
    """Artifacts in ``root/artifacts/<key>``: the local cache, or a shared one on a path every node mounts."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.dir = self.root / "artifacts"

    def path_for(self, key: str) -> Path:
        return self.dir / key

    def get(self, key: str) -> Path | None:
        path = self.path_for(key)
        return path if usable_artifact(path) is not None else None

    def put(self, key: str, folder: Path) -> Path:
        dest = self.path_for(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = dest.with_name(f".{key}.old-{uuid.uuid4().hex[:8]}")
        if dest.exists():   # a stale or tampered entry: replaced by the new one in one rename
            os.replace(dest, old)
        os.replace(folder, dest)
        shutil.rmtree(old, ignore_errors=True)
        return dest



def pack(folder: Path) -> bytes:
    """The artifact folder as an uncompressed tar (model files are already dense)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                tar.add(f, arcname=str(f.relative_to(folder)), recursive=False)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> Path:
    """Unpack :func:`pack`'s bytes into ``dest`` (through a staging folder; members must stay inside it)."""
    stage = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex[:8]}")
    stage.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(stage, filter="data")   # refuses absolute paths, '..' and links out of the folder
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest


def fetch(record: dict, cache_root: str | Path) -> Path:
    """The artifact of a conversion ``record`` on this node, checked by hash.

    The record's own path is used where this node sees it (local run, shared path); otherwise the packed
    bytes it carries are unpacked into this node's cache under the record's key.
    """
    from edge.artifact import Artifact
    path = Path(record["artifact"]) if record.get("artifact") else None
    if path is not None and (path / "manifest.json").is_file():
        Artifact.open(path)   # hash check: raises ArtifactError naming the modified file
        return path
    if record.get("packed") is None:
        raise ArtifactError(f"artifact {record.get('artifact')} is not visible on this node and the run did not send "
                            f"it; put the cache on a path every node mounts (--cache-dir) or let the run send it")
    local = PathStore(cache_root).path_for(f"{record['key']}.device")
    if usable_artifact(local) is None:
        unpack(record["packed"], local)
    Artifact.open(local)
    return local
