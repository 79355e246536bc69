"""ONNX Runtime fusions of an exported graph: attention into one contrib op, and the erf GELU into Gelu.

The dynamo exporter writes attention as the decomposition of ``scaled_dot_product_attention`` (heads split by
Reshape/Transpose, Q and K scaled by sqrt(scale) each, MatMul, Softmax, MatMul, heads merged), and a hand-written
attention as the same chain with its own scaling. ONNX Runtime's own transformer optimizer recognises neither (its
attention fusion expects the BERT export's pattern), so this module matches attention by what it computes:

- start at every ``Softmax`` over the last axis whose probabilities feed one ``MatMul`` with V;
- walk back through scalar ``Mul``/``Div`` and an optional additive bias to ``MatMul(Q, K^T)`` (or an ``Einsum``
  computing it);
- follow Q, K^T, V and the output through their Reshape/Transpose chains, and check that each chain is the
  head split (or merge) of a ``[B, S, H]`` tensor by running it on an index tensor (static shapes only).

Where Q, K and V are ``MatMul(x, W) + b`` of one ``x`` with constant weights, the fused op is ``Attention`` (one
packed QKV GEMM: one 3H-wide matmul runs faster than three H-wide ones on small hidden sizes); otherwise it is
``MultiHeadAttention`` on the three projections. Then ONNX Runtime's optimizer (offline, ``opt_level=0``: no
hardware-specific rewrite) fuses the erf GELU into ``Gelu``; its tanh approximation stays off, since it changes
the numbers, and so does ``BiasGelu`` (GELU with its bias): onnxruntime-web's WebGPU backend lacks it and would
run it on the CPU, splitting the phone app's graph. ``SkipLayerNormalization`` stays off too: ONNX Runtime 1.32's CPU
kernel took 7.4 ms where the Add and LayerNormalization it replaces took 2.0 (ViT-Ti, 24 of them, one thread).

The result only runs on ONNX Runtime (``com.microsoft`` ops), which is the ONNX target's runtime; the converter
checks it against the unfused graph and keeps the unfused one, with the reason, where they disagree.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MS = "com.microsoft"


@dataclass
class _Graph:
    """Lookup tables over an ONNX graph: producers, consumers, constants and static shapes."""
    model: Any
    producer: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, model) -> "_Graph":
        import onnx
        from onnx import numpy_helper
        g = cls(model)
        for n in model.graph.node:
            for o in n.output:
                g.producer[o] = n
            for i in n.input:
                g.consumers[i].append(n)
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                g.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        for init in model.graph.initializer:
            g.consts[init.name] = numpy_helper.to_array(init)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:   # ops shape inference does not know (contrib ops): match on the shapes given
            inferred = model
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                g.shapes[vi.name] = tuple(d.dim_value for d in dims)
        for name, value in g.consts.items():
            g.shapes[name] = value.shape
        g._fold_small_constants()
        return g

    def _fold_small_constants(self, limit: int = 64) -> None:
        """Values computed from constants and static shapes (the TorchScript exporter computes an attention's
        scale from ``Shape``, ``Sqrt`` and ``Div``): evaluated here with ONNX's reference ops, for tensors of at
        most ``limit`` elements."""
        from onnx.reference import ReferenceEvaluator
        for n in self.model.graph.node:
            if n.op_type == "Shape" and n.input[0] in self.shapes and not n.attribute:
                self.consts[n.output[0]] = np.array(self.shapes[n.input[0]], np.int64)
                continue
            if n.domain not in ("", "ai.onnx") or not n.input or n.op_type in ("Constant", "Shape") \
                    or any(o in self.consts for o in n.output) \
                    or not all(i in self.consts and self.consts[i].size <= limit for i in n.input if i):
                continue
            try:
                values = ReferenceEvaluator(n).run(None, {i: self.consts[i] for i in n.input if i})
            except Exception:   # an op the reference runtime lacks: leave it unknown
                continue
            for o, v in zip(n.output, values):
                self.consts[o] = np.asarray(v)
                self.shapes[o] = np.asarray(v).shape

    def scalar(self, name: str) -> float | None:
        v = self.consts.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None


def _through_scale(g: _Graph, name: str) -> tuple[str, float]:
    """Walk back from ``name`` through Mul/Div by scalar constants: (the tensor before them, their product)."""
    scale = 1.0
    while (n := g.producer.get(name)) is not None and n.op_type in ("Mul", "Div"):
        a, b = n.input
        if n.op_type == "Mul" and g.scalar(a) is not None:
            a, b = b, a
        s = g.scalar(b)
        if s is None or s == 0.0:
            break
        scale *= s if n.op_type == "Mul" else 1.0 / s
        name = a
    return name, scale


LAYOUT_OPS = ("Reshape", "Transpose", "Slice", "Gather", "Squeeze", "Unsqueeze", "Split")


def _apply_layout(chain: list, g: _Graph, x: np.ndarray) -> np.ndarray | None:
    """Run a chain of (layout node, its output on the path) on ``x``; None where an operand is not a constant."""
    for n, out in chain:
        attrs = {a.name: a for a in n.attribute}
        operands = [g.consts.get(i) if i else None for i in n.input[1:]]
        if any(v is None for i, v in zip(n.input[1:], operands) if i):
            return None
        if n.op_type == "Transpose":
            x = np.transpose(x, list(attrs["perm"].ints) if "perm" in attrs else None)
        elif n.op_type == "Reshape":
            x = x.reshape([x.shape[i] if v == 0 else int(v) for i, v in enumerate(operands[0].tolist())])
        elif n.op_type == "Gather":
            x = np.take(x, operands[0], axis=attrs["axis"].i if "axis" in attrs else 0)
        elif n.op_type in ("Squeeze", "Unsqueeze"):
            if not operands:
                return None
            axes = [int(v) for v in operands[0].reshape(-1)]
            x = np.squeeze(x, tuple(axes)) if n.op_type == "Squeeze" else np.expand_dims(x, tuple(axes))
        elif n.op_type == "Slice":
            starts, ends = operands[0], operands[1]
            axes = operands[2] if len(operands) > 2 and operands[2] is not None else range(len(starts))
            steps = operands[3] if len(operands) > 3 and operands[3] is not None else [1] * len(starts)
            index = [slice(None)] * x.ndim
            for st, en, ax, sp in zip(starts, ends, axes, steps):
                index[int(ax)] = slice(int(st), int(en), int(sp))
            x = x[tuple(index)]
        else:   # Split: sizes from the second input, else equal parts
            axis = attrs["axis"].i if "axis" in attrs else 0
            parts = list(n.output)
            sizes = operands[0].tolist() if operands else [x.shape[axis] // len(parts)] * len(parts)
            x = np.split(x, np.cumsum(sizes)[:-1], axis=axis)[parts.index(out)]
    return x


def _layout_chain(g: _Graph, name: str, limit: int = 10) -> list:
    """The layout nodes (with the output on the path) that lead to ``name``, nearest last."""
    chain: list = []
    while len(chain) < limit and (n := g.producer.get(name)) is not None and n.op_type in LAYOUT_OPS:
        chain.insert(0, (n, name))
        name = n.input[0]
    return chain


@dataclass
class _Source:
    """Q, K or V as the columns ``columns`` (in head-major order) of a ``[B, S, H]`` tensor, or of a ``[B*S, H]``
    one (``rows`` is then (B, S)): all of it, or its share of a packed QKV projection split or gathered apart."""
    name: str
    columns: np.ndarray
    rows: tuple[int, int] | None = None

    def is_whole(self, g: _Graph) -> bool:
        return self.rows is None and np.array_equal(self.columns, np.arange(g.shapes[self.name][-1]))


def _heads_of(g: _Graph, name: str, perm: tuple[int, ...]) -> _Source | None:
    """The ``[B, S, H]`` (or ``[B*S, H]``) tensor and the columns of it whose heads, laid out
    ``[B, S, N, D].transpose(perm)``, are ``name``; None if ``name`` is not such a layout.

    The layout chain is run on an index tensor: every element must come from the same row (batch, position) and
    the same column map at every row. The furthest tensor up the chain is tried first (a chain may pass through
    other 3-D layouts, as the exporter's K transpose does)."""
    chain = _layout_chain(g, name)
    target = g.shapes.get(name)
    if target is None or len(target) != 4:
        return None
    inverse = tuple(int(i) for i in np.argsort(perm))
    b, s = target[inverse[0]], target[inverse[1]]
    for start in range(len(chain)):
        src = chain[start][0].input[0]
        shape = g.shapes.get(src)
        if shape is None or len(shape) not in (2, 3) or int(np.prod(shape[:-1])) != b * s:
            continue
        index = np.arange(int(np.prod(shape))).reshape(shape)
        got = _apply_layout(chain[start:], g, index)
        if got is None or got.shape != target:
            continue
        rows, cols = np.divmod(got.transpose(inverse).reshape(b, s, -1), shape[-1])
        if np.array_equal(rows, np.broadcast_to(np.arange(b * s).reshape(b, s, 1), rows.shape)) \
                and (cols == cols[:1, :1]).all():
            return _Source(src, cols[0, 0], None if len(shape) == 3 else (b, s))
    return None


def _merged_output(g: _Graph, name: str, limit: int = 4) -> str | None:
    """Follow the attention output ``name`` ([B, N, S, D]) forward through single-consumer Transpose/Reshape
    nodes to the tensor that is its head merge ``[B, S, N*D]``."""
    shape = g.shapes.get(name)
    if shape is None or len(shape) != 4:
        return None
    index = np.arange(int(np.prod(shape))).reshape(shape)
    want = index.transpose(0, 2, 1, 3).reshape(shape[0], shape[2], shape[1] * shape[3])
    chain: list = []
    current = name
    while len(chain) < limit and (n := g.only_consumer(current)) is not None and n.op_type in ("Reshape", "Transpose"):
        chain.append((n, n.output[0]))
        current = n.output[0]
        got = _apply_layout(chain, g, index)
        if got is not None and got.shape == want.shape and np.array_equal(got, want):
            return current
    return None


def _projection(g: _Graph, src: _Source) -> tuple[str, np.ndarray, np.ndarray] | None:
    """``src``'s columns of ``MatMul(x, W) [+ b]`` with constant 2-D W and 1-D b: (x, W's columns, b's)."""
    n = g.producer.get(src.name)
    bias = None
    if n is not None and n.op_type == "Add":
        a, b = n.input
        if b not in g.consts:
            a, b = b, a
        bias = g.consts.get(b)
        n = g.producer.get(a)
        if bias is None or bias.ndim != 1:
            return None
    if n is None or n.op_type != "MatMul" or n.input[1] not in g.consts:
        return None
    w = g.consts[n.input[1]]
    if w.ndim != 2:
        return None
    b = bias if bias is not None else np.zeros(w.shape[1], w.dtype)
    return n.input[0], w[:, src.columns], b[src.columns]


@dataclass
class _Match:
    """One attention found at a Softmax: where Q, K and V come from, its bias and scale, and the merged output."""
    q: _Source
    k: _Source
    v: _Source
    bias: str | None
    scale: float
    heads: int
    output: str


def _product(node) -> str | None:
    """How ``node`` multiplies two 4-D operands: "ab" (``a @ b``), "abT" (``a @ b^T``, an einsum such as
    ``bhlk,bhtk->bhlt``), or None if it is neither."""
    if node is None:
        return None
    if node.op_type == "MatMul":
        return "ab"
    if node.op_type != "Einsum":
        return None
    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "").replace(" ", "")
    lhs, _, out = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != 2 or not all(len(t) == 4 for t in (*terms, out)) or len(set(terms[0] + terms[1])) != 5:
        return None
    (b, h, i, k), (b2, h2, x, y), = terms
    if (b2, h2) != (b, h):
        return None
    if (x, y) == (k, out[3]) and out == b + h + i + y:
        return "ab"
    if y == k and out == b + h + i + x:
        return "abT"
    return None


def _match(g: _Graph, sm) -> _Match | None:
    axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
    scores_shape = g.shapes.get(sm.input[0])
    if scores_shape is None or len(scores_shape) != 4 or axis not in (-1, 3):
        return None
    pv = g.only_consumer(sm.output[0])
    if _product(pv) != "ab" or pv.input[0] != sm.output[0]:
        return None
    name, scale = _through_scale(g, sm.input[0])
    bias = None
    add = g.producer.get(name)
    if add is not None and add.op_type == "Add":
        # an additive bias (relative position bias, a float mask) of shape [1|B, 1|N, S, T]
        for i, other in ((0, 1), (1, 0)):
            src = g.producer.get(add.input[i])
            bshape = g.shapes.get(add.input[other])
            full = (1,) * (4 - len(bshape)) + tuple(bshape) if bshape is not None and len(bshape) <= 4 else None
            if src is not None and src.op_type in ("MatMul", "Einsum", "Mul", "Div") and full is not None \
                    and full[2:] == scores_shape[2:] and full[1] in (1, scores_shape[1]) \
                    and full[0] in (1, scores_shape[0]):
                if scale != 1.0:   # softmax(s * (QK + b)) is not softmax(s * QK + b): leave it
                    return None
                bias, name = add.input[other], add.input[i]
                name, scale = _through_scale(g, name)
                break
        else:
            return None
    qk = g.producer.get(name)
    product = _product(qk)
    if product is None:
        return None
    q4, qs = _through_scale(g, qk.input[0])
    kt, ks = _through_scale(g, qk.input[1])
    heads = scores_shape[1]
    q = _heads_of(g, q4, (0, 2, 1, 3))
    k = _heads_of(g, kt, (0, 2, 3, 1) if product == "ab" else (0, 2, 1, 3))
    v = _heads_of(g, pv.input[1], (0, 2, 1, 3))
    if q is None or k is None or v is None or len(q.columns) != len(k.columns):
        return None
    out = _merged_output(g, pv.output[0])
    if out is None:
        return None
    return _Match(q, k, v, bias, scale * qs * ks, heads, out)


def _columns(model, g: _Graph, src: _Source, name: str) -> str:
    """``src`` as a ``[B, S, width]`` tensor of its own: the source itself, or its rows reshaped and its columns
    gathered by nodes added to ``model`` after the source's producer."""
    if src.is_whole(g):
        return src.name
    from onnx import helper, numpy_helper
    nodes, current = [], src.name
    if src.rows is not None:
        shape = numpy_helper.from_array(np.array([*src.rows, -1], np.int64), f"{name}.rows_shape")
        model.graph.initializer.append(shape)
        nodes.append(helper.make_node("Reshape", [current, shape.name], [f"{name}.rows"], name=f"{name}.rows"))
        current = nodes[-1].output[0]
    if not np.array_equal(src.columns, np.arange(g.shapes[src.name][-1])):
        index = numpy_helper.from_array(src.columns.astype(np.int64), f"{name}.columns_index")
        model.graph.initializer.append(index)
        nodes.append(helper.make_node("Gather", [current, index.name], [f"{name}.columns"], name=name, axis=2))
        current = nodes[-1].output[0]
    producer = g.producer.get(src.name)   # none: a graph input
    at = list(model.graph.node).index(producer) + 1 if producer is not None else 0
    for offset, node in enumerate(nodes):
        model.graph.node.insert(at + offset, node)
    return current


def _bias_4d(model, g: _Graph, name: str) -> str:
    """An additive attention bias as the ``[1|B, 1|N, S, T]`` tensor ONNX Runtime's ops take."""
    rank = len(g.shapes[name])
    if rank == 4:
        return name
    from onnx import helper, numpy_helper
    axes = numpy_helper.from_array(np.arange(4 - rank, dtype=np.int64), f"{name}.unsqueeze_axes")
    model.graph.initializer.append(axes)
    node = helper.make_node("Unsqueeze", [name, axes.name], [f"{name}.as_4d"], name=f"{name}.as_4d")
    producer = g.producer.get(name)
    model.graph.node.insert(list(model.graph.node).index(producer) + 1 if producer is not None else 0, node)
    return node.output[0]


def _drop_dead(graph) -> int:
    """Remove nodes whose outputs nothing reads (graph outputs count as read); returns how many."""
    removed = 0
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return removed


def fuse_attention(model) -> dict[str, int]:
    """Replace every matched attention with ``Attention`` (packed QKV) or ``MultiHeadAttention``, in place.

    Returns the count of each fused op. Nodes the fused op makes unused are removed; an attention whose tensors
    have no static shape is not matched and stays as it is.

    Example:
        >>> counts = fuse_attention(onnx.load("model.onnx"))   # {"Attention": 12}
    """
    import onnx
    from onnx import helper, numpy_helper
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not softmaxes:   # no attention: no shape inference over a graph that may have thousands of nodes
        return {}
    g = _Graph.of(model)
    counts: dict[str, int] = defaultdict(int)
    for sm in softmaxes:
        m = _match(g, sm)
        if m is None:
            continue
        attrs = {"num_heads": m.heads, "scale": float(m.scale)}
        meta = list(sm.metadata_props)
        projections = [_projection(g, t) for t in (m.q, m.k, m.v)]
        name = f"{sm.name or m.output}_fused_attention"
        if all(p is not None for p in projections) and len({p[0] for p in projections}) == 1 \
                and len(g.shapes.get(projections[0][0], ())) == 3 and len({p[1].dtype for p in projections}) == 1:
            w = np.concatenate([p[1] for p in projections], axis=1)
            b = np.concatenate([p[2] for p in projections]).astype(w.dtype)
            sizes = [p[1].shape[1] for p in projections]
            model.graph.initializer.extend([numpy_helper.from_array(w, f"{name}.qkv_weight"),
                                            numpy_helper.from_array(b, f"{name}.qkv_bias")])
            if sizes[2] != sizes[0]:
                attrs["qkv_hidden_sizes"] = sizes
            bias = _bias_4d(model, g, m.bias) if m.bias else ""
            inputs = [projections[0][0], f"{name}.qkv_weight", f"{name}.qkv_bias", "", "", bias]
            node = helper.make_node("Attention", inputs, [m.output], name=name, domain=MS, **attrs)
        else:
            inputs = [_columns(model, g, t, f"{name}.{part}") for part, t in zip("qkv", (m.q, m.k, m.v))]
            bias = _bias_4d(model, g, m.bias) if m.bias else ""
            node = helper.make_node("MultiHeadAttention", [*inputs, "", "", bias], [m.output], name=name,
                                    domain=MS, **attrs)
        while node.input and node.input[-1] == "":
            node.input.pop()
        node.metadata_props.extend(meta)
        producer = g.producer[m.output]
        model.graph.node.insert(list(model.graph.node).index(producer), node)
        model.graph.node.remove(producer)
        g.producer[m.output] = node
        counts[node.op_type] += 1
    if counts:
        _drop_dead(model.graph)
        if not any(o.domain == MS for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(MS, 1))
    return dict(counts)


def fuse_for_onnxruntime(model) -> tuple[Any, dict[str, Any]]:
    """Attention and GELU fusions for ONNX Runtime; returns (fused model, record).

    Example:
        >>> fused, record = fuse_for_onnxruntime(onnx.load("model.onnx"))
        >>> record["ops"]   # {"Attention": 12, "Gelu": 12}
    """
    import contextlib
    import io
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel
    ops = fuse_attention(model)
    options = FusionOptions("vit")
    # attention is ours (above); the embedding fusion and tanh-GELU would change what runs or its numbers
    options.enable_attention = options.enable_embed_layer_norm = options.enable_gelu_approximation = False
    options.enable_rotary_embeddings = options.enable_qordered_matmul = False
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = options.enable_bias_gelu = False
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    fused = BertOnnxModel(model, 0, 0)
    with contextlib.redirect_stdout(io.StringIO()):   # its symbolic shape inference prints its failures
        fused.optimize(options)
    fused.topological_sort()
    for op, n in fused.get_fused_operator_statistics().items():
        if n and op in ("BiasGelu", "Gelu"):
            ops[op] = ops.get(op, 0) + n
    return fused.model, {"ops": {k: v for k, v in ops.items() if v}}
