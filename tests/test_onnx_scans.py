"""Reverse loops in ONNX read and write through Scan's directions, not flipped copies (converters/onnx/scans.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edge
from conftest import needs

pytestmark = needs("onnxruntime", "onnx")


def _body(h, x_t):
    h = h * 0.5 + x_t
    return h, h.clone()


class _ReverseScans(nn.Module):
    """A reverse scan over the input, then a reverse scan over its outputs, then a forward one: the exporter
    flips the first two's inputs and outputs (a flip between two loops), and the third reads a flipped copy."""

    def forward(self, x):                                   # [T, B, D]
        from torch._higher_order_ops.scan import scan
        _, ys = scan(_body, x[0] * 0, x, reverse=True)
        _, zs = scan(_body, x[0] * 0, ys, reverse=True)
        _, ws = scan(_body, x[0] * 0, zs)
        return ws * 2 + ys


def _reference(x: torch.Tensor) -> torch.Tensor:
    def run(xs, reverse):
        h, out = torch.zeros_like(xs[0]), [None] * len(xs)
        for t in (range(len(xs) - 1, -1, -1) if reverse else range(len(xs))):
            h = h * 0.5 + xs[t]
            out[t] = h
        return torch.stack(out)
    ys = run(x, True)
    return run(run(ys, True), False) * 2 + ys


def _flips(graph) -> int:
    """Slices with a negative step at the top level of an ONNX graph."""
    from onnx import numpy_helper
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    return sum(n.op_type == "Slice" and len(n.input) == 5 and n.input[4] in consts and (consts[n.input[4]] < 0).any()
               for n in graph.node)


@pytest.mark.slow
def test_reverse_scans_read_their_inputs_in_place(tmp_path):
    """Through edge.convert: every flip around the loops is folded into a Scan direction (the flip between the
    two reverse loops once), none is left, the artifact is verified against PyTorch and equals a plain Python
    recurrence when run again by edge's runtime."""
    import onnx
    x = torch.randn(6, 2, 5)
    art = edge.convert(_ReverseScans(), example_inputs=(x,), target="onnx", out=tmp_path / "scans")
    assert art.manifest.status == "verified", art.manifest.parity
    folded = art.manifest.details["scan_flips_folded"]
    assert folded["inputs"] + folded["outputs"] >= 3, folded
    graph = onnx.load(str(art.main_path)).graph
    assert _flips(graph) == 0
    directions = [list(a.ints) for n in graph.node if n.op_type == "Scan" for a in n.attribute
                  if a.name in ("scan_input_directions", "scan_output_directions")]
    assert any(1 in d for d in directions), directions
    with edge.load(art.path) as s:
        np.testing.assert_allclose(s.run(x.numpy())[0], _reference(x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_flip_something_else_reads_is_kept():
    """A reversed input that is also a graph output stays a Slice; the Scan is left reading it forward."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edge.converters.onnx.scans import fold_scan_flips
    body = helper.make_graph(
        [helper.make_node("Add", ["h", "x_t"], ["h2"]), helper.make_node("Identity", ["h2"], ["y_t"])], "body",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("h2", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [3])])
    ints = {"starts": [-1], "ends": [-(2 ** 63)], "axes": [0], "steps": [-1]}
    nodes = [helper.make_node("Constant", [], [k], value=helper.make_tensor(k, TensorProto.INT64, [1], v))
             for k, v in ints.items()]
    nodes += [helper.make_node("Slice", ["x", *ints], ["xf"]),
              helper.make_node("Scan", ["h0", "xf"], ["hT", "ys"], body=body, num_scan_inputs=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3]),
                                           helper.make_tensor_value_info("h0", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 3]) for n in ("ys", "xf")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = model.SerializeToString()
    assert fold_scan_flips(model) == {"inputs": 0, "outputs": 0}
    assert model.SerializeToString() == before
    # the same graph without "xf" as an output: the flip is folded, the numbers are the same
    del model.graph.output[1]
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.arange(12, dtype=np.float32).reshape(4, 3),
                                                                        "h0": np.ones(3, np.float32)})
    assert fold_scan_flips(model) == {"inputs": 1, "outputs": 0}
    assert _flips(model.graph) == 0 and not [n for n in model.graph.node if n.op_type == "Constant"]
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.arange(12, dtype=np.float32).reshape(4, 3),
                                                                       "h0": np.ones(3, np.float32)})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
