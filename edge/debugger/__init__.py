"""Where the error comes from: a per-layer numeric debugger for ONNX Runtime, OpenVINO and ExecuTorch artifacts.

``edge.debug(path)`` reads intermediate tensors out of an artifact's runtime (a scratch copy of the model with
extra outputs; the artifact itself is never changed), maps them back to the PyTorch module names a user knows
(``blocks.3.mlp.fc1``) and compares each with the same module's output in eager PyTorch (forward hooks on the
reference rebuilt as ``edge verify`` rebuilds it), on the artifact's verification inputs or on ``inputs``.

Per module: SQNR (dB), cosine, max abs error, the SQNR lost at this module (``drop_db``: the previous row's SQNR
minus this one's, in network order: where error enters rather than where it is carried), the precision it ran in
and whether it is quantized. The runtime side of each backend lives in its own file (``onnxruntime.py``,
``openvino.py``, ``executorch.py``); each returns a :class:`Probe` built with :func:`module_outputs`.

Example:
    >>> table = edge.debug("out/q/openvino-int8", top=10)
    >>> table.rows[0].module, table.rows[0].sqnr_db
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import UsageError

SQNR_CAP_DB = 200.0   # an exact match (zero error) is reported as this many dB
MAX_CANDIDATES = 4    # values read per module (a module handing on several tensors: its output is one of them)


@dataclass
class DebugRow:
    """One module of the PyTorch model, as the artifact computes it.

    Attributes:
        index: position in network order (the order the modules finish in eager PyTorch).
        module: the PyTorch module name (``blocks.3.mlp.fc1``).
        kind: the module's class name (``Linear``, ``EdgeAttention``).
        sqnr_db: signal-to-quantization-noise ratio of the artifact's tensor against PyTorch's, in dB.
        cosine: cosine similarity of the two tensors; max_abs: largest absolute difference.
        drop_db: SQNR lost at this module (previous row's SQNR minus this row's, at least 0).
        precision: the precision the module ran in (``int8``, ``f32``, ``bf16``, ``fp16``, ``int8 (simulated)``).
        quantized: whether any of the module's ops takes quantized (dequantized int8) inputs or weights.
        point: the runtime's name of the tensor read (ONNX value, OpenVINO op output, ExecuTorch node).
    """

    index: int
    module: str
    kind: str
    sqnr_db: float
    cosine: float
    max_abs: float
    drop_db: float
    precision: str
    quantized: bool
    point: str


@dataclass
class DebugTable:
    """The per-layer table of one artifact; ``rows`` are in network order (or the worst first after ``top``)."""

    artifact: str
    target: str
    precision: str
    runtime: str
    granularity: str           # "per layer" or "per delegate partition" (what the runtime exposes)
    inputs: int                # how many input batches were compared
    input_kind: str
    rows: list[DebugRow]
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # module -> why it has no row

    def worst(self, n: int | None = None) -> list[DebugRow]:
        """Rows by the error they introduce (``drop_db``), then by SQNR, worst first."""
        rows = sorted(self.rows, key=lambda r: (-r.drop_db, r.sqnr_db, r.index))
        return rows if n is None else rows[:n]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = "edge.debug/1"
        return d


@dataclass
class GraphNode:
    """A runtime graph node reduced to what the mapping needs: the PyTorch modules it belongs to (``scopes``,
    outermost first) and the names of the values it reads and writes."""

    name: str
    scopes: tuple[str, ...]
    inputs: list[str]
    outputs: list[str]
    op: str = ""


@dataclass
class Probe:
    """What a runtime backend returns: per module its candidate tensors (name, one array per batch), the
    precision it ran in and whether it is quantized."""

    values: dict[str, list[tuple[str, list[np.ndarray]]]]
    points: dict[str, str]
    precision: dict[str, str]
    quantized: dict[str, bool]
    granularity: str = "per layer"
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def module_outputs(nodes: Sequence[GraphNode], modules: Sequence[str],
                   graph_outputs: Sequence[str] = ()) -> dict[str, tuple[list[str], list[GraphNode]]]:
    """For each module: the values it hands on (made inside its scope and read outside it, or graph outputs;
    in graph order, the last is the likeliest output) and the nodes of its scope. Modules with no node in the
    graph are left out; :func:`build_rows` picks the last candidate of the module output's size.

    Example:
        >>> module_outputs([GraphNode("n", ("fc",), ["x"], ["y"])], ["fc"], ["y"])
        {'fc': (['y'], [GraphNode(...)])}
    """
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            consumers.setdefault(v, []).append(i)
    outs = set(graph_outputs)
    by_module: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for s in n.scopes:
            by_module.setdefault(s, []).append(i)
    result = {}
    for m in modules:
        idx = by_module.get(m)
        if not idx:
            continue
        inside = set(idx)
        chosen = [v for i in idx for v in nodes[i].outputs
                  if v and (v in outs or any(c not in inside for c in consumers.get(v, ())))]
        if chosen:
            result[m] = (chosen[-MAX_CANDIDATES:], [nodes[i] for i in idx])
    return result


def scope_chain(path: str) -> tuple[str, ...]:
    """``"blocks.0.mlp.fc1"`` -> ``("blocks", "blocks.0", "blocks.0.mlp", "blocks.0.mlp.fc1")``."""
    parts = [p for p in path.split(".") if p]
    return tuple(".".join(parts[:i + 1]) for i in range(len(parts)))


def stack_scopes(meta: dict[str, Any]) -> tuple[str, ...]:
    """Module paths of an FX node's ``nn_module_stack`` (outermost first; the root module left out)."""
    stack = meta.get("nn_module_stack") or {}
    return tuple(v[0] for v in stack.values() if isinstance(v, (tuple, list)) and v and v[0])


# ------------------------------------------------------------------ reference side

@dataclass
class Reference:
    order: list[str]                     # modules in network order
    kinds: dict[str, str]
    values: dict[str, list[np.ndarray]]  # per module, one array per batch
    ambiguous: list[str]                 # modules called more than once per forward (no single output)


def reference_points(module: Any, batches: Sequence[tuple[np.ndarray, ...]]) -> Reference:
    """Every submodule's output in eager PyTorch (forward hooks), per batch."""
    import torch
    order: list[str] = []
    kinds: dict[str, str] = {}
    values: dict[str, list[np.ndarray]] = {}
    calls: dict[str, int] = {}
    ambiguous: set[str] = set()

    def hook_for(name: str):
        def hook(mod, args, out):
            t = out if isinstance(out, torch.Tensor) else next(
                (o for o in (out if isinstance(out, (tuple, list)) else ()) if isinstance(o, torch.Tensor)), None)
            if t is None or not t.is_floating_point():
                return
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                ambiguous.add(name)
                return
            if name not in kinds:
                order.append(name)
                kinds[name] = type(mod).__name__
            values.setdefault(name, []).append(t.detach().float().cpu().numpy().copy())
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in module.named_modules() if n]
    try:
        with torch.no_grad():
            for b in batches:
                calls.clear()
                module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in b))
    finally:
        for h in handles:
            h.remove()
    for name in ambiguous:
        values.pop(name, None)
    order = [n for n in order if n not in ambiguous]
    return Reference(order, kinds, values, sorted(ambiguous))


# ------------------------------------------------------------------ metrics

def metrics(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float, float] | None:
    """(SQNR dB, cosine, max abs) over all batches; None when the shapes cannot be matched."""
    r_parts, g_parts = [], []
    for r, g in zip(ref, got):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if r.size != g.size:
            return None
        r_parts.append(r.reshape(-1))
        g_parts.append(g.reshape(-1))
    if not r_parts:
        return None
    r, g = np.concatenate(r_parts), np.concatenate(g_parts)
    noise = float(np.sum((r - g) ** 2))
    signal = float(np.sum(r ** 2))
    if not np.isfinite(g).all():
        return -math.inf, float("nan"), math.inf
    if noise == 0.0:
        sqnr = SQNR_CAP_DB
    elif signal == 0.0:
        sqnr = -SQNR_CAP_DB
    else:
        sqnr = min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))
    cos = float(np.dot(r, g) / (np.linalg.norm(r) * np.linalg.norm(g) + 1e-30))
    return sqnr, cos, float(np.max(np.abs(r - g))) if r.size else 0.0


def build_rows(ref: Reference, probe: Probe) -> tuple[list[DebugRow], dict[str, str]]:
    rows, skipped = [], dict(probe.skipped)
    for name in ref.ambiguous:
        skipped[name] = "called more than once per forward pass: no single output to compare"
    prev: float | None = None
    for name in ref.order:
        if name not in probe.values:
            skipped.setdefault(name, "no tensor of this module survives in the runtime's graph "
                                     "(folded, fused or computed inside a larger op)")
            continue
        size = ref.values[name][0].size
        fits = [(point, got) for point, got in probe.values[name] if got and got[0].size == size]
        m = metrics(ref.values[name], fits[-1][1]) if fits else None
        if m is None:
            skipped[name] = (f"no tensor the runtime's graph hands on from this module has the size of its output "
                             f"{list(ref.values[name][0].shape)}")
            continue
        sqnr, cos, max_abs = m
        point = fits[-1][0]
        drop = 0.0 if prev is None else max(0.0, prev - sqnr)
        prev = sqnr
        rows.append(DebugRow(index=len(rows), module=name, kind=ref.kinds[name], sqnr_db=round(sqnr, 2),
                             cosine=cos, max_abs=max_abs, drop_db=round(drop, 2),
                             precision=probe.precision.get(name, "?"), quantized=bool(probe.quantized.get(name)),
                             point=point))
    return rows, skipped


# ------------------------------------------------------------------ entry points

PROBES = {"onnxruntime": "edge.debugger.onnxruntime", "openvino": "edge.debugger.openvino",
          "executorch": "edge.debugger.executorch"}


def probe_artifact(art: Any, program: Any, modules: Sequence[str],
                   batches: Sequence[tuple[np.ndarray, ...]]) -> Probe:
    """Run the artifact's runtime with the chosen intermediate tensors exposed (in a scratch copy)."""
    import importlib
    runtime = art.manifest.runtime
    if runtime not in PROBES:
        raise UsageError(f"edge debug reads intermediate tensors from {', '.join(PROBES)} artifacts; "
                         f"{art.path} runs on {runtime}")
    mod = importlib.import_module(PROBES[runtime])
    with tempfile.TemporaryDirectory(prefix="edge-debug-") as scratch:
        return mod.probe(art, program, list(modules), list(batches), Path(scratch))


def debug_artifact(art: Any, module: Any, program: Any, batches: Sequence[tuple[np.ndarray, ...]], *,
                   input_kind: str = "given") -> DebugTable:
    """The per-layer table of ``art`` against ``module`` (the eager module ``program`` was captured from)."""
    ref = reference_points(module, batches)
    probe = probe_artifact(art, program, ref.order, batches)
    rows, skipped = build_rows(ref, probe)
    m = art.manifest
    notes = list(probe.notes) + [deployed_note(art, module, batches)]
    return DebugTable(artifact=str(art.path), target=m.target, precision=m.precision, runtime=m.runtime,
                      granularity=probe.granularity, inputs=len(batches), input_kind=input_kind, rows=rows,
                      notes=notes, skipped=skipped)


def deployed_note(art: Any, module: Any, batches: Sequence[tuple[np.ndarray, ...]]) -> str:
    """The unmodified artifact's first output against PyTorch, run by its own session: the rows come from a
    scratch copy whose extra outputs can keep the runtime from fusing ops, so this is the figure to match."""
    from edge import parity as V
    from edge.runtimes import RUNTIMES
    session = RUNTIMES.get(art.manifest.runtime)(art)
    try:
        got = [session.run(*b) for b in batches]
    finally:
        session.close()
    m = metrics([r[0] for r in V.reference_outputs(module, list(batches))], [g[0] for g in got])
    if m is None:
        return "the artifact's own output could not be matched with PyTorch's"
    return (f"the artifact as deployed (its own session, no extra outputs), output 0 against PyTorch: "
            f"SQNR {m[0]:.1f} dB, cosine {m[1]:.6f}, max abs {m[2]:.2e}")


def load_inputs(path: str | Path, specs: Sequence[Any]) -> list[tuple[np.ndarray, ...]]:
    """``--inputs FILE``: a .npy (one input) or .npz (one array per input, in order), batched like the artifact."""
    from edge.calibration import _batch
    from edge.errors import CalibrationError
    path = Path(path)
    if not path.is_file() or path.suffix not in (".npy", ".npz"):
        raise UsageError(f"--inputs {path} must be an existing .npy or .npz file of input tensors")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise UsageError(f"cannot read --inputs {path}: {e}") from None
    arrays = [data] if isinstance(data, np.ndarray) else [data[k] for k in data.files]
    if len(arrays) != len(specs):
        raise UsageError(f"--inputs {path} holds {len(arrays)} array(s); the artifact takes {len(specs)} input(s)")
    try:
        per_input = [_batch(np.asarray(a), s, 64) for a, s in zip(arrays, specs)]
    except CalibrationError as e:
        raise UsageError(f"--inputs {path}: {e}") from None
    return [tuple(b[0] for b in group) for group in zip(*per_input)]


def debug(path: str | Path, inputs: str | Path | Sequence[np.ndarray] | None = None, top: int | None = None, *,
          model: Any = None, weights: str | Path | None = None, trust_weights: bool = False,
          trust_source: bool = False) -> DebugTable:
    """Per-layer numeric debugger: where an artifact's numbers depart from PyTorch.

    Args:
        path: an ONNX Runtime, OpenVINO or ExecuTorch artifact folder (``edge convert`` output).
        inputs: a ``.npy``/``.npz`` file (or a list of arrays, one per input); default: the artifact's own
            verification inputs (the held-out test split for zoo models with one, else example + random).
        top: keep only the ``top`` modules that introduce the most error (``drop_db``), worst first.
        model, weights, trust_weights, trust_source: how the reference is rebuilt, as for ``edge.verify`` (a
            ``file.py:factory`` or ``.pt2`` source named by the manifest is used only with ``trust_source``).

    Returns:
        A :class:`DebugTable` (``.rows``, ``.to_json()``; :func:`format_table` prints it).

    Raises:
        ArtifactError: ``path`` is not an artifact. UsageError: bad ``top``/``inputs`` or an unsupported runtime.

    Example:
        >>> t = edge.debug("out/q/onnx-int8", top=5)
        >>> [(r.module, round(r.sqnr_db, 1)) for r in t.rows]
    """
    from edge.verification import reference_for, verification_batches
    from edge.artifact import Artifact
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise UsageError(f"--top {top!r} must be a positive whole number of rows, e.g. --top 20")
    art = Artifact.open(path)
    if art.manifest.runtime not in PROBES:
        raise UsageError(f"edge debug reads intermediate tensors from {', '.join(PROBES)} artifacts; "
                         f"{path} runs on {art.manifest.runtime}")
    art, prep, reference = reference_for(art, model, weights=weights, trust_weights=trust_weights,
                                         trust_source=trust_source)
    module, program, _ = prep.program_for(art.manifest.target)
    if reference is not None:   # a lossy pass: the artifact was checked against the optimized module
        module = reference
    if inputs is None:
        batches, real = verification_batches(prep.spec, art.manifest)
        kind = "test-set" if real is not None else "example+random"
    elif isinstance(inputs, (str, Path)):
        batches, kind = load_inputs(inputs, art.manifest.inputs), f"file {inputs}"
    else:
        batches, kind = [tuple(np.asarray(a) for a in inputs)], "given"
    table = debug_artifact(art, module, program, batches, input_kind=kind)
    if top is not None:
        table.rows = table.worst(top)
    return table


def format_table(table: DebugTable) -> str:
    """The table as aligned text (what ``edge debug`` prints)."""
    head = f"{table.artifact}: {table.target}/{table.precision} on {table.runtime}, {table.granularity}, " \
           f"{table.inputs} input batch(es) ({table.input_kind})"
    lines = [head, f"{'#':>4}  {'module':<36} {'kind':<16} {'SQNR dB':>8} {'drop dB':>8} {'cosine':>9} "
                   f"{'max abs':>9}  {'precision':<16} q"]
    for r in table.rows:
        lines.append(f"{r.index:>4}  {r.module[-36:]:<36} {r.kind[:16]:<16} {r.sqnr_db:>8.1f} {r.drop_db:>8.1f} "
                     f"{r.cosine:>9.5f} {r.max_abs:>9.2e}  {r.precision[:16]:<16} {'*' if r.quantized else ''}")
    lines += [f"note: {n}" for n in table.notes]
    if table.skipped:
        lines.append(f"{len(table.skipped)} module(s) without a row (edge debug --json lists why)")
    return "\n".join(lines)
