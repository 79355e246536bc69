"""Lowering to ExecuTorch (``to_edge_transform_and_lower`` + XNNPACK) and the delegation summary."""
from __future__ import annotations

from typing import Any

from edge.converters.executorch.partition import (_delegable_forms_pass, _scan_constants_pass, _scan_partitioner,
                                                  _xnnpack_partitioner, partition_rejections, scan_bodies,
                                                  softmax_reads_nchw, xnnpack_op_names)
from edge.converters.executorch.speedups import _core_convolutions, _op_name, lowering_speedups
from edge.errors import ConversionError


def lower(program, *, etrecord: bool = True, details: dict[str, Any] | None = None,
          refused: dict[str, str] | None = None):
    """``to_edge_transform_and_lower`` with the XNNPACK partitioner (every precision type enabled).

    ``refused`` (if given) receives, per node name, the reason an XNNPACK config gave for not taking it
    (for :func:`delegation_summary`).

    A program with ``torch.scan`` loops (the ``gru``/``lstm`` passes' ExecuTorch form) also gets its
    loop bodies delegated, with their weights as constants of the body. Like ExecuTorch's lowering itself,
    this changes ``program`` (its convolutions become ``aten.convolution``: the same numbers).
    """
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    passes = [_delegable_forms_pass()]
    loops = bool(scan_bodies(program.graph_module))
    if loops:
        passes.append(_scan_constants_pass(program))
        partitioner = _scan_partitioner()
    else:
        partitioner = _xnnpack_partitioner()
    try:
        _core_convolutions(program)
        with lowering_speedups(details) as (skipped, edge_skipped), softmax_reads_nchw() as fixed, \
                partition_rejections() as reasons:
            # No edge-dialect IR validation: it re-walks the whole program several times (16 s of VisionGRU-Ti's
            # 95 s), and every program is run on this host and checked against PyTorch after lowering anyway.
            manager = to_edge_transform_and_lower(program, transform_passes=passes, partitioner=[partitioner],
                                                  compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                                  generate_etrecord=etrecord)
        if refused is not None:
            refused.update(reasons)
        if loops:
            _drop_inlined_parameters(manager.exported_program(), details)
        if details is not None and not fixed:
            details["softmax_layout_fix"] = "unavailable in this ExecuTorch (softmax_reads_nchw)"
        if details is not None:   # the XNNPACK preprocess and ATen-to-edge passes that had nothing to rewrite
            details["xnnpack_passes_skipped"] = sorted(set(skipped))
            details["edge_passes_skipped"] = sorted(set(edge_skipped))
        return manager
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(f"ExecuTorch lowering (to_edge_transform_and_lower + XNNPACK) failed: "
                              f"{type(e).__name__}: {first}") from e


def _drop_inlined_parameters(edge_program, details: dict[str, Any] | None) -> None:
    """Remove the parameters nothing reads any more once the scan bodies hold their own copies (in place).

    ExecuTorch drops unused parameters before the transform passes run, so a weight read only by a loop body
    (the recurrent matmul of an int8 program, whose top-level steps read the int8 copy; or of a GRU whose
    first step has no hidden matmul) stayed in the program as an unused fp32 constant: 96 KB of gru_digits'
    int8 program.
    """
    from executorch.exir.passes import remove_unused_parameters_pass
    before = dict(edge_program.state_dict)
    remove_unused_parameters_pass(edge_program)
    gone = [k for k in before if k not in edge_program.state_dict]
    if gone and details is not None:
        details["unused_parameters_dropped"] = {"count": len(gone),
                                                "bytes": sum(before[k].nbytes for k in gone)}


def delegation_summary(graph_module, passes_on: bool | None = None,
                       refused: dict[str, str] | None = None) -> dict[str, Any]:
    """Delegate calls, delegated/portable node counts and the ops left on portable kernels.

    ``portable_by_module`` names, per module of the source model, the ops that kept portable kernels there
    (from each node's ``nn_module_stack``); ``portable_reasons`` says per op why XNNPACK did not take it (no
    partitioner config for the op at all, or the reason its config gave: ``refused`` from :func:`lower`).
    ``passes_on`` says whether edge's optimize passes ran (None: unknown); the warning suggests turning them on
    only when they were off.

    ``torch.scan`` loops are listed under ``loops``: per loop its iterations and what one iteration runs
    (delegate calls, portable ops). A program counts as fully delegated when the loop ops
    themselves are all that runs outside XNNPACK and each loop body is one delegate call.
    """
    from executorch.devtools.backend_debug import get_delegation_info
    info = get_delegation_info(graph_module)
    df = info.get_operator_delegation_dataframe()
    portable: dict[str, int] = {}
    for row in df.itertuples(index=False):
        name, n = str(row.op_type), int(row.occurrences_in_non_delegated_graphs)
        if n and name not in ("Total", "getitem"):   # getitem only unpacks delegate outputs
            portable[name] = n
    loops = []
    for node, body in scan_bodies(graph_module):
        calls = [n for n in body.graph.nodes if "executorch_call_delegate" in str(n.target)]
        ops = [str(getattr(n.target, "__name__", n.target)) for n in body.graph.nodes
               if n.op == "call_function" and n not in calls and "getitem" not in str(n.target)]
        loops.append({"iterations": int(node.args[2][0].meta["val"].shape[0]),
                      "delegate_calls_per_iteration": len(calls), "portable_ops_per_iteration": sorted(ops)})
        for op in ops:   # get_delegation_info only looks at the top-level graph
            portable[op] = portable.get(op, 0) + 1
    calls = int(info.num_delegated_subgraphs)
    out = {"delegate_calls": calls, "delegated_nodes": int(info.num_delegated_nodes),
           "portable_nodes": int(sum(portable.values())),
           "portable_ops": dict(sorted(portable.items(), key=lambda kv: -kv[1])),
           "fully_delegated": calls == 1 and not portable}
    if loops:   # the loop op itself is ExecuTorch's control flow; everything else must be delegated
        out["loops"] = loops
        out["delegate_calls_per_run"] = calls + sum(lp["iterations"] * lp["delegate_calls_per_iteration"]
                                                    for lp in loops)
        out["fully_delegated"] = (set(portable) == {"scan"} and portable["scan"] == len(loops)
                                  and all(lp["delegate_calls_per_iteration"] == 1 for lp in loops))
    by_module = portable_by_module(graph_module)
    if by_module:
        out["portable_by_module"] = by_module
    reasons = portable_reasons(graph_module, refused or {})
    if reasons:
        out["portable_reasons"] = reasons
    if not out["fully_delegated"]:
        ops = ", ".join(f"{k} x{v}" for k, v in list(out["portable_ops"].items())[:8] if k != "scan") or "none"
        where = "; ".join(f"{m}: {', '.join(o)}" for m, o in list(by_module.items())[:4])
        why = "; ".join(f"{op}: {r}" for op, r in list(reasons.items())[:6])
        advice = ("run with the optimize passes on (the default) or rewrite these ops" if passes_on is False else
                  "XNNPACK has no kernel for these ops in these forms" + (f" ({why})" if why else "") +
                  "; rewrite them in the module" + (f" ({where})" if where else ""))
        out["warning"] = (f"not fully delegated: {out['delegate_calls']} XNNPACK delegate call(s); ops on portable "
                          f"kernels: {ops}. {advice[0].upper()}{advice[1:]}")
    return out


def _portable_nodes(graph_module) -> list:
    """The top-level nodes that run on portable kernels (not delegate calls, their outputs, or loops)."""
    out = []
    for node in graph_module.graph.nodes:
        name = _op_name(node.target) if node.op == "call_function" else ""
        if name and "executorch_call_delegate" not in name and "getitem" not in name and name != "scan":
            out.append(node)
    return out


def _short(node) -> str:
    return _op_name(node.target).replace("aten.", "").replace(".default", "")


def portable_reasons(graph_module, refused: dict[str, str]) -> dict[str, str]:
    """Per op left on portable kernels, why XNNPACK did not take it: the reason its config gave for the first such
    node (``refused``: node name -> reason), or that ExecuTorch's XNNPACK partitioner has no config for the op."""
    try:
        known = xnnpack_op_names()
    except ImportError:   # an ExecuTorch without this layout: no reasons rather than a wrong one
        return {}
    out: dict[str, str] = {}
    for node in _portable_nodes(graph_module):
        op = _short(node)
        if op in out:
            continue
        target = op if "." in op else op + ".default"
        if node.name in refused:
            out[op] = f"XNNPACK's {target} refused it: {refused[node.name]}"
        elif target not in known:
            out[op] = f"ExecuTorch's XNNPACK partitioner has no {target} (XNNPACK cannot run this op here)"
        else:
            out[op] = f"XNNPACK has {target}, but it was left outside the delegated graph"
    return out


def portable_by_module(graph_module, limit: int = 12) -> dict[str, list[str]]:
    """Per source module (qualified name and class), the ops of the top-level graph left on portable kernels."""
    out: dict[str, dict[str, int]] = {}
    for node in _portable_nodes(graph_module):
        stack = node.meta.get("nn_module_stack") or {}
        path, cls = list(stack.values())[-1] if stack else ("", "")
        key = f"{path or '(top level)'} ({str(cls).rsplit('.', 1)[-1]})" if cls else (path or "(top level)")
        ops = out.setdefault(key, {})
        short = _short(node)
        ops[short] = ops.get(short, 0) + 1
    ranked = sorted(out.items(), key=lambda kv: -sum(kv[1].values()))[:limit]
    return {k: [f"{o} x{n}" for o, n in v.items()] for k, v in ranked}


