"""ExecuTorch side of ``edge debug``.

XNNPACK runs each delegated partition as one opaque call: an ETDump holds the outputs of delegate calls and of
portable-kernel ops, never of the layers inside a delegate. Per-layer rows therefore come from the program the
partitioner lowered, as the ETRecord stores it (the edge-dialect program with its quantize/dequantize ops: the
same int8 recipe, simulated in eager PyTorch), and the runtime itself is checked where it can be read: its outputs
against that program's outputs (a note says how close they are). The table says so in ``granularity``.
Nodes map to modules through their ``nn_module_stack``; a module is quantized when an op of its scope reads a
dequantized tensor.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edge.debugger import GraphNode, Probe, module_outputs, stack_scopes

ETRECORD = "etrecord.bin"
DEQUANT = ("dequantize_per_tensor", "dequantize_per_channel", "dequantize_affine")


def _edge_program(art: Any):
    path = art.path / ETRECORD
    if ETRECORD not in art.manifest.files or not path.is_file():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from executorch.devtools.etrecord import parse_etrecord
        rec = parse_etrecord(str(path))
    ep = rec.edge_dialect_program
    return ep.get("forward") if isinstance(ep, dict) else ep


def _run_recording(gm: Any, batch: tuple) -> tuple[dict[str, Any], list]:
    """Every node's value (by name) of one eager run of ``gm``, and its outputs."""
    import torch
    seen: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                seen[n.name] = out
            return out

    from edge.capture import flatten_outputs
    with torch.no_grad():
        outs = Recorder(gm).run(*(torch.from_numpy(np.ascontiguousarray(a)) for a in batch))
    return seen, flatten_outputs(outs)


def probe(art: Any, program: Any, modules: list[str], batches: list, scratch: Path) -> Probe:
    import torch
    ep = _edge_program(art)
    delegation = art.manifest.details.get("delegation") or {}
    calls = delegation.get("delegate_calls", "?")
    if ep is None:
        return Probe({}, {}, {}, {}, granularity="none (no ETRecord)",
                     notes=["this artifact has no ETRecord (etrecord.bin), and XNNPACK exposes no per-layer "
                            "tensors: convert with the option etrecord=True to debug it per layer"])
    gm = ep.module()
    nodes = []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        nodes.append(GraphNode(n.name, stack_scopes(n.meta), [a.name for a in n.all_input_nodes], [n.name],
                               str(getattr(n.target, "__name__", n.target))))
    deq = {n.name for n in nodes if any(d in n.op for d in DEQUANT)}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    graph_outputs = [a.name for a in out_node.all_input_nodes]
    outs = module_outputs(nodes, modules, graph_outputs)
    values: dict[str, list] = {m: [(v, []) for v in vs] for m, (vs, _) in outs.items()}
    simulated = []
    for b in batches:
        seen, res = _run_recording(gm, b)
        simulated.append([r.detach().float().numpy() for r in res if isinstance(r, torch.Tensor)])
        for m in outs:
            values[m] = [(v, got + [seen[v].detach().float().numpy()]) for v, got in values[m] if v in seen]
    quantized = {m: any(i in deq for n in scope for i in n.inputs) for m, (_, scope) in outs.items()}
    lowered = art.manifest.precision
    precision = {m: ("int8 (simulated)" if quantized[m] else f"{'fp16' if lowered == 'fp16' else 'fp32'} "
                     f"(simulated)") for m in outs}
    notes = [f"XNNPACK exposes only its delegate calls ({calls} in this program), not the layers inside them: "
             f"per-layer rows are the ETRecord's edge program (the graph XNNPACK lowered, with its int8 "
             f"quantize/dequantize ops) run in eager PyTorch"]
    notes.append(_runtime_agreement(art, batches, simulated))
    return Probe(values, {m: vs[-1] for m, (vs, _) in outs.items()}, precision, quantized,
                 granularity="per layer (ETRecord program); runtime checked per program output", notes=notes)


def _runtime_agreement(art: Any, batches: list, simulated: list) -> str:
    """How close the .pte's outputs on the runtime are to the simulated program's (the part per-layer rows skip)."""
    from edge.debugger import metrics
    from edge.runtimes.executorch import ExecuTorchSession
    session = ExecuTorchSession(art)
    try:
        got = [session.run(*b) for b in batches]
    finally:
        session.close()
    m = metrics([s[0] for s in simulated], [g[0] for g in got])
    if m is None:
        return "the runtime's output could not be matched with the ETRecord program's"
    return (f"runtime (.pte on XNNPACK) vs the ETRecord program on output 0: SQNR {m[0]:.1f} dB, cosine "
            f"{m[1]:.6f}, max abs {m[2]:.2e}")
