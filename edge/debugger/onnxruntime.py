"""ONNX Runtime side of ``edge debug``: a scratch copy of the model with the chosen values as extra graph outputs.

Values map back to PyTorch modules through the node metadata the dynamo exporter records
(``pkg.torch.onnx.name_scopes``: the module path of every node, kept by ONNX Runtime's quantizer on the nodes it
quantizes). A node whose inputs come from a DequantizeLinear runs in int8 (QDQ); one reading float16 values in fp16.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np

from edge.debugger import GraphNode, Probe, module_outputs

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def _scopes(node: Any) -> tuple[str, ...]:
    """A node's module scopes from the exporter's metadata (outermost first)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                names = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ()
            return tuple(n for n in names[1:-1] if n)   # [root '', modules..., fx node name]
    return ()


def probe(art: Any, program: Any, modules: list[str], batches: list, scratch: Path) -> Probe:
    import onnx
    import onnxruntime as ort
    model = onnx.load(str(art.main_path))
    graph = model.graph
    nodes = [GraphNode(n.name, _scopes(n), list(n.input), list(n.output), n.op_type) for n in graph.node]
    notes = []
    if not any(n.scopes for n in nodes):
        notes.append("the ONNX graph carries no module names (exported by the TorchScript fallback, or an int8 "
                     "artifact from an edge before its quantizer kept them): no layer rows")
    outs = module_outputs(nodes, modules, [o.name for o in graph.output])
    outs = {m: ([_through_output_qdq(graph, v) for v in vs], scope) for m, (vs, scope) in outs.items()}
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in
            list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    existing = {o.name for o in graph.output}
    for value in {v for vs, _ in outs.values() for v in vs}:
        if value not in existing:
            graph.output.append(onnx.helper.make_tensor_value_info(value, elem.get(value, onnx.TensorProto.FLOAT),
                                                                   None))
            existing.add(value)
    path = scratch / "debug.onnx"
    onnx.save(model, str(path))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    in_names = [i.name for i in sess.get_inputs()]
    runs = [dict(zip(names, sess.run(names, dict(zip(in_names, b))))) for b in batches]
    values, points, precision, quantized = {}, {}, {}, {}
    for m, (vs, scope_nodes) in outs.items():
        values[m] = [(v, [np.asarray(r[v], np.float32) for r in runs]) for v in vs]
        points[m] = vs[-1]
        q = any(i in dq_out for n in scope_nodes for i in n.inputs)
        half = any(elem.get(i) == onnx.TensorProto.FLOAT16 for n in scope_nodes for i in n.inputs)
        quantized[m] = q
        precision[m] = "int8 (QDQ)" if q else ("fp16" if half else "fp32")
    return Probe(values, points, precision, quantized, notes=notes)


def _through_output_qdq(graph: Any, value: str) -> str:
    """A module output that reaches a graph output only through QuantizeLinear -> DequantizeLinear (the int8
    model's quantized output) is read after that pair: the numbers the artifact hands out."""
    users = [n for n in graph.node if value in n.input]
    if len(users) == 1 and users[0].op_type == "QuantizeLinear":
        dq = [n for n in graph.node if users[0].output[0] in n.input]
        outputs = {o.name for o in graph.output}
        if len(dq) == 1 and dq[0].op_type == "DequantizeLinear" and dq[0].output[0] in outputs:
            return dq[0].output[0]
    return value
