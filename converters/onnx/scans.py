"""ONNX ``Scan`` loops that read and write in reverse without reversed copies.

torch's exporter writes ``torch.scan(..., reverse=True)`` as a forward ``Scan`` over flipped inputs (a ``Slice``
with step -1 along the scanned axis: a full copy of each input) whose outputs are flipped back (one more copy
each). ONNX's ``Scan`` reads an input from its end with ``scan_input_directions`` = 1 and prepends an output's
iterations with ``scan_output_directions`` = 1: the same elements in the same order, without the copies.
VisionGRU's ``stripe_loop`` form (edge/passes/scan_lean.py) has such a reverse loop in every long block, over
full-length inputs: at 1248 px each flip is a [97344, 72] copy.

:func:`fold_scan_flips` rewrites the graph in place; a flip that anything else also reads is kept.
"""
from __future__ import annotations

from typing import Any

def _constant_ints(graph) -> dict[str, list[int]]:
    """1-D integer constants of ``graph`` by name (initializers and ``Constant`` nodes)."""
    from onnx import numpy_helper
    out: dict[str, list[int]] = {}
    for init in graph.initializer:
        if init.data_type in (6, 7) and len(init.dims) <= 1:    # INT32, INT64
            out[init.name] = [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if t.data_type in (6, 7) and len(t.dims) <= 1:
                out[node.output[0]] = [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
    return out


def _is_flip0(node, ints: dict[str, list[int]]) -> bool:
    """Whether ``node`` reverses its input whole along axis 0: Slice(starts=-1, ends=INT64_MIN-ish, axes=0,
    steps=-1)."""
    if node.op_type != "Slice" or len(node.input) != 5:
        return False
    starts, ends, axes, steps = (ints.get(n) for n in node.input[1:])
    return (axes == [0] and steps == [-1] and starts is not None and ends is not None
            and starts[0] in (-1, 2 ** 63 - 1) and ends[0] <= -(2 ** 31))


def _attr(node, name: str):
    return next((a for a in node.attribute if a.name == name), None)


def fold_scan_flips(model) -> dict[str, Any]:
    """Fold every whole reversal along axis 0 of a ``Scan``'s scan input (or of its scan output) into that
    Scan's direction; returns ``{"inputs": n, "outputs": m}`` folded. A flip between two Scans is folded once
    (into the first one's output). Scans with scan axes other than 0 are left alone."""
    from onnx import helper
    graph = model.graph
    ints = _constant_ints(graph)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    made = {o: node for node in graph.node for o in node.output}
    dropped: set[int] = set()
    folded = {"inputs": 0, "outputs": 0}
    for scan in graph.node:
        if scan.op_type != "Scan" or any(any(a.ints) for a in (_attr(scan, "scan_input_axes"),
                                                              _attr(scan, "scan_output_axes")) if a):
            continue
        n_in = _attr(scan, "num_scan_inputs").i
        body = _attr(scan, "body").g
        n_state = len(scan.input) - n_in
        in_dirs = _directions(scan, "scan_input_directions", n_in)
        out_dirs = _directions(scan, "scan_output_directions", len(body.output) - n_state)
        n_folded = sum(folded.values())
        for j in range(n_in):
            src = scan.input[n_state + j]
            flip = made.get(src)
            if (flip is not None and id(flip) not in dropped and _is_flip0(flip, ints) and len(readers[src]) == 1
                    and src not in graph_outputs):
                scan.input[n_state + j] = flip.input[0]
                in_dirs[j] = 1 - in_dirs[j]
                dropped.add(id(flip))
                folded["inputs"] += 1
        for j, out in enumerate(scan.output[n_state:]):
            flips = readers.get(out, [])
            if len(flips) == 1 and id(flips[0]) not in dropped and _is_flip0(flips[0], ints) and out not in graph_outputs:
                scan.output[n_state + j] = flips[0].output[0]   # the flip's readers now read the Scan
                out_dirs[j] = 1 - out_dirs[j]
                dropped.add(id(flips[0]))
                folded["outputs"] += 1
        if sum(folded.values()) > n_folded:
            for name, dirs in (("scan_input_directions", in_dirs), ("scan_output_directions", out_dirs)):
                kept_attrs = [a for a in scan.attribute if a.name != name]
                del scan.attribute[:]
                scan.attribute.extend(kept_attrs + [helper.make_attribute(name, dirs)])
    if dropped:
        bounds = {name for n in graph.node if id(n) in dropped for name in n.input[1:]}
        kept = [n for n in graph.node if id(n) not in dropped]
        read = _names_read(kept) | graph_outputs
        unused = bounds - read       # the flips' bounds, unless something else reads them (subgraphs included)
        kept = [n for n in kept if not (n.op_type == "Constant" and n.output[0] in unused)]
        del graph.node[:]
        graph.node.extend(kept)
        inits = [i for i in graph.initializer if i.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(inits)
    return folded


def _names_read(nodes) -> set[str]:
    """Every name ``nodes`` read, inside their subgraphs (loop bodies, branches) too."""
    read: set[str] = set()
    for node in nodes:
        read.update(node.input)
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                read |= _names_read(g.node) | {o.name for o in g.output}
    return read


def _directions(scan, name: str, n: int) -> list[int]:
    """A Scan's directions attribute as a list (0: forward, 1: reverse; absent means all forward)."""
    a = _attr(scan, name)
    return list(a.ints) if a is not None else [0] * n
