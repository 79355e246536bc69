"""Forms that keep a map channels-last through XNNPACK (ExecuTorch), so that no map is transposed around an op.

XNNPACK runs convolutions and poolings channels-last (NHWC) and keeps the maps after them in that layout while
the ops allow it. Two common writings break it, each costing two transposes of the whole map per op (or a
transpose of a constant at every run), and on small models those transposes and their per-op cost decide the
latency:

``channels_last_regions``  a region between ``x.permute(0, 2, 3, 1)`` and ``.permute(0, 3, 1, 2)`` that only
    works along the last dim (ConvNeXt's block and its LayerNorm, timm's ``LayerNorm2d``: layer norms over the
    channels, linear layers, activations, products and sums with per-channel constants) is written on the NCHW
    map itself: a linear layer as a 1 x 1 convolution, a layer norm over the channels with its two means as 1 x 1
    convolutions to one channel. Both permutes go; XNNPACK moved the map to NCHW and back at each of them.
``channel_affines``  a product or sum of a channels-last map with a per-channel constant (``[C, 1, 1]`` or
    ``[1, C, 1, 1]``: PoolFormer's and ConvNeXt's layer scales, hand-written norms' affines) as a depthwise
    1 x 1 convolution (XNNPACK's per-channel multiply-add); a product followed by a sum of constants becomes one
    convolution.

The numbers are the same sums and products, in another order or fused into one multiply-add: within a few
roundings of PyTorch's, and verified like every artifact.

Example:
    >>> regions = channels_last_regions(program)   # in place, on the captured program, before decompositions
    >>> made = channel_affines(program)             # in place, after them, before constants are folded
"""
from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten

# ops whose output XNNPACK keeps channels-last (its ChannelsLastTaggedReshapePass: ops that need NHWC input)
_NHWC = {aten.conv2d.default, aten.convolution.default, aten.avg_pool2d.default, aten.max_pool2d.default,
         aten.max_pool2d_with_indices.default, aten.upsample_bilinear2d.vec, aten.mean.dim}
# elementwise ops whose output takes the layout of their inputs
_AGNOSTIC = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.relu.default,
             aten.gelu.default, aten.hardtanh.default, aten.clamp.default, aten.sigmoid.default,
             aten.tanh.default, aten.hardswish.default, aten.silu.default, aten.leaky_relu.default,
             aten.neg.default, aten.abs.default, aten.sqrt.default, aten.rsqrt.default, aten.exp.default,
             aten.elu.default}


def _val(node: Any) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


class _Builder:
    """``call(target, *args, **kwargs)`` inserts a call at the graph's insertion point, with its value computed
    on the fake inputs (what lowering reads) and the provenance of the node it replaces (the delegation
    summary's module names)."""

    def __init__(self, graph: Any, like: Any):
        from torch._guards import detect_fake_mode
        self.graph, self.like = graph, like
        self.fake = detect_fake_mode([_val(n) for n in like.all_input_nodes if _val(n) is not None])

    def __call__(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        n = self.graph.call_function(target, args, kwargs)
        with self.fake:
            n.meta["val"] = target(*[_val(a) if isinstance(a, torch.fx.Node) else a for a in args], **kwargs)
        for k in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if k in self.like.meta:
                n.meta[k] = self.like.meta[k]
        return n


class _Graph:
    """What the rewrite asks of the program's nodes: constant (depends on no input) and channels-last."""

    def __init__(self, program: Any):
        sig = program.graph_signature
        self.const_inputs = {*sig.inputs_to_parameters, *sig.inputs_to_buffers,
                             *sig.inputs_to_lifted_tensor_constants}
        self._const: dict[Any, bool] = {}
        self._nhwc: dict[Any, bool] = {}

    def constant(self, node: Any) -> bool:
        if not isinstance(node, torch.fx.Node):
            return True
        if node not in self._const:
            if node.op == "placeholder":
                self._const[node] = node.name in self.const_inputs
            else:
                self._const[node] = node.op == "call_function" and all(
                    self.constant(a) for a in node.all_input_nodes)
        return self._const[node]

    def channels_last(self, node: Any) -> bool:
        """Will XNNPACK hold this 4-D map channels-last (an NHWC op's output, through elementwise ops)?"""
        if node in self._nhwc:
            return self._nhwc[node]
        val = _val(node)
        out = False
        if val is not None and val.dim() == 4 and node.op == "call_function" and not self.constant(node):
            if node.target in _NHWC:
                out = node.target is not aten.mean.dim or sorted(d % 4 for d in node.args[1]) == [2, 3]
            elif node.target in _AGNOSTIC:
                out = any(self.channels_last(a) for a in node.all_input_nodes if not self.constant(a))
        self._nhwc[node] = out
        return out


def _operands(node: Any, g: _Graph) -> tuple[Any, Any] | None:
    """(map, per-channel constant) of a binary product or sum, or None."""
    if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return None
    for x, c in (node.args, node.args[::-1]):
        xv, cv = _val(x), _val(c)
        if (xv is not None and cv is not None and xv.dim() == 4 and xv.is_floating_point()
                and cv.dtype == xv.dtype and g.constant(c) and not g.constant(x) and xv.shape[1] > 1
                and tuple(cv.shape[-3:]) == (xv.shape[1], 1, 1) and all(d == 1 for d in cv.shape[:-3])
                and tuple(torch.broadcast_shapes(xv.shape, cv.shape)) == tuple(xv.shape)
                and g.channels_last(x)):
            return x, c
    return None


def channel_affines(program: Any) -> int:
    """Rewrite each per-channel product / sum of a channels-last map with a constant as a depthwise 1 x 1
    convolution (in place; returns how many convolutions were made). Run before constants are folded: the
    weight and bias are views of the constants, which folding makes constants of their own."""
    graph, g, made = program.graph, _Graph(program), 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.mul.Tensor, aten.add.Tensor) or not node.users:
            continue
        found = _operands(node, g)
        if found is None:
            continue
        x, c = found
        xv = _val(x)
        ch = xv.shape[1]
        last, weight, bias = node, None, None
        if node.target is aten.mul.Tensor:
            weight = c
            user = next(iter(node.users)) if len(node.users) == 1 else None
            then = _operands(user, g) if user is not None and user.target is aten.add.Tensor else None
            if then is not None and then[0] is node:   # x * w + b: one convolution
                last, bias = user, then[1]
        else:
            bias = c
        with graph.inserting_before(last):
            call = _Builder(graph, last)
            w = (call(aten.view.default, weight, [ch, 1, 1, 1]) if weight is not None else
                 call(aten.full.default, [ch, 1, 1, 1], 1.0, dtype=xv.dtype, device=xv.device))
            b = call(aten.view.default, bias, [ch]) if bias is not None else None
            conv = call(aten.convolution.default, x, w, b, [1, 1], [0, 0], [1, 1], False, [0, 0], ch)
        last.replace_all_uses_with(conv)
        graph.erase_node(last)
        if last is not node:
            graph.erase_node(node)
        made += 1
    if made:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return made



_TO_LAST, _TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]
# elementwise ops of one tensor (their other arguments are scalars)
_UNARY = {aten.gelu.default, aten.relu.default, aten.silu.default, aten.sigmoid.default, aten.tanh.default,
          aten.hardswish.default, aten.hardtanh.default, aten.clamp.default, aten.leaky_relu.default,
          aten.hardsigmoid.default, aten.elu.default, aten.mish.default, aten.rsqrt.default, aten.sqrt.default,
          aten.neg.default, aten.abs.default, aten.exp.default}
_BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor}
# a reshape between [N, H, W, K] and rows [N * H * W, K] (a clone: the copy a reshape may decompose into)
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default}
_CONV = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)   # convolution's stride .. groups for a 1 x 1 convolution


class _Region:
    """The nodes a ``permute(0, 2, 3, 1)`` of an [N, C, H, W] map feeds, up to the permutes back, when every one
    of them works along the last dim: each holds the map as [N, H, W, K] or as rows [N * H * W, K], and is
    written on the [N, K, H, W] map (a reshape between the two holdings is then nothing)."""

    def __init__(self, p: Any, g: _Graph):
        self.g, self.p = g, p
        n, h, w, _ = _val(p).shape
        self.lead, self.rows = (n, h, w), n * h * w
        self.nodes: list = []
        self.backs: list = []

    def held(self, node: Any) -> bool:
        v = _val(node)
        return v is not None and v.is_floating_point() and (
            (v.dim() == 4 and tuple(v.shape[:3]) == self.lead) or (v.dim() == 2 and v.shape[0] == self.rows))

    def _other(self, a: Any) -> bool:
        """A constant operand that broadcasts along the last dim: a scalar, or ``[.., 1, K]``."""
        if not isinstance(a, torch.fx.Node):
            return isinstance(a, (int, float))
        v = _val(a)
        return self.g.constant(a) and v is not None and v.dim() <= 4 and all(d == 1 for d in v.shape[:-1])

    def takes(self, u: Any, inside: set) -> bool:
        """Does ``u`` (reading region nodes) work along the last dim, with constants otherwise?"""
        if u.op != "call_function" or not self.held(u):
            return False
        args, t = u.args, u.args[0] if u.args else None
        if u.target in _RESHAPES:
            return t in inside and _val(u).shape[-1] == _val(t).shape[-1]
        if u.target is aten.layer_norm.default:
            return (t in inside and list(args[1]) == [_val(t).shape[-1]]
                    and all(self.g.constant(a) for a in args[2:4]))
        if u.target is aten.linear.default:
            return t in inside and all(self.g.constant(a) for a in args[1:])
        if u.target in _UNARY:
            return t in inside and not any(isinstance(a, torch.fx.Node) for a in args[1:])
        if u.target in _BINARY and len(args) == 2 and not u.kwargs:
            mine = [a for a in args if isinstance(a, torch.fx.Node) and a in inside]
            return bool(mine) and all(self._other(a) for a in args if not any(a is m for m in mine)) and all(
                _val(a).shape[-1] in (1, _val(u).shape[-1]) for a in mine)
        return False

    def find(self) -> bool:
        """Collect the region in graph order; False when a node reads the region and is neither part of it nor
        a permute back of a held [N, H, W, K] map."""
        inside, pending = {self.p}, set(self.p.users)
        node = self.p.next
        while pending and node.op != "output":
            if node in pending:
                pending.discard(node)
                if (node.target is aten.permute.default and list(node.args[1]) == _TO_FIRST
                        and _val(node.args[0]).dim() == 4):
                    self.backs.append(node)
                elif self.takes(node, inside):
                    inside.add(node)
                    self.nodes.append(node)
                    pending.update(node.users)
                else:
                    return False
            node = node.next
        return not pending and bool(self.backs)

    def rewrite(self, graph: Any) -> None:
        new: dict = {self.p: self.p.args[0]}
        made_conv: set = set()
        with graph.inserting_before(self.backs[0]):
            for u in self.nodes:
                call, args = _Builder(graph, u), u.args
                t = new.get(args[0]) if isinstance(args[0], torch.fx.Node) else None
                k = _val(u).shape[-1]
                if u.target in _RESHAPES:
                    new[u] = t
                elif u.target is aten.layer_norm.default:
                    full = [*args, None, None, 1e-5][:5]
                    new[u] = _channel_layer_norm(call, t, k, u.kwargs.get("weight", full[2]),
                                                 u.kwargs.get("bias", full[3]), u.kwargs.get("eps", full[4]))
                elif u.target is aten.linear.default:
                    w = call(aten.view.default, args[1], [*_val(args[1]).shape, 1, 1])
                    new[u] = call(aten.convolution.default, t, w, args[2] if len(args) > 2 else None, *_CONV)
                    made_conv.add(new[u])
                elif u.target in _UNARY:
                    new[u] = call(u.target, t, *args[1:], **u.kwargs)
                else:
                    new[u] = self._binary(call, u, new, made_conv)
        for back in self.backs:
            back.replace_all_uses_with(new[back.args[0]])

    def _binary(self, call: _Builder, u: Any, new: dict, made_conv: set) -> Any:
        a, b = u.args
        if u.target is aten.add.Tensor and isinstance(a, torch.fx.Node) and a in new and new[a] in made_conv \
                and len(a.users) == 1 and len(new[a].users) == 0 and isinstance(b, torch.fx.Node) \
                and b not in new and _val(b).numel() == 1:   # a linear's sum plus a constant (a norm's eps): its bias
            conv = new[a]
            k = _val(conv).shape[1]
            bias = conv.args[2] if conv.args[2] is not None else call(
                aten.zeros.default, [k], dtype=_val(conv).dtype, device=_val(conv).device)
            bias = call(aten.add.Tensor, bias, call(aten.reshape.default, b, [1]))
            out = call(aten.convolution.default, conv.args[0], conv.args[1], bias, *_CONV)
            made_conv.add(out)
            return out

        def moved(x: Any) -> Any:
            if not isinstance(x, torch.fx.Node):
                return x
            if x in new:
                return new[x]
            v = _val(x)
            return x if v.numel() == 1 else call(aten.view.default, x, [v.shape[-1], 1, 1])
        return call(u.target, moved(a), moved(b))


def _channel_layer_norm(call: _Builder, t: Any, c: int, weight: Any, bias: Any, eps: float) -> Any:
    """Layer norm over the channels of an [N, C, H, W] map, both means as 1 x 1 convolutions to one channel."""
    v = _val(t)

    def mean(x: Any, plus: float | None) -> Any:
        w = call(aten.full.default, [1, c, 1, 1], 1.0 / c, dtype=v.dtype, device=v.device)
        b = None if plus is None else call(aten.full.default, [1], plus, dtype=v.dtype, device=v.device)
        return call(aten.convolution.default, x, w, b, *_CONV)
    d = call(aten.sub.Tensor, t, mean(t, None))
    y = call(aten.mul.Tensor, d, call(aten.rsqrt.default, mean(call(aten.mul.Tensor, d, d), eps)))
    if weight is not None:
        y = call(aten.mul.Tensor, y, call(aten.view.default, weight, [c, 1, 1]))
    if bias is not None:
        y = call(aten.add.Tensor, y, call(aten.view.default, bias, [c, 1, 1]))
    return y


def channels_last_regions(program: Any, *, count_only: bool = False) -> int:
    """Write each region between ``permute(0, 2, 3, 1)`` of a channels-last map and the permutes back that works
    along the channels only (see the module) on the map itself (in place; returns how many regions;
    ``count_only``: count them, changing nothing)."""
    graph, g, done = program.graph, _Graph(program), 0
    for p in list(graph.nodes):
        if (p.op != "call_function" or p.target is not aten.permute.default or list(p.args[1]) != _TO_LAST
                or not p.users or not g.channels_last(p.args[0])):
            continue
        region = _Region(p, g)
        if not region.find():
            continue
        done += 1
        if not count_only:
            region.rewrite(graph)
    if done and not count_only:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return done
