"""The bench matrix on a real multi-node Ray cluster started on this machine (loopback only).

Three nodes: a head with CPUs and no device (conversions run there), and two device nodes without CPUs
(``device:cpu-a``, ``device:cpu-b``), so where each piece of work ran is observable.
"""
from __future__ import annotations

import pytest
from test_matrix import TINY

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not __import__("importlib.util").util.find_spec("onnxruntime"),
                                 reason="onnxruntime is not installed (pip install 'edge[onnx]')")]

GOOD = TINY   # a small conv classifier factory (make)

# data-dependent control flow: torch.export refuses it, so its conversion fails (deterministically)
BAD = GOOD.replace("return self.fc(", "if x.sum() > 0:\n            x = x * 2\n        return self.fc(")


@pytest.fixture
def cluster(tmp_path_factory):
    """A head (2 CPUs, no device) and two device nodes (no CPUs), every process bound to 127.0.0.1."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'edge[fleet]')")
    from edge.fleet import loopback_cluster
    models = tmp_path_factory.mktemp("models")
    (models / "good.py").write_text(GOOD)
    (models / "bad.py").write_text(BAD)
    with loopback_cluster({"cpu-a": 0, "cpu-b": 0}) as c:
        yield ray, c, models, tmp_path_factory.mktemp("fleet-cache")


def _nodes(ray):
    from edge.fleet import cluster_devices
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))
    return head, cluster_devices(ray)


def test_matrix_on_a_cluster(cluster, tmp_path):
    """One test for the whole cluster (xdist would otherwise start a cluster per worker): the matrix, then a
    run in which one device's actor is killed."""
    _matrix_runs_where_its_devices_are(cluster, tmp_path)
    _a_lost_device_fails_only_its_cells(cluster)


def _matrix_runs_where_its_devices_are(cluster, tmp_path):
    from edge.matrix import run_matrix
    ray, c, models, cache = cluster
    head, where = _nodes(ray)
    assert set(where) == {"cpu-a", "cpu-b"} and head not in where.values()
    for node in ray.nodes():   # every node of the test cluster is on loopback
        assert node["NodeManagerAddress"] == "127.0.0.1"
    from edge.fleet import list_devices   # what `edge devices --ray auto` prints
    offered = {d["name"]: d for d in list_devices(c.address)}
    assert {n: d["node_id"] for n, d in offered.items()} == where and offered["cpu-a"]["targets"]["onnx"] is None
    good, bad = f"{models / 'good.py'}:make", f"{models / 'bad.py'}:make"
    res = run_matrix([good, bad], targets=["onnx"], precisions=["fp32", "int3"], input_shapes=[(1, 1, 8, 8)],
                     cache_dir=cache, warmup=1, iters=5, op_profile=False, ray=c.address, out=tmp_path)
    cells = {c["id"]: c for c in res["cells"]}
    assert len(cells) == 8   # 2 models x 2 precisions x 2 devices
    for dev in ("cpu-a", "cpu-b"):
        ok = cells[f"{good}@8/onnx/fp32@{dev}"]
        assert ok["status"] == "ok", ok["error"]
        assert ok["node_id"] == where[dev] and ok["device"] == dev   # measured on the node holding the device
        assert ok["parity_passed"] is True and len(ok["samples_ms"]) == 5 and ok["model_rss_mb"] > 0
        assert "nodes on CPUExecutionProvider" in ok["placement"]["summary"]
        failed = cells[f"{bad}@8/onnx/fp32@{dev}"]   # its conversion failed; the run went on
        assert failed["status"] == "failed" and "export" in failed["error"].lower()
        assert "int3" in cells[f"{good}@8/onnx/int3@{dev}"]["error"]   # rejected while planning
    # each distinct artifact converted once, on the CPU node, its cells on both devices sharing it
    convs = res["conversions"]
    assert len(convs) == 2 and all(cv["node_id"] == head for cv in convs)
    shared = next(cv for cv in convs if cv["status"] == "ok")
    assert sorted(shared["cells"]) == sorted([f"{good}@8/onnx/fp32@cpu-a", f"{good}@8/onnx/fp32@cpu-b"])
    assert cells[f"{good}@8/onnx/fp32@cpu-a"]["cache_key"] == cells[f"{good}@8/onnx/fp32@cpu-b"]["cache_key"]
    from edge.report import load_results
    assert len(load_results(tmp_path / "results.json")["cells"]) == 8   # streamed as cells finished


def _a_lost_device_fails_only_its_cells(cluster):
    from edge.matrix import run_matrix
    ray, c, models, cache = cluster
    killed = []

    def kill_a_after_its_first_cell(done, total, cell):
        if cell["device"] == "cpu-a" and cell["status"] == "ok" and not killed:
            ray.kill(ray.get_actor(cell["actor"]), no_restart=True)
            killed.append(cell["id"])

    good = f"{models / 'good.py'}:make"
    res = run_matrix([good], targets=["onnx"], resolutions=[8, 12], input_shapes=[(1, 1, 8, 8)],
                     cache_dir=cache, warmup=1, iters=20, op_profile=False, ray=c.address,
                     progress=kill_a_after_its_first_cell)
    assert killed
    by_dev = {d: [c for c in res["cells"] if c["device"] == d] for d in ("cpu-a", "cpu-b")}
    assert all(c["status"] == "ok" for c in by_dev["cpu-b"])
    lost = [c for c in by_dev["cpu-a"] if c["status"] == "failed"]
    assert lost and all("device cpu-a was lost" in c["error"] for c in lost)
    assert len(res["cells"]) == 4
