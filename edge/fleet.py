"""The bench matrix on a Ray cluster: conversions on CPU nodes, measurements on the node holding each device.

Ray does the scheduling, placement and retries; this module only maps the matrix onto Ray Core:

- one conversion **task** per distinct artifact (``convert_cell`` in a child process, so a native crash is a
  failed record, not a lost worker); cells that share an artifact (one artifact measured on several devices)
  wait on the same ``ObjectRef``. ``max_retries`` covers lost nodes; a failed conversion is a value (a
  failed record), so a deterministic failure is never retried.
- one **actor** per device, placed by the custom resource ``device:<name>`` (count 1 on the node that holds
  the device), so two cells never share a device; it runs ``bench_cell`` one call at a time, and actors of
  different devices run in parallel. ``max_restarts`` restarts an actor whose node was lost; an actor that
  is gone for good fails only its own cells.
- artifacts travel through Ray's object store for the run (the conversion task returns them packed) and are
  unpacked into each device node's cache, checked by hash and by runtime version before they are timed.

A node offers a device by starting with ``ray start --address HEAD:6379 --resources '{"device:NAME": 1}'``
(docs/scaling.md).

Example:
    >>> run_matrix(["vit_tiny_digits"], targets=["onnx"], ray="auto", devices=["cpu-x86", "browser-pixel"])
"""
from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edge.cells import STATUS_FAILED, CellSpec, bench_cell, new_cell
from edge.errors import MissingBackendError, UsageError

DEVICE_RESOURCE = "device:"
CONVERT_RETRIES = 2   # for lost nodes only: a conversion that fails returns a failed record
ACTOR_RESTARTS = 1


def connect(address: str):
    """``ray`` connected to the cluster at ``address`` (``auto``: the one started on this machine)."""
    try:
        import ray
    except ImportError:
        raise MissingBackendError("ray", "fleet", "running the bench matrix on a Ray cluster") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        except ConnectionError as e:
            raise UsageError(f"cannot reach a Ray cluster at {address!r} ({e}); start one with `ray start --head` "
                             f"(docs/scaling.md) or pass --ray ray://HOST:10001") from None
    return ray


def cluster_devices(ray: Any) -> dict[str, str]:
    """Device name -> node id, for every ``device:<name>`` resource of the cluster's live nodes."""
    out = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for res in node.get("Resources", {}):
                if res.startswith(DEVICE_RESOURCE):
                    out[res[len(DEVICE_RESOURCE):]] = node["NodeID"]
    return out


class DeviceActor:
    """Holds one device on the node that has it; runs one cell at a time."""

    def __init__(self, name: str, cache_dir: str | None, config: dict[str, Any]):
        from edge.devices import device_for
        self.device = device_for(name, cache_dir=cache_dir or None, **config)

    def _where(self) -> dict[str, Any]:
        import ray
        return {"node_id": ray.get_runtime_context().get_node_id(), "node": socket.gethostname()}

    def info(self) -> dict[str, Any]:
        return {**self.device.info(), **self._where()}

    def bench(self, spec: dict[str, Any], record: dict[str, Any], packed: bytes | None) -> dict[str, Any]:
        cell = bench_cell(CellSpec.from_json(spec), {**record, "packed": packed}, self.device)
        cell.update(self._where())
        return cell


def _convert(spec: dict[str, Any], cache_root: str) -> tuple[dict[str, Any], bytes | None]:
    """A conversion task: the record (plain data) and the artifact packed for the devices (None if it failed)."""
    from edge.matrix import convert_isolated
    from edge.store import PathStore, pack
    from edge.matrix import default_cache_dir
    record = convert_isolated([CellSpec.from_json(spec)], PathStore(cache_root or default_cache_dir()))[0]
    record["node_id"] = __import__("ray").get_runtime_context().get_node_id()
    packed = pack(Path(record["artifact"])) if record.get("artifact") else None
    return record, packed


def start_devices(ray: Any, names: Sequence[str] | None, cache: Path | None, run_id: str,
                  config: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One actor per device (all the cluster offers when ``names`` is None), placed on the node that holds it."""
    offered = cluster_devices(ray)
    names = list(names) if names else sorted(offered)
    missing = [n for n in names if n not in offered]
    if missing or not names:
        raise UsageError(f"the cluster offers no device {', '.join(missing) or '(none at all)'}; devices offered: "
                         f"{', '.join(sorted(offered)) or 'none'}. A node offers one when started with "
                         f"`ray start --address HEAD:6379 --resources '{{\"device:NAME\": 1}}'`")
    remote = ray.remote(DeviceActor)
    return {n: remote.options(name=actor_name(run_id, n), num_cpus=0, resources={DEVICE_RESOURCE + n: 1},
                              max_restarts=ACTOR_RESTARTS, max_task_retries=0).remote(
                n, str(cache) if cache else None, (config or {}).get(n, {})) for n in names}


def actor_name(run_id: str, device: str) -> str:
    return f"edge-{run_id}-{device}"


def list_devices(address: str, *, timeout_s: float = 120) -> list[dict[str, Any]]:
    """What ``edge devices --ray ADDRESS`` prints: every device of the cluster and what it runs."""
    ray = connect(address)
    actors = start_devices(ray, None, None, uuid.uuid4().hex[:8])
    try:
        return ray.get([a.info.remote() for a in actors.values()], timeout=timeout_s)
    finally:
        for a in actors.values():
            ray.kill(a)


def run_on_ray(models: Sequence[str], *, targets: Sequence[str], precisions: Sequence[str],
               resolutions: Sequence[int | None], avail: dict[str, str | None], settings: dict[str, Any],
               header: dict[str, Any], cache: Path | None, address: str, devices: Sequence[str] | None,
               out: Any, report: Callable | None, show: bool,
               device_config: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """:func:`edge.matrix.run_matrix` on Ray (see the module docstring); the same results dict as a local run.

    ``cache``: the artifact cache on every node (None: each node's default); a path every node mounts makes it
    a shared store across runs.
    """
    from edge.matrix import RunLog, conversion_summary, finish, plan_cells
    ray = connect(address)
    run_id = uuid.uuid4().hex[:8]
    actors = start_devices(ray, devices, cache, run_id, device_config)
    try:
        infos = dict(zip(actors, ray.get([a.info.remote() for a in actors.values()])))
        specs = plan_cells(models, targets=targets, precisions=precisions, resolutions=resolutions,
                           devices=infos, avail=avail, **settings)
        convert = ray.remote(_convert).options(num_cpus=1, num_returns=2, max_retries=CONVERT_RETRIES)
        builds: dict[tuple, Any] = {}
        for s in specs:
            if s.artifact_spec not in builds and not s.error:
                builds[s.artifact_spec] = convert.remote(s.to_json(), str(cache) if cache else "")
        header = {**header, "settings": {**header["settings"], "run_id": run_id, "devices": {
            n: {k: i.get(k) for k in ("kind", "node_id", "node", "host")} for n, i in infos.items()}}}
        log = RunLog(len(specs), header, out, report, show)
        pending = {}
        for s in specs:
            if s.error:
                log.finished({**new_cell(s), "status": STATUS_FAILED, "error": s.error})
                continue
            record_ref, packed_ref = builds[s.artifact_spec]
            pending[actors[s.device].bench.remote(s.to_json(), record_ref, packed_ref)] = s
            log.started(s.id)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ref)
            try:
                cell = ray.get(ref)
            except ray.exceptions.RayError as e:   # the actor is gone, or the conversion's node was lost
                cell = {**new_cell(spec), "status": STATUS_FAILED,
                        "error": f"device {spec.device} was lost while measuring this cell "
                                 f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"}
            cell["actor"] = actor_name(run_id, spec.device)
            log.finished(cell)
        conversions = []
        for key, (record_ref, _) in builds.items():
            try:
                rec = ray.get(record_ref)
            except ray.exceptions.RayError as e:   # the conversion's node was lost more often than retried
                rec = {"status": STATUS_FAILED, "error": f"{type(e).__name__}: {e}"}
            conversions.append({**conversion_summary([s.id for s in specs if s.artifact_spec == key], rec),
                                "node_id": rec.get("node_id")})
    finally:
        for a in actors.values():
            ray.kill(a)
    return finish(header, log.cells, conversions)


@contextlib.contextmanager
def loopback_cluster(devices: dict[str, int], *, head_cpus: int = 2, head_device: str | None = None,
                     object_store_mb: int = 80) -> Iterator[Any]:
    """A Ray cluster on this machine, every node bound to 127.0.0.1, connected; stopped on exit.

    The head has ``head_cpus`` CPUs (conversions run there) and, with ``head_device``, that device; each entry
    of ``devices`` (name -> CPUs) is one more node offering ``device:<name>``. For tests and benchmarks.

    Example:
        >>> with loopback_cluster({"cpu-a": 0, "cpu-b": 0}) as cluster:
        ...     run_matrix(models, targets=["onnx"], ray=cluster.address)
    """
    try:
        import ray
        import ray._private.ray_constants as rc
        from ray.cluster_utils import Cluster
    except ImportError:
        raise MissingBackendError("ray", "fleet", "a local Ray cluster") from None
    # Ray resolves 127.0.0.1 to the machine's interface address unless told it is not a real cluster; the
    # constant is read at import, so it is set here too, and the env var carries it to every node's processes.
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_TMPDIR")}
    enable, rc.ENABLE_RAY_CLUSTER = rc.ENABLE_RAY_CLUSTER, False
    tmp = f"/tmp/edge-ray-{os.getpid()}-{uuid.uuid4().hex[:4]}"   # short: Ray's unix sockets live under it
    os.makedirs(f"{tmp}/ray")
    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_TMPDIR=tmp)
    loop = {"node_ip_address": "127.0.0.1", "object_store_memory": object_store_mb << 20}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            **loop, "num_cpus": head_cpus, "include_dashboard": False,
            "resources": {DEVICE_RESOURCE + head_device: 1} if head_device else {}})
        for name, cpus in devices.items():
            cluster.add_node(**loop, num_cpus=cpus, resources={DEVICE_RESOURCE + name: 1})
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        rc.ENABLE_RAY_CLUSTER = enable
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
