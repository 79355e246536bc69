"""Tensor-rank lowering: a captured program's rank > 5 tensors rewritten with ops on rank <= 5 tensors.

Core ML takes tensors of rank <= 5 only. Models reach rank 6 and more through data movement: Hiera's
unroll/reroll (``view`` to ``[B, 8, 2, 8, 2, C]``, ``permute``, ``view`` back), its q/k/v split (``view`` to 6-D,
``permute``, ``unbind``), its query pooling (``view`` to 6-D, ``max`` over one dim). Each such value has a
rank <= 5 *representative*: a tensor with the same elements in the same row-major order (the value reshaped),
and every op of the chain is rewritten on representatives:

- a ``view`` (``_unsafe_view``, ``reshape``, ``squeeze``, ``unsqueeze``, ``flatten``) or an identity (``clone``,
  ``alias``) keeps the row-major order: the representative passes through, a reshape where rank <= 5 is needed;
- ``permute``: size-1 dims are dropped and dims that stay adjacent and in order under the permutation are
  merged; where more than 5 dims are left, the permutation is a sequence of moves of one dim past a block of
  others, each a rank-4 ``permute`` of merged dims;
- ``select`` / ``slice`` / ``unbind`` / ``max.dim`` / ``min.dim`` / ``argmax`` / ``argmin`` over one dim ``d``: the
  same op over dim 1 of the ``[prod(dims before d), size of d, prod(dims after d)]`` reshape; ``amax`` / ``amin``
  over runs of merged dims; ``cat`` over one dim likewise;
- elementwise ops (``torch.Tag.pointwise``, ``_to_copy``), broadcasting ones included, and ``expand``: size-1 dims
  of the output dropped, and neighbouring dims merged where each operand is broadcast along both or neither.

These ops move data, pick among values or compute each element alone (no reduction changes order), so the
rewritten program computes bit-identical numbers. A connected group of rank > 5 tensors is rewritten only when
every op that makes or reads one is among the above and its merged dims number 5 at most; otherwise it is left as
it was (and the backend gives its own reason). A program without rank > 5 tensors is not touched. One dynamic dim
per tensor (a dynamic batch) is the size each reshape infers (``-1``).

Example:
    >>> lowered = lower_rank(program)    # in place; the number of rank > 5 tensors rewritten away
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch.utils._pytree import tree_map

aten = torch.ops.aten
MAX_RANK = 5
DYNAMIC = -1   # a dynamic size, in a shape: the one a reshape infers

# ops whose output has the input's elements in the same row-major order
_VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.view_copy.default,
          aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
          aten.flatten.using_ints, aten.clone.default, aten.alias.default, aten.alias_copy.default,
          aten.detach.default, aten.contiguous.default, aten.lift_fresh_copy.default}
# ops over one dim (argument 1): rewritten over dim 1 of a 3-D [before, dim, after] reshape
_ONE_DIM = {aten.select.int, aten.slice.Tensor, aten.unbind.int, aten.max.dim, aten.min.dim, aten.argmax.default,
            aten.argmin.default}
_TUPLES = {aten.unbind.int, aten.max.dim, aten.min.dim}   # read through getitem
_REDUCE_MANY = {aten.amax.default, aten.amin.default}
_ELEMENTWISE_EXTRA = {aten._to_copy.default}


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    """The shape of a tensor-valued node, its one dynamic dim (a dynamic batch) as ``DYNAMIC``; None for other
    nodes and for shapes with more than one dynamic dim (a reshape can infer one size only)."""
    val = _val(node)
    if not isinstance(val, torch.Tensor):
        return None
    shape = tuple(d if isinstance(d, int) else DYNAMIC for d in val.shape)
    return shape if shape.count(DYNAMIC) <= 1 else None


def _prod(sizes: Any) -> int:
    """The product of sizes; ``DYNAMIC`` where one of them is (the size a reshape infers)."""
    sizes = list(sizes)
    return DYNAMIC if DYNAMIC in sizes else math.prod(sizes)


def _rank(node: Any) -> int:
    val = _val(node)
    return val.dim() if isinstance(val, torch.Tensor) else 0


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _one_dim(n: Any) -> Any:
    """The dim an op of ``_ONE_DIM`` works over (None: argmax over all elements)."""
    default = 0 if n.target in (aten.unbind.int, aten.slice.Tensor) else None
    return n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", default)


def merged_permute(shape: tuple[int, ...], perm: list[int]) -> tuple[list[int], list[int]]:
    """``(shape, perm)`` of the same data movement with size-1 dims dropped and dims that stay adjacent and in
    order under ``perm`` merged.

    Example:
        >>> merged_permute((2, 3, 4, 5, 6, 7), [0, 1, 4, 5, 2, 3])
        ([6, 20, 42], [0, 2, 1])
    """
    keep = [d for d in range(len(shape)) if shape[d] != 1]
    index = {d: i for i, d in enumerate(keep)}
    runs: list[list[int]] = []          # in output order, each a run of consecutive input dims
    for d in (index[d] for d in perm if shape[d] != 1):
        if runs and runs[-1][-1] + 1 == d:
            runs[-1].append(d)
        else:
            runs.append([d])
    sizes = [shape[d] for d in keep]
    order = sorted(range(len(runs)), key=lambda r: runs[r][0])    # runs in input order
    position = {r: i for i, r in enumerate(order)}
    return [_prod(sizes[d] for d in runs[r]) for r in order], [position[r] for r in range(len(runs))]


def permute_moves(shape: list[int], perm: list[int]) -> list[tuple[list[int], list[int]]]:
    """The permutation as a sequence of rank-4 ``(reshape, permute)`` steps: each moves one dim in front of a
    block of others (``[before, block, dim, after] -> [before, dim, block, after]``).

    Example:
        >>> permute_moves([2, 3, 4], [2, 0, 1])
        [([1, 6, 4, 1], [0, 2, 1, 3])]
    """
    cur, steps = list(range(len(shape))), []
    for t, want in enumerate(perm):
        p = cur.index(want)
        if p == t:
            continue
        sizes = [shape[g] for g in cur]
        steps.append(([_prod(sizes[:t]), _prod(sizes[t:p]), sizes[p], _prod(sizes[p + 1:])],
                      [0, 2, 1, 3]))
        cur = cur[:t] + [want] + cur[t:p] + cur[p + 1:]
    return steps


def _reduce_runs(shape: tuple[int, ...], dims: set[int]) -> tuple[list[int], list[int]]:
    """``shape`` with size-1 dims dropped and runs of reduced / kept dims merged; the merged reduced dims."""
    merged: list[int] = []
    reduced: list[int] = []
    last = None
    for d, size in enumerate(shape):
        if size == 1:
            continue
        r = d in dims
        if r is last:
            merged[-1] = _prod([merged[-1], size])
        else:
            merged.append(size)
            if r:
                reduced.append(len(merged) - 1)
        last = r
    return merged, reduced


def broadcast_merge(out: tuple[int, ...], operands: list[tuple[int, ...]], expand: bool = False
                    ) -> tuple[list[int], list[list[int]]] | None:
    """``out`` and the ``operands`` it is broadcast from, with size-1 dims of ``out`` dropped and neighbouring dims
    merged where every operand is broadcast along both or along neither; None for an ``expand`` along a dynamic
    dim (it cannot say that size).

    Example:
        >>> broadcast_merge((2, 3, 4, 1, 5, 6), [(2, 3, 1, 1, 5, 6), (4, 1, 1, 1)])
        ([6, 4, 30], [[6, 1, 30], [1, 4, 1]])
    """
    k = len(out)
    padded = [(1,) * (k - len(s)) + tuple(s) for s in operands]
    runs: list[tuple[tuple[bool, ...], list[int]]] = []
    for j in range(k):
        if out[j] == 1:
            continue
        pattern = tuple(p[j] == 1 for p in padded)   # broadcast along j
        if expand and out[j] == DYNAMIC and any(pattern):
            return None
        if runs and runs[-1][0] == pattern:
            runs[-1][1].append(j)
        else:
            runs.append((pattern, [j]))
    merged = [_prod(out[j] for j in dims) for _, dims in runs]
    return merged, [[1 if pattern[i] else _prod(p[j] for j in dims) for pattern, dims in runs]
                    for i, p in enumerate(padded)]


class _Lowering:
    """One connected group of rank > 5 tensors, checked and then rewritten."""

    def __init__(self, graph: torch.fx.Graph, group: set, max_rank: int):
        self.graph, self.group, self.max_rank = graph, group, max_rank
        nodes = set(group)
        for n in group:
            for u in n.users:
                nodes.add(u)
                if u.op == "call_function" and u.target in _TUPLES:
                    nodes.update(u.users)
        self.nodes = [n for n in graph.nodes if n in nodes]   # graph order
        self.rep: dict = {}
        self.replaced: dict[str, Any] = {}   # name of a rank <= 5 node read from the group -> its replacement

    def _high(self, a: Any) -> bool:
        return a in self.group

    # -- the check: every op making or reading a rank > 5 tensor is one this module rewrites
    def supported(self) -> bool:
        return all(self._supported(n) for n in self.nodes)

    def _supported(self, n: Any) -> bool:
        if n.op != "call_function":
            return False
        if n.target is operator.getitem:
            return n.args[0] in self.nodes and n.args[0].target in _TUPLES
        src = n.args[0] if n.args else None
        if n.target in _VIEWS:
            return _shape(n) is not None and _shape(src) is not None
        if n.target is aten.cat.default:
            return self._concatenated(n)
        if not self._high(src) or _shape(src) is None:
            return self._elementwise(n)
        if n.target is aten.permute.default:
            return True
        if n.target in _ONE_DIM:
            d = _one_dim(n)   # unbind gives one output per index: not over a dynamic dim
            shape = _shape(src)
            return isinstance(d, int) and not (n.target is aten.unbind.int and shape[_dim(d, len(shape))] == DYNAMIC)
        if n.target in _REDUCE_MANY:
            shape = _shape(src)
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", ())
            dims = set(range(len(shape))) if not dims else {_dim(d, len(shape)) for d in dims}
            return len(_reduce_runs(shape, dims)[0]) <= self.max_rank
        return self._elementwise(n)

    def _elementwise(self, n: Any) -> bool:
        """An elementwise op (broadcasting, or an ``expand``) whose merged dims are few enough."""
        if not (torch.Tag.pointwise in getattr(n.target, "tags", ()) or n.target in _ELEMENTWISE_EXTRA
                or n.target is aten.expand.default) or not self._high(n):
            return False
        return self._broadcast(n) is not None

    def _broadcast(self, n: Any) -> tuple[list, list[int], list[list[int]]] | None:
        """(tensor operands, merged output shape, merged operand shapes) of an elementwise op or expand."""
        tensors = [a for a in (n.args[:1] if n.target is aten.expand.default else (*n.args, *n.kwargs.values()))
                   if isinstance(_val(a), torch.Tensor)]
        shapes = [_shape(a) for a in (*tensors, n)]
        if None in shapes:
            return None
        merged = broadcast_merge(shapes[-1], shapes[:-1], expand=n.target is aten.expand.default)
        if merged is None or len(merged[0]) > self.max_rank:
            return None
        return tensors, *merged

    def _concatenated(self, n: Any) -> bool:
        """A concatenation of rank > 5 tensors over one dim."""
        tensors, dim = n.args[0], n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        return self._high(n) and isinstance(dim, int) and all(self._high(a) and _shape(a) for a in tensors) and \
            sum(_shape(a)[_dim(dim, len(_shape(n)))] == DYNAMIC for a in tensors) == 0

    # -- the rewrite
    def _call(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        node = self.graph.call_function(target, args, kwargs)
        vals = tree_map(lambda a: _val(a) if isinstance(a, torch.fx.Node) else a, (args, kwargs))
        node.meta["val"] = target(*vals[0], **vals[1])
        return node

    def _reshape(self, x: Any, shape: list[int] | tuple[int, ...]) -> Any:
        if _shape(x) == tuple(shape):
            return x
        # not a view: a representative may be permuted or sliced, and a recorded stride is not always the one
        # eager PyTorch gives (Swin2SR's decomposed pad); Core ML's reshape is the same op
        return self._call(aten.reshape.default, x, list(shape))

    def _out(self, n: Any, value: Any) -> None:
        """``value`` (row-major the same elements as ``n``) stands for ``n``."""
        if self._high(n):
            self.rep[n] = value
        else:
            self.replaced[n.name] = self._reshape(value, _shape(n))
            n.replace_all_uses_with(self.replaced[n.name])

    def rewrite(self) -> None:
        for n in self.nodes:
            if n.target is operator.getitem:
                continue   # with its tuple op
            with self.graph.inserting_before(n):
                self._rewrite(n)
        inputs = set()
        for n in reversed(self.nodes):
            if not n.users:
                inputs.update(n.all_input_nodes)
                self.graph.erase_node(n)
        while inputs:   # the sizes the erased views read (sym_size of a dynamic batch), now read by nothing
            n = inputs.pop()
            if n.op == "call_function" and not n.users and isinstance(_val(n), torch.SymInt):
                inputs.update(n.all_input_nodes)
                self.graph.erase_node(n)

    def _rewrite(self, n: Any) -> None:
        if n.target is aten.cat.default:
            return self._rewrite_cat(n)
        src = n.args[0]
        x = self.rep.get(src, src)
        if n.target in _VIEWS:
            return self._out(n, x)
        if n.target is aten.permute.default:
            shape, perm = merged_permute(_shape(src), [_dim(d, len(_shape(src))) for d in n.args[1]])
            if len(shape) <= self.max_rank:
                steps = [(shape, perm)] if perm != sorted(perm) else []
            else:
                steps = permute_moves(shape, perm)
            for s, p in steps:
                x = self._call(aten.permute.default, self._reshape(x, s), p)
            return self._out(n, x)
        if n.target in _ONE_DIM:
            shape = _shape(src)
            d = _dim(_one_dim(n), len(shape))
            x3 = self._reshape(x, [_prod(shape[:d]), shape[d], _prod(shape[d + 1:])])
            rest = [a for a in n.args[2:]]
            kwargs = {k: v for k, v in n.kwargs.items() if k != "dim"}
            if n.target in (aten.max.dim, aten.min.dim, aten.argmax.default, aten.argmin.default):
                rest, kwargs = [], {}   # keepdim or not: the same elements in the same order
            y = self._call(n.target, x3, 1, *rest, **kwargs)
            if n.target not in _TUPLES:
                return self._out(n, y)
            for g in list(n.users):
                self._out(g, self._call(operator.getitem, y, g.args[1]))
            return None
        if n.target in _REDUCE_MANY:
            shape = _shape(src)
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", ())
            dims = set(range(len(shape))) if not dims else {_dim(d, len(shape)) for d in dims}
            merged, reduced = _reduce_runs(shape, dims)
            return self._out(n, self._call(n.target, self._reshape(x, merged), reduced))
        self._rewrite_elementwise(n)
        return None

    def _rewrite_elementwise(self, n: Any) -> None:
        tensors, out, shapes = self._broadcast(n)
        reshaped = {a: self._reshape(self.rep.get(a, a), s) for a, s in zip(tensors, shapes)}
        if n.target is aten.expand.default:
            return self._out(n, self._call(n.target, reshaped[n.args[0]], out))

        def arg(a: Any) -> Any:
            return reshaped.get(a, a) if isinstance(a, torch.fx.Node) else a
        kwargs = {k: arg(v) for k, v in n.kwargs.items() if k != "memory_format"}
        return self._out(n, self._call(n.target, *[arg(a) for a in n.args], **kwargs))

    def _rewrite_cat(self, n: Any) -> None:
        shape = _shape(n)
        d = _dim(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0), len(shape))
        parts = [self._reshape(self.rep[a], [_prod(shape[:d]), _shape(a)[d], _prod(shape[d + 1:])])
                 for a in n.args[0]]
        self._out(n, self._call(aten.cat.default, parts, 1))


def _groups(high: list) -> list[set]:
    """Connected groups of rank > 5 nodes: one reads another, or both come from one tuple op."""
    parent = {n: n for n in high}

    def find(n: Any) -> Any:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n
    for n in high:
        for u in n.users:
            linked = [u] if u.op != "call_function" or u.target not in _TUPLES else list(u.users)
            for v in linked:
                if v in parent:
                    parent[find(v)] = find(n)
    out: dict = {}
    for n in high:
        out.setdefault(find(n), set()).add(n)
    return list(out.values())


def lower_rank(program: Any, example_inputs: tuple | None = None, max_rank: int = MAX_RANK) -> int:
    """Rewrite the rank > ``max_rank`` tensors of ``program`` (an ExportedProgram, in place) with ops on tensors
    of rank <= ``max_rank``; returns how many were rewritten away (0: the program is untouched).

    Only groups whose every op is a view, a permute, an identity, an elementwise op or a selection / max / min
    over dims are rewritten (see the module's docstring); the numbers are bit-identical. With ``example_inputs``,
    every tensor the rewritten ops hand back to the rest of the program is checked to be bit-identical on them
    (for backends whose artifacts cannot be run here); a difference raises RuntimeError, and a program PyTorch
    cannot run on them is left untouched.

    Example:
        >>> ep = torch.export.export(model, (x,))
        >>> lower_rank(ep, (x,))       # a small Hiera: its unroll/reroll, q/k/v split and query pooling
        8
    """
    graph = program.graph_module.graph
    high = [n for n in graph.nodes if _rank(n) > max_rank]
    lowerings = [lw for lw in (_Lowering(graph, g, max_rank) for g in _groups(high)) if lw.supported()]
    if not lowerings:
        return 0
    names = {n.name for lw in lowerings for n in lw.nodes
             if not lw._high(n) and isinstance(_val(n), torch.Tensor)}
    try:
        before = _values(program, example_inputs, names) if example_inputs is not None else None
    except Exception:   # a program eager PyTorch cannot run here: nothing to check a rewrite against
        return 0
    for lowering in lowerings:
        lowering.rewrite()
    graph.lint()
    program.graph_module.recompile()
    if before is not None:
        replaced = {old: new.name for lw in lowerings for old, new in lw.replaced.items()}
        after = _values(program, example_inputs, set(replaced.values()))
        for old, new in replaced.items():
            try:
                torch.testing.assert_close(after[new], before[old], rtol=0, atol=0, equal_nan=True)
            except (AssertionError, KeyError) as e:
                raise RuntimeError(f"lowering the tensor rank changed {old!r}: {str(e).strip().splitlines()[0]}; "
                                   f"this is a bug in edge.passes.rank") from e
    return sum(len(lw.group) for lw in lowerings)


def _values(program: Any, inputs: tuple, names: set[str]) -> dict[str, Any]:
    """The values of the named nodes when ``program`` runs on ``inputs``."""
    module = program.module()
    run = torch.fx.Interpreter(module, garbage_collect_values=False)
    with torch.no_grad():
        run.run(*inputs)
    return {n.name: v for n, v in run.env.items() if n.name in names}


def max_rank(program: Any) -> int:
    """The largest tensor rank among the program's values."""
    return max((_rank(n) for n in program.graph.nodes), default=0)
