"""OpenVINO side of ``edge debug``: a scratch copy of the IR with the chosen op outputs added as model outputs.

Op friendly names map back to PyTorch modules: from an ExportedProgram the converter's ops are named after the
FX node they came from (``linear_3/aten.linear.default/MatMul``; NNCF's FakeQuantize ops extend those names), and
the FX node's ``nn_module_stack`` names the module; from the TorchScript trace (recurrent models) the names carry
the module path themselves (``__module.blocks.0.fc1/aten::linear/MatMul``). The precision a module ran in is the
CPU plugin's runtime precision of its ops (``runtimePrecision`` of the compiled model's runtime graph).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.debugger import GraphNode, Probe, module_outputs, scope_chain, stack_scopes

INT8 = ("i8", "u8")


def fx_scopes(program: Any) -> dict[str, tuple[str, ...]]:
    """FX node name -> its module scopes, from the captured program the converter lowered."""
    if program is None:
        return {}
    return {n.name: stack_scopes(n.meta) for n in program.graph.nodes}


def _scopes(name: str, by_fx: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    head = name.split("/", 1)[0]
    if head.startswith("__module."):
        return scope_chain(head[len("__module."):])
    return by_fx.get(head, ())


def _value(output: Any) -> str:
    return f"{output.get_node().get_friendly_name()}:{output.get_index()}"


def graph_nodes(model: Any, program: Any) -> list[GraphNode]:
    by_fx = fx_scopes(program)
    return [GraphNode(op.get_friendly_name(), _scopes(op.get_friendly_name(), by_fx),
                      [_value(op.input_value(i)) for i in range(op.get_input_size())],
                      [_value(o) for o in op.outputs()], op.get_type_name())
            for op in model.get_ordered_ops()]


def runtime_precisions(compiled: Any) -> dict[str, str]:
    """Original op name -> the precision the CPU plugin ran it in (the fused layer's runtimePrecision)."""
    out: dict[str, str] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        keys = set(info.keys())
        if "runtimePrecision" not in keys or "originalLayersNames" not in keys:
            continue
        prec = info["runtimePrecision"].astype(str)
        for name in info["originalLayersNames"].astype(str).split(","):
            out[name] = prec
    return out


def probe(art: Any, program: Any, modules: list[str], batches: list, scratch: Path) -> Probe:
    import openvino as ov
    from edge.runtimes.openvino import OpenVinoSession
    hint = OpenVinoSession.numeric_defaults(art.manifest).get("precision_hint", "f32")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": hint}
    model = core.read_model(str(art.main_path))
    from_program = "ExportedProgram" in str((art.manifest.details.get("source") or {}).get("converted_from", ""))
    nodes = graph_nodes(model, program if from_program else None)
    results = [_value(r.input_value(0)) for r in model.get_results()]
    outs = module_outputs([n for n in nodes if n.op not in ("Result",)], modules, results)
    precisions = runtime_precisions(core.compile_model(model, "CPU", config))
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    wanted = []
    for value in sorted({v for vs, _ in outs.values() for v in vs}):
        name, port = value.rsplit(":", 1)
        wanted.append(ops[name].output(int(port)))
    if wanted:
        model.add_outputs(wanted)
    index = {_value(o.get_node().input_value(0)): i for i, o in enumerate(model.outputs)}
    compiled = core.compile_model(model, "CPU", config)
    req = compiled.create_infer_request()
    runs = []
    for b in batches:
        req.infer([np.ascontiguousarray(a) for a in b])
        runs.append({v: np.array(req.get_output_tensor(i).data, np.float32) for v, i in index.items()})
    values, points, precision, quantized = {}, {}, {}, {}
    for m, (vs, scope_nodes) in outs.items():
        values[m] = [(v.rsplit(":", 1)[0], [r[v] for r in runs]) for v in vs if v in index]
        points[m] = vs[-1].rsplit(":", 1)[0]
        ran = {precisions[n.name] for n in scope_nodes if n.name in precisions}
        fq = any(n.op == "FakeQuantize" for n in scope_nodes) or any(
            i.split(":")[0].split("/")[-1].startswith("fq_") for n in scope_nodes for i in n.inputs)
        q = bool(ran & set(INT8)) or fq
        quantized[m] = q
        precision[m] = "int8" if q else (",".join(sorted(ran)) or hint)
    notes = [] if from_program else ["converted from the module's TorchScript trace: names come from its scopes"]
    notes.append(f"OpenVINO CPU, INFERENCE_PRECISION_HINT={hint}; the scratch copy's extra outputs can stop the "
                 f"plugin from fusing an op with the next one")
    return Probe(values, points, precision, quantized, notes=notes)
