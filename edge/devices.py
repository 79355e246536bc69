"""Devices that measure bench cells: the interface a device kind implements, and the built-in kinds.

A device receives a cell (:class:`edge.cells.CellSpec`) and its conversion record, and returns the measured
fields of the cell. Kinds:

- ``local``: this machine's CPU. Each cell runs in a clean subprocess (:mod:`edge.probe`) that imports only
  the runtime, so memory is the deployment's (not torch's) and a runtime that crashes natively, even in
  its per-op profiler, fails that cell only.
- ``browser``: a phone or desktop browser. It serves the artifact with ``edge serve``'s functions
  (:func:`edge.serve.make_server`) and resolves when the page posts its samples.

A new kind is one file: subclass :class:`Device`, implement :meth:`Device.bench` (and :meth:`Device.info`),
and register it under the entry-point group ``edge.devices`` (``[project.entry-points."edge.devices"]
adb = "my_pkg.adb:AdbDevice"``). A device named ``<kind>-<anything>`` (``browser-pixel``, ``adb-pixel8``)
is of that kind; any other name is ``local``. docs/scaling.md sketches an ssh and an adb kind.

Example:
    >>> dev = device_for("local")
    >>> fields = dev.bench(spec, record)      # p50_ms, cold_load_ms, model_rss_mb, placement, ...
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from edge.errors import EdgeError
from edge.registry import Registry

DEVICE_KINDS: Registry = Registry("device kind", "edge.devices", {
    "local": "edge.devices:LocalDevice", "browser": "edge.devices:BrowserDevice"})


class DeviceError(EdgeError):
    """A device could not measure a cell (its process died, a version differs, it timed out)."""


def kind_of(name: str) -> str:
    """The kind of device ``name``: its prefix before ``-`` when that is a registered kind, else ``local``."""
    prefix = name.split("-", 1)[0]
    return prefix if prefix != name and prefix in DEVICE_KINDS else "local"


def device_for(name: str = "local", **config: Any) -> "Device":
    """The device object for ``name`` (its kind from :func:`kind_of`).

    Settings come from ``config`` over the node's ``EDGE_DEVICE_CONFIG`` (JSON: device name -> settings, e.g.
    ``{"browser-pixel": {"host": "0.0.0.0", "port": 8000}}``), so a lab configures each device where it is.
    """
    try:
        node = json.loads(os.environ.get("EDGE_DEVICE_CONFIG") or "{}")
    except ValueError as e:
        raise DeviceError(f"EDGE_DEVICE_CONFIG is not JSON ({e}); write it like "
                          f"'{{\"browser-pixel\": {{\"host\": \"0.0.0.0\"}}}}'") from None
    return DEVICE_KINDS.get(kind_of(name))(name, **{**(node.get(name) or {}), **config})


def exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def check_versions(manifest: Any) -> None:
    """Refuse to time an artifact with another version of its runtime than it was built and verified with."""
    from importlib.metadata import PackageNotFoundError, version

    from edge.runtimes import RUNTIMES
    runtime = RUNTIMES.get(manifest.runtime)
    for mod in runtime.requires:
        built = manifest.versions.get(mod)
        try:
            here = version(mod)
        except PackageNotFoundError:
            raise DeviceError(f"{mod} is not installed on this device, the artifact was built with {mod} {built}; "
                              f"install it (pip install 'edge[{runtime.extra}]')") from None
        if built is not None and built != here:
            raise DeviceError(f"the artifact was built and verified with {mod} {built}, this device has {mod} "
                              f"{here}: not timed (install {mod}=={built} here, or convert on a node with {here})")


class Device(ABC):
    """One device. ``bench`` runs one cell at a time (a Ray actor per device serialises its calls)."""

    kind: ClassVar[str]

    def __init__(self, name: str = "local", *, cache_dir: str | Path | None = None, **config: Any):
        from edge.matrix import default_cache_dir
        self.name = name
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.config = config

    def info(self) -> dict[str, Any]:
        """What the device is and which targets it runs: ``kind``, ``host``, ``targets`` (name -> None or why not)."""
        from edge.cells import host_info
        from edge.matrix import available_targets
        return {"name": self.name, "kind": self.kind, "host": host_info(), "targets": available_targets()}

    def artifact(self, record: dict[str, Any]):
        """The record's artifact on this device, checked by hash and by runtime version."""
        from edge.artifact import Artifact
        from edge.store import fetch
        path = fetch(record, self.cache_dir)
        art = Artifact.open(path)
        check_versions(art.manifest)
        return art

    @abstractmethod
    def bench(self, spec: Any, record: dict[str, Any]) -> dict[str, Any]:
        """Measure the record's artifact; returns cell fields (``p50_ms`` ... ``samples_ms``); raises on failure."""


class LocalDevice(Device):
    """This machine: every cell in a clean subprocess (:mod:`edge.probe`)."""

    kind = "local"

    def bench(self, spec: Any, record: dict[str, Any]) -> dict[str, Any]:
        art = self.artifact(record)
        job = {"artifact": str(art.path), "warmup": spec.warmup, "iters": spec.iters,
               "native_profile": spec.op_profile, "timeout_s": self.config.get("timeout_s")}
        out = run_probe(job, timeout_s=self.config.get("timeout_s") or 900)
        out["device"] = self.name
        return out


PROBE_MARK = "@@edge-probe "


def run_probe(job: dict[str, Any], *, timeout_s: float = 900) -> dict[str, Any]:
    """Run :mod:`edge.probe` on ``job`` in a fresh interpreter; its JSON answer, or a DeviceError saying how
    it ended (a native crash is a failed cell, never the end of the run)."""
    proc = subprocess.Popen([sys.executable, "-m", "edge.probe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        out, _ = proc.communicate(json.dumps(job), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DeviceError(f"the benchmark process ran past {timeout_s:.0f} s and was stopped") from None
    lines = [ln for ln in out.splitlines() if ln.startswith(PROBE_MARK)]
    if proc.returncode != 0 or not lines:
        raise DeviceError(f"the benchmark process died during this cell ({exit_text(proc.returncode)}): the runtime "
                          f"crashed it; the other cells still run. Reproduce it alone with `edge bench "
                          f"{job['artifact']}` to see the runtime's message")
    answer = json.loads(lines[-1][len(PROBE_MARK):])
    if answer.get("error"):
        raise DeviceError(answer["error"])
    return answer["fields"]


class BrowserDevice(Device):
    """A browser (a phone on the lab's network): the page of ``edge serve`` measures the cell and posts it.

    Config: ``host`` (address to bind, default 127.0.0.1; 0.0.0.0 to reach a phone), ``port`` (default 8000),
    ``app_dir`` (the web app), ``timeout_s`` (how long to wait for the page, default 600). The lab keeps the
    page open on the device; the URL is printed on the node's stderr for each cell.
    """

    kind = "browser"

    def info(self) -> dict[str, Any]:
        from edge.cells import host_info
        targets = {"onnx": None}
        return {"name": self.name, "kind": self.kind, "host": host_info(), "targets": targets,
                "url": f"http://{self.config.get('host', '127.0.0.1')}:{self.config.get('port', 8000)}/"}

    def bench(self, spec: Any, record: dict[str, Any]) -> dict[str, Any]:
        from edge.serve import make_server
        if spec.target != "onnx":
            raise DeviceError(f"a browser device runs ONNX artifacts (onnxruntime-web); {spec.target} cannot run "
                              f"on {self.name}")
        art = self.artifact(record)
        with tempfile.TemporaryDirectory(prefix="edge-browser-") as tmp:
            results = Path(tmp) / "results.json"
            srv = make_server(art.path, host=self.config.get("host", "127.0.0.1"), port=int(self.config.get(
                "port", 8000)), results=results, app_dir=self.config.get("app_dir"))
            thread = threading.Thread(target=srv.serve_forever, daemon=True)
            thread.start()
            self.url = f"http://{srv.server_address[0]}:{srv.server_address[1]}/"
            from edge.progress import console
            print(f"edge bench: {spec.id} waits for the page at {self.url} on {self.name}", file=console(),
                  flush=True)
            try:
                posted = self._wait(results, float(self.config.get("timeout_s", 600)))
            finally:
                srv.shutdown()
                srv.server_close()
        keep = ("p50_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p90_ms", "p95_ms", "p99_ms", "samples_ms",
                "throughput_per_s", "load_ms", "first_inference_ms", "warmup", "iters", "timer", "runtime",
                "user_agent", "browser")
        fields = {k: posted.get(k) for k in keep}
        fields.update(device=self.name, cold_load_ms=posted.get("load_ms"), device_detail=posted.get("device"))
        return fields

    def _wait(self, results: Path, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if results.is_file():
                cells = json.loads(results.read_text()).get("cells") or []
                if cells:
                    return cells[-1]
            time.sleep(0.2)
        raise DeviceError(f"no page posted its samples to {self.url} within {timeout_s:.0f} s; open that URL on "
                          f"{self.name} (keep the page open while the bench runs)")
