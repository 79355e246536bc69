"""Program-level rewrites: decompositions of a captured program into forms a backend runs whole.

The module passes (``attention.py``) rewrite modules they recognise by structure; these rewrites work on the
captured ``ExportedProgram`` instead, so they reach every implementation that ends in the same ATen op, whatever
its class: transformers' attention-interface functions (``sdpa_attention_forward``), timm's fused Attention,
custom LayerNorm / LayerNorm2d / GroupNorm-as-LayerNorm classes that call ``F.layer_norm`` / ``F.group_norm``,
means over the channels of an NCHW map. Each decomposition computes the same numbers (the same math, in fp32);
like every artifact, the lowered program is then verified against PyTorch.

``xnnpack_decompositions``  ops XNNPACK has no kernel for, written with ops it delegates:
    - ``scaled_dot_product_attention`` (no mask, or an additive float mask) as 3-D ``bmm`` / softmax / ``bmm``
      (ExecuTorch's own decomposition of SDPA leaves ``any/eq/where/logical_not/full_like`` on portable kernels
      for fully-masked rows, which an unmasked or float-masked call cannot have... except a float mask whose
      whole row is ``-inf``: PyTorch then returns 0 and this form NaN, which the parity check reports).
      Boolean masks (but constant ones, which ``sdpa_masks`` drops or makes additive), ``is_causal`` and
      grouped-query calls keep ExecuTorch's decomposition.
    - ``layer_norm`` / ``group_norm``: both means as a linear layer with one output row of ``1/C``
      (``native_layer_norm`` stays on portable kernels; the same form as ``EdgeLayerNorm``). A group norm of a
      map takes each channel's spatial mean first (XNNPACK's global average pooling), then its group's mean by a
      1 x 1 convolution of that [N, C, 1, 1] map (eps as its bias), and its affine as a depthwise 1 x 1
      convolution: all channels-last, so XNNPACK transposes no map around the norm (with a linear layer and
      reshapes there, it put 8 transposes around each). Measured on ExecuTorch (ratios within one run):
      GroupNorm(1, 64) on 56 x 56 in 0.33x the time of a mean over [N, G, C / G, H * W], which took 0.60x the
      linear means' time; GroupNorm(32, 512) on 7 x 7 0.92x and 0.98x; PoolFormer at 224 px 1.13x raw
      ExecuTorch's speed (was 0.83x); the small PoolFormer (32 px) 1.30x faster with the convolutions than
      with the linear group mean (see ``channels_last.py`` for the layer scales).
    - ``mean.dim`` over dims XNNPACK cannot reduce (anything but the last two of a 4-D tensor, kept): the reduced
      dims moved last (a delegated transpose) and averaged by the same linear layer; a global average
      pooling without ``keepdim`` as the pooling with it and a reshape; ``adaptive_avg_pool1d(x, 1)`` as that mean;
      ``adaptive_avg_pool2d`` to other sizes than 1x1 as an ``avg_pool2d`` or averaging linear layers.
    - ``unfold``/``fold`` into non-overlapping patches as reshapes and transposes (MobileViTV2); a small
      reflect pad of the last dims as slices and concatenations (EnCodec, Swin2SR).
    - ``sum`` over dims as a linear layer with a row of ones; ``linalg_vector_norm`` of order 2 / 1 as the square
      root of that sum of squares / that sum of absolute values (ConvNeXtV2's GRN); ``pow`` by the exponents ATen
      computes without ``std::pow`` (0.5, -0.5, 2.0, 3, -1, -2) in ATen's own forms (XNNPACK takes only an
      integer 2); ``var`` / ``std`` as means of squared deviations; ``amax`` as a 4-D ``max.dim`` (a max
      pooling), and so ``max.dim`` whose indices nothing reads (Hiera); ``elu`` / ``selu`` / ``celu`` as relu,
      clamp, exp (ExecuTorch's XNNPACK partitioner has no ELU); ``hardsigmoid`` as a clamp with float bounds;
      ``softplus`` / ``mish`` as relu, abs, exp, log (tanh);
      ``upsample_nearest2d`` by powers of two as a broadcasting product with ones (XNNPACK has no nearest resize).
    - ``split`` as step-1 slices (LeViT's q/k/v); a softmax over another dim than the last between two
      transposes;
    - ``roll`` as slices and a concatenation; a strided slice ``x[s:e:k]`` as step-1 slices and a reshape, and
      a concatenation when ``k`` does not divide the range (Swin's shifted windows and patch merging, LeViT's
      subsampling of a 7 x 7 map).
``broadcast_expands``  an ``expand`` (or a ``repeat`` of size-1 dims) read only by broadcasting elementwise ops
    (``ctx.expand_as(v) * v``, MobileViTV2's linear attention; SwiftFormer's repeated global query) is dropped:
    XNNPACK's binary ops broadcast, it has no expand or repeat. One no broadcasting op absorbs (a concatenation
    reads it: DPT's class-token readout) becomes a product with ones.
``float_scalars``  the integer scalar of a float add/sub/mul/div as a float (``x + 0``, ``x / 2``): the edge
    dialect would lift it to an int64 constant and cast it on a portable kernel.
``fold_constants``  constant propagation: subgraphs that depend on no input (a relative-position index a
    forward rebuilds from ``arange``/``meshgrid`` in every layer, the bias gathered from its table, the
    ``1/C`` columns above) become constants of the program.

Example:
    >>> program = to_xnnpack_forms(program)   # what the ExecuTorch converter does before lowering
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

aten = torch.ops.aten


def _static(*shapes: Any) -> bool:
    return all(isinstance(d, int) for s in shapes for d in s)


def _average(c: int, like: torch.Tensor) -> torch.Tensor:
    """The [1, c] row of 1/c a linear layer averages with (a constant once folded)."""
    return torch.full((1, c), 1.0 / c, dtype=like.dtype, device=like.device)


def _normalize_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """A tensor normalized over its last dim to zero mean and unit variance (biased), means as linear layers
    (XNNPACK's fully-connected op takes any leading dims: no reshape to rows around it)."""
    avg = _average(x.shape[-1], x)
    d = x - F.linear(x, avg)
    return d * torch.rsqrt(F.linear(d * d, avg) + eps)


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if is_causal or enable_gqa or dropout_p or (attn_mask is not None and not attn_mask.is_floating_point()):
        return NotImplemented
    lead, (L, E), S, Ev = q.shape[:-2], q.shape[-2:], k.shape[-2], v.shape[-1]
    if k.shape[:-2] != lead or v.shape[:-2] != lead or not _static(q.shape, k.shape, v.shape):
        return NotImplemented
    n = math.prod(lead)
    scale = E ** -0.5 if scale is None else scale
    s = torch.bmm(q.reshape(n, L, E) * scale, k.reshape(n, S, E).transpose(1, 2))
    if attn_mask is not None:   # a broadcasting add in 4-D: no expand of the mask (a portable op)
        s = (s.reshape(*lead, L, S) + attn_mask).reshape(n, L, S)
    o = torch.bmm(s.softmax(dim=-1), v.reshape(n, S, Ev)).reshape(*lead, L, Ev)
    if o.dim() == 4:   # SDPA's output strides ([B, L, H, E] in memory): callers .view() its transpose
        o = o.transpose(1, 2).contiguous().transpose(1, 2)
    return o


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    c = math.prod(normalized_shape)
    if not _static(x.shape):
        return NotImplemented
    k = len(normalized_shape)
    y = _normalize_rows(x, eps) if k == 1 else _normalize_rows(x.reshape(*x.shape[:-k], c), eps).reshape(x.shape)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _group_mean(t: torch.Tensor, groups: int, plus: float | None = None) -> torch.Tensor:
    """[N, C, H, W] -> each channel's group mean (``+ plus``), broadcastable against ``t``: the spatial mean
    first (XNNPACK's global average pooling), then the group's channels averaged by a 1 x 1 convolution of that
    [N, C, 1, 1] map ([N, 1, 1, 1] for one group), ``plus`` as its bias. Both run channels-last, as the
    convolutions around a norm do, so XNNPACK moves no map between layouts around the norm (a linear layer or a
    reshape there put 8 transposes around each of PoolFormer's norms)."""
    c = t.shape[1]
    k = c // groups
    m = t.mean(dim=(2, 3), keepdim=True)
    if k == 1 and plus is None:
        return m
    out = 1 if groups == 1 else c
    w = torch.full((out, k, 1, 1), 1.0 / k, dtype=t.dtype, device=t.device)
    b = None if plus is None else torch.full((out,), plus, dtype=t.dtype, device=t.device)
    return F.conv2d(m, w, b, groups=groups if out == c else 1)


def _channel_affine(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``y * weight + bias`` per channel of an [N, C, H, W] map as a depthwise 1 x 1 convolution (XNNPACK's
    multiply-add per channel, channels-last): as products with [1, C, 1, 1] tensors, each parameter would be
    moved to channels-last by a transpose at every run."""
    c = y.shape[1]
    w = torch.ones(c, dtype=y.dtype, device=y.device) if weight is None else weight
    return F.conv2d(y, w.reshape(c, 1, 1, 1), bias, groups=c)


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    if not _static(x.shape) or x.dim() < 2:
        return NotImplemented
    n, c = x.shape[:2]
    if x.dim() == 4:   # a map: means per channel over space, then per group (see _group_mean)
        d = x - _group_mean(x, num_groups)
        y = d * torch.rsqrt(_group_mean(d * d, num_groups, plus=eps))
        return y if weight is None and bias is None else _channel_affine(y, weight, bias)
    if x.dim() > 2:
        v = x.reshape(n, c, -1, 1)
        d = v - _group_mean(v, num_groups)
        y = (d * torch.rsqrt(_group_mean(d * d, num_groups, plus=eps))).reshape(x.shape)
    else:
        y = _normalize_rows(x.reshape(n * num_groups, -1), eps).reshape(x.shape)
    affine = [1, c] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(affine)
    if bias is not None:
        y = y + bias.reshape(affine)
    return y


def _xnnpack_reduces(x: torch.Tensor, dims: list[int]) -> bool:
    """XNNPACK's mean: a 4-D tensor over its last two dims (a global average pooling)."""
    return x.dim() == 4 and sorted(d % 4 for d in dims) == [2, 3]


def _reduced(x: torch.Tensor, dim: Any) -> list[int] | None:
    """The dims a reduction over ``dim`` covers (None or ``[]``: all of them), sorted; None when the reduction
    has no form here (not a static float tensor)."""
    if not x.is_floating_point() or not _static(x.shape) or x.dim() == 0:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim or range(x.dim()))
    return sorted({d % x.dim() for d in dims})


def _rows(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """``x`` as a [rows, k] matrix whose rows hold the ``dims`` to reduce (moved last by a delegated transpose)."""
    kept = [d for d in range(x.dim()) if d not in dims]
    moved = x.permute(*kept, *dims) if dims != list(range(x.dim() - len(dims), x.dim())) else x
    return moved.reshape(-1, math.prod(x.shape[d] for d in dims))


def _reduced_shape(x: torch.Tensor, dims: list[int], keepdim: bool) -> list[int]:
    return [1 if d in dims else x.shape[d] for d in range(x.dim()) if keepdim or d not in dims]


def _reduce(x: torch.Tensor, dims: list[int], keepdim: bool, weight: float) -> torch.Tensor:
    """``weight`` times the sum of ``x`` over ``dims`` as a linear layer with one output row of ``weight``."""
    rows = _rows(x, dims)
    y = F.linear(rows, torch.full((1, rows.shape[1]), weight, dtype=x.dtype, device=x.device))
    return y.reshape(_reduced_shape(x, dims, keepdim))


def _amax(x, dim=(), keepdim=False):
    """``amax`` over dims as ``max.dim`` over the last dim of a [1, rows, 1, k] map (XNNPACK delegates ``max.dim``
    of a 4-D tensor as a max pooling, and has no amax): the same maximum of the same values (NaN inputs aside:
    a max pooling need not propagate them)."""
    dims = _reduced(x, dim)
    if not dims:
        return NotImplemented
    rows = _rows(x, dims)
    y = torch.max(rows.reshape(1, rows.shape[0], 1, rows.shape[1]), 3, keepdim=True)[0]
    return y.reshape(_reduced_shape(x, dims, keepdim))


def _max_dim(x, dim, keepdim=False):
    """``max.dim`` whose indices nothing reads (``x.max(dim=1).values``: Hiera's mask-unit pooling) as
    :func:`_amax`; the indices as an ``argmax`` that is then dropped unread (programs that read them do not get
    this form: :func:`_indices_read`). ExecuTorch's XNNPACK partitioner takes any 4-D ``max.dim`` but its
    serializer only the last two dims with ``keepdim``: the lowering then fails."""
    if x.dim() == 4 and dim % 4 in (2, 3) and keepdim:
        return NotImplemented
    values = _amax(x, dim, keepdim) if x.is_floating_point() else NotImplemented
    if values is NotImplemented:
        return NotImplemented
    return values, torch.argmax(x, dim, keepdim)


def _indices_read(program: Any) -> bool:
    """Does any ``max.dim`` of the program have its indices read?"""
    return any(n.op == "call_function" and n.target is aten.max.dim and
               any(u.args[1] != 0 and u.users for u in n.users) for n in program.graph.nodes)


def _mean(x, dim=None, keepdim=False, dtype=None):
    dims = _reduced(x, dim) if dim is not None and dtype is None else None
    if not dims or (_xnnpack_reduces(x, dims) and keepdim):
        return NotImplemented
    if _xnnpack_reduces(x, dims):   # XNNPACK's global average pooling keeps the dims: squeeze by a reshape
        return x.mean(dims, keepdim=True).reshape(x.shape[:2])
    return _reduce(x, dims, keepdim, 1.0 / math.prod(x.shape[d] for d in dims))


def _sum(x, dim=None, keepdim=False, dtype=None):
    """``sum`` over dims (XNNPACK has no sum: MobileViTV2's context vector, hand-written norms and poolings) as
    a linear layer with a row of ones: the same additions in another order."""
    dims = _reduced(x, dim) if dtype is None else None
    return NotImplemented if not dims else _reduce(x, dims, keepdim, 1.0)


def _vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
    """``linalg_vector_norm`` of order 2 as ``sqrt(sum(x * x))`` and of order 1 as ``sum(abs(x))``
    (ConvNeXtV2's GRN: ``torch.norm(x, p=2, dim=(1, 2))``; ExecuTorch's decomposition leaves a float ``pow`` and
    a ``sum`` on portable kernels)."""
    dims = _reduced(x, dim) if dtype is None and ord in (1, 2) else None
    if not dims:
        return NotImplemented
    return _reduce(x * x, dims, keepdim, 1.0).sqrt() if ord == 2 else _reduce(x.abs(), dims, keepdim, 1.0)


def _var(x, dim=None, *, correction=None, keepdim=False):
    """``var`` over dims as the mean of squared deviations from the mean, both linear layers (custom norms written
    with ``x.var(...)``; XNNPACK has no var). ATen accumulates differently (Welford): equal up to fp32 rounding."""
    dims = _reduced(x, dim)
    n = math.prod(x.shape[d] for d in dims) if dims else 0
    c = 1 if correction is None else correction
    if not dims or n - c <= 0:   # no deviation to divide by: ATen's inf/nan stays ATen's
        return NotImplemented
    d = x - _reduce(x, dims, True, 1.0 / n)
    return _reduce(d * d, dims, keepdim, 1.0 / (n - c))


def _std(x, dim=None, *, correction=None, keepdim=False):
    out = _var(x, dim, correction=correction, keepdim=keepdim)
    return out if out is NotImplemented else out.sqrt()


def _var_dim(x, dim=None, unbiased=True, keepdim=False):   # x.var(dim, unbiased, keepdim) as captured
    return _var(x, dim, correction=int(unbiased), keepdim=keepdim)


def _std_dim(x, dim=None, unbiased=True, keepdim=False):
    return _std(x, dim, correction=int(unbiased), keepdim=keepdim)


# The exponents ATen's CPU pow kernel computes without std::pow (PowKernel.cpp), in its own forms: the same numbers.
_POWERS = {0.5: torch.sqrt, -0.5: torch.rsqrt, 2.0: lambda x: x * x, 3.0: lambda x: x * x * x,
           -1.0: lambda x: torch.full((1,) * x.dim(), 1.0, dtype=x.dtype, device=x.device) / x,
           -2.0: lambda x: torch.full((1,) * x.dim(), 1.0, dtype=x.dtype, device=x.device) / (x * x)}


def _pow(x, exponent, *, constants: bool = True):
    """``x ** e`` (XNNPACK delegates only an integer 2) for the exponents ATen special-cases: 0.5 and -0.5 as
    sqrt and rsqrt, 2 and 3 as products, -1 and -2 as divisions of a constant 1 (not where constants are not
    folded: ``constants=False``). A GRN's or a hand-written norm's ``x.pow(2.0)``, ``s ** 0.5``."""
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not x.is_floating_point():
        return NotImplemented
    form = _POWERS.get(float(exponent))
    if form is None or (exponent == 2 and isinstance(exponent, int)) or (exponent < 0 and not constants):
        return NotImplemented
    return form(x)


def _hardsigmoid(x):
    """``hardsigmoid`` as ``clamp(x + 3, 0, 6) / 6`` with float constants: ExecuTorch's own decomposition writes
    them as integers, which its edge dialect lifts to int64 tensors and casts on portable kernels (XNNPACK has
    no hardsigmoid)."""
    if not x.is_floating_point():
        return NotImplemented
    return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def _selu(x):
    """SELU as ATen computes it: ELU with its two constants."""
    return _elu(x, 1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


def _celu(x, alpha=1.0):
    """CELU as ATen computes it: ELU with ``input_scale = 1 / alpha``."""
    return _elu(x, alpha, 1.0, 1.0 / alpha)


def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    """ELU (and SELU/CELU, which call it) as ``relu(x) * scale + (exp(min(x, 0) * input_scale) - 1) * alpha * scale``
    with ops XNNPACK delegates (ExecuTorch 1.5's XNNPACK partitioner has no ELU config: EnCodec's convolutions).
    Above 0 this is exactly ``x * scale`` (``exp(0) - 1 == 0``); below, ``exp(v) - 1`` where ATen takes ``expm1(v)``:
    equal up to fp32 rounding of the result (about 1e-7 absolute)."""
    if not x.is_floating_point():
        return NotImplemented
    pos = torch.relu(x) if scale == 1 else torch.relu(x) * scale
    neg = torch.clamp(x, max=0.0)
    neg = torch.exp(neg if input_scale == 1 else neg * input_scale) - 1.0
    return pos + (neg if alpha * scale == 1 else neg * (alpha * scale))


def _softmax(x, dim, half_to_float=False):
    """A softmax over a dim other than the last (an attention pooling over tokens, ``scores.softmax(dim=1)``) as
    the softmax over the last dim between two transposes: XNNPACK's softmax takes only the last dim."""
    if half_to_float or not x.is_floating_point() or x.dim() < 2 or dim % x.dim() == x.dim() - 1:
        return NotImplemented
    return torch.softmax(x.transpose(dim, -1), -1).transpose(dim, -1)


def _softmax_int(x, dim, dtype=None):   # softmax.int, as torch.export keeps it
    return NotImplemented if dtype is not None else _softmax(x, dim)


def _roll(x, shifts, dims=()):
    """``torch.roll`` as slices and a concatenation (its decomposition gathers with an index it computes)."""
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if len(shifts) != len(dims) or not dims or not _static(x.shape):
        return NotImplemented
    for s, d in zip(shifts, dims):
        n = x.shape[d]
        s %= n
        if s:
            x = torch.cat([x.narrow(d, n - s, s), x.narrow(d, 0, n - s)], dim=d)
    return x


def _strided_slice(x, dim=0, start=None, end=None, step=1):
    """``x[start:end:step]`` as step-1 slices and reshapes (XNNPACK's slice has no step: Swin's patch merging
    takes ``x[:, 0::2, 0::2]``, LeViT's subsampling ``x[:, ::2, ::2]`` of a 7 x 7 map). Data movement only:
    exact. The selected elements are the first column of the range reshaped to [count, step] when the
    dim holds that many, else a column of the whole dim reshaped to [n / step, step] when ``step`` divides it,
    else that with the last element concatenated."""
    if step == 1 or not _static(x.shape):
        return NotImplemented
    d = dim % x.dim()
    n = x.shape[d]
    start = 0 if start is None else min(max(start + n if start < 0 else start, 0), n)
    end = n if end is None else min(max(end + n if end < 0 else end, 0), n)
    if end <= start:
        return NotImplemented
    count = -(-(end - start) // step)
    before, after = x.shape[:d], x.shape[d + 1:]

    def column(t: torch.Tensor, rows: int, col: int) -> torch.Tensor:   # [.., rows * step, ..] -> column col
        return t.reshape(*before, rows, step, *after).narrow(d + 1, col, 1).reshape(*before, rows, *after)
    if start + count * step <= n:
        return column(x if (start, count * step) == (0, n) else x.narrow(d, start, count * step), count, 0)
    if n % step == 0:
        out = column(x, n // step, start % step)
        return out if count == n // step else out.narrow(d, start // step, count)
    head = column(x.narrow(d, start, (count - 1) * step), count - 1, 0) if count > 1 else None
    last = x.narrow(d, start + (count - 1) * step, 1)
    return last if head is None else torch.cat([head, last], dim=d)


def _split(x, split_size, dim=0):
    """``split`` / ``split_with_sizes`` as step-1 slices (XNNPACK has no split: LeViT's q/k/v)."""
    if not _static(x.shape):
        return NotImplemented
    n = x.shape[dim]
    sizes = list(split_size) if isinstance(split_size, (list, tuple)) else (
        [split_size] * (n // split_size) + ([n % split_size] if n % split_size else []))
    if sum(sizes) != n:
        return NotImplemented
    out, start = [], 0
    for s in sizes:
        out.append(x.narrow(dim, start, s))
        start += s
    return out


def _adaptive_avg_pool1d(x, output_size):
    if list(output_size) != [1]:
        return NotImplemented
    return x.mean(-1, keepdim=True)


def _adaptive_windows(n: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """The [out, n] averaging matrix of an adaptive pooling of length ``n`` to ``out``: row i averages
    ``[floor(i * n / out), ceil((i + 1) * n / out))``, PyTorch's windows."""
    i = torch.arange(out, device=like.device).unsqueeze(1)   # traced ops on aranges: folded into a constant
    j = torch.arange(n, device=like.device).unsqueeze(0)
    lo = torch.div(i * n, out, rounding_mode="floor")
    hi = torch.div((i + 1) * n + out - 1, out, rounding_mode="floor")
    inside = (j >= lo) & (j < hi)
    return inside.to(like.dtype) / (hi - lo).to(like.dtype)


def _adaptive_avg_pool2d(x, output_size):
    """``adaptive_avg_pool2d`` to a size other than 1x1 (VGG's 7x7 head, a pyramid-pooling module's 2/3/6 bins),
    which ExecuTorch's XNNPACK partitioner has no config for: the map itself when the size is its own; an
    ``avg_pool2d`` when the size divides the map (the same windows, so the same sums and counts); otherwise an
    averaging linear layer over each axis (overlapping windows; equal up to fp32 rounding)."""
    if x.dim() not in (3, 4) or not x.is_floating_point() or not _static(x.shape):
        return NotImplemented
    h, w = x.shape[-2:]
    oh, ow = (output_size[0] or h), (output_size[-1] or w)
    if (oh, ow) == (1, 1):
        return NotImplemented   # the global mean: delegated as it is
    if (oh, ow) == (h, w):
        return x.clone()
    if h % oh == 0 and w % ow == 0:
        return F.avg_pool2d(x, (h // oh, w // ow))
    y = F.linear(x, _adaptive_windows(w, ow, x))
    return F.linear(y.transpose(-1, -2), _adaptive_windows(h, oh, x)).transpose(-1, -2)


def _whole_input_pool(x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                      divisor_override=None):
    """An ``avg_pool2d`` whose one window covers the whole map (transformers' EfficientNet pooler:
    ``AvgPool2d(1280, ceil_mode=True)`` on 7x7): PyTorch clips the window to the map, so it is the global mean."""
    k = [kernel_size] * 2 if isinstance(kernel_size, int) else list(kernel_size) * (2 // len(kernel_size))
    pad = [padding] * 2 if isinstance(padding, int) else list(padding) * (2 // max(len(padding), 1))
    if divisor_override or any(pad) or x.dim() != 4 or not _static(x.shape):
        return NotImplemented
    if k[0] < x.shape[-2] or k[1] < x.shape[-1] or (not ceil_mode and k != list(x.shape[-2:])):
        return NotImplemented
    return x.mean([-2, -1], keepdim=True)


def _softplus(x, beta=1.0, threshold=20.0):
    """Softplus as ``relu(z) + log(1 + exp(-|z|))`` (``z = beta * x``), ops XNNPACK delegates; ExecuTorch's
    decomposition leaves ``log1p``/``where`` on portable kernels. Above ATen's threshold (when it is at least 20)
    the log term is under half an fp32 ulp of ``z``, so the result is ``z`` as ATen returns; below, ``log(1 + e)``
    where ATen takes ``log1p(e)``: equal up to fp32 rounding of the result (about 1e-7 absolute)."""
    if not x.is_floating_point() or threshold < 20:
        return NotImplemented
    z = x if beta == 1 else x * beta
    y = torch.relu(z) + torch.log(torch.exp(-torch.abs(z)) + 1.0)
    return y if beta == 1 else y / beta


def _mish(x):
    """Mish, ``x * tanh(softplus(x))`` (CSP/YOLO-style CNNs), with the softplus form above."""
    return NotImplemented if not x.is_floating_point() else x * torch.tanh(_softplus(x))


def _nearest_upsample(x, output_size, scale_factors):
    """``upsample_nearest2d`` by power-of-two factors (FPN and U-Net decoders; XNNPACK has no nearest resize) as a
    broadcasting product with ones: each pixel repeated ``f`` times. ATen's source index there is ``d >> 1`` or
    ``floor(d * 2**-k)`` (exact in float), i.e. ``d // f``: the same pixels."""
    if x.dim() != 4 or not _static(x.shape) or not x.is_floating_point():
        return NotImplemented
    n, c, h, w = x.shape
    if output_size is not None:
        out = list(output_size)
    elif scale_factors is not None and all(float(s).is_integer() for s in scale_factors):
        out = [int(h * scale_factors[0]), int(w * scale_factors[1])]
    else:
        return NotImplemented
    fh, fw = out[0] // h, out[1] // w
    if out != [h * fh, w * fw] or any(f < 1 or f & (f - 1) for f in (fh, fw)):
        return NotImplemented
    ones = torch.ones((1, 1, 1, fh, 1, fw), dtype=x.dtype, device=x.device)
    return (x.reshape(n, c, h, 1, w, 1) * ones).reshape(n, c, h * fh, w * fw)


def _pairs(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v) * (2 // len(v))


def _patches(kernel_size, dilation, padding, stride) -> list[int] | None:
    """The patch size when an unfold/fold cuts non-overlapping patches (kernel == stride, no padding/dilation)."""
    k = _pairs(kernel_size)
    return k if _pairs(stride) == k and _pairs(dilation) == [1, 1] and _pairs(padding) == [0, 0] else None


def _im2col(x, kernel_size, dilation, padding, stride):
    """``F.unfold`` into non-overlapping patches as a reshape and a transpose (MobileViTV2's unfolding;
    its decomposition gathers with computed indices on portable kernels)."""
    k = _patches(kernel_size, dilation, padding, stride)
    if k is None or x.dim() != 4 or not _static(x.shape) or x.shape[2] % k[0] or x.shape[3] % k[1]:
        return NotImplemented
    b, c, h, w = x.shape
    p = x.reshape(b, c, h // k[0], k[0], w // k[1], k[1]).permute(0, 1, 3, 5, 2, 4)
    return p.reshape(b, c * k[0] * k[1], (h // k[0]) * (w // k[1]))


def _col2im(x, output_size, kernel_size, dilation, padding, stride):
    """``F.fold`` of non-overlapping patches (the inverse of :func:`_im2col`): nothing overlaps, nothing is summed."""
    k, (h, w) = _patches(kernel_size, dilation, padding, stride), _pairs(output_size)
    if k is None or x.dim() != 3 or not _static(x.shape) or h % k[0] or w % k[1]:
        return NotImplemented
    b, ckk, n = x.shape
    c = ckk // (k[0] * k[1])
    if c * k[0] * k[1] != ckk or n != (h // k[0]) * (w // k[1]):
        return NotImplemented
    p = x.reshape(b, c, k[0], k[1], h // k[0], w // k[1]).permute(0, 1, 4, 2, 5, 3)
    return p.reshape(b, c, h, w)


MAX_REFLECT = 16   # a reflect pad is written as this many one-element slices at most per side


def _reflect_pad(x, pad, mode="constant", value=None):
    """``F.pad(mode="reflect")`` of the last dims as one-element slices and concatenations, one dim after the other
    (reflection is separable): EnCodec's convolutions, Swin2SR's pad of the image to its window size (which is 0
    when the size fits: the map itself). Its decomposition indexes with computed positions on portable kernels."""
    if mode != "reflect" or not pad or len(pad) % 2 or len(pad) // 2 > x.dim() or not _static(x.shape):
        return NotImplemented
    pairs = [(pad[2 * i], pad[2 * i + 1], x.dim() - 1 - i) for i in range(len(pad) // 2)]
    if any(max(lo, hi) > MAX_REFLECT or max(lo, hi) >= x.shape[d] or min(lo, hi) < 0 for lo, hi, d in pairs):
        return NotImplemented
    for left, right, d in pairs:
        n = x.shape[d]
        parts = [x.narrow(d, i, 1) for i in range(left, 0, -1)] + [x]
        parts += [x.narrow(d, n - 2 - i, 1) for i in range(right)]
        x = torch.cat(parts, dim=d) if len(parts) > 1 else x
    return x


def whole_input_pools(program: Any) -> tuple[Any, int]:
    """(program with :func:`_whole_input_pool` applied, how many pools were rewritten); ``program`` itself is
    returned when it has none (OpenVINO's frontend rejects a kernel larger than the map)."""
    done = []

    def pool(*args, **kwargs):
        out = _whole_input_pool(*args, **kwargs)
        if out is not NotImplemented:
            done.append(1)
        return out
    if not counts(program, {aten.avg_pool2d.default}):
        return program, 0
    out = program.run_decompositions({aten.avg_pool2d.default: pool})
    return (out, len(done)) if done else (program, 0)


def xnnpack_decompositions(*, with_constants: bool = True) -> dict:
    """The decomposition table (``ExportedProgram.run_decompositions``) of the forms XNNPACK delegates.

    ``with_constants=False`` keeps only the rewrites that create no constant (for quantized programs, which are
    not constant-folded: folding would turn quantized weights back into float ones).
    """
    table = {aten.scaled_dot_product_attention.default: _sdpa, aten.roll.default: _roll,
             aten.slice.Tensor: _strided_slice, aten.avg_pool2d.default: _whole_input_pool,
             aten.split_with_sizes.default: _split, aten.split.Tensor: _split, aten.im2col.default: _im2col,
             aten.col2im.default: _col2im, aten.pad.default: _reflect_pad,
             aten.pow.Tensor_Scalar: functools.partial(_pow, constants=with_constants), aten.elu.default: _elu,
             aten.selu.default: _selu, aten.celu.default: _celu, aten.softplus.default: _softplus,
             aten.mish.default: _mish, aten.hardsigmoid.default: _hardsigmoid, aten._softmax.default: _softmax,
             aten.softmax.int: _softmax_int}
    if with_constants:
        table.update({aten.layer_norm.default: _layer_norm, aten.group_norm.default: _group_norm,
                      aten.mean.dim: _mean, aten.adaptive_avg_pool1d.default: _adaptive_avg_pool1d,
                      aten.sum.dim_IntList: _sum, aten.linalg_vector_norm.default: _vector_norm,
                      aten.var.correction: _var, aten.std.correction: _std, aten.var.dim: _var_dim,
                      aten.std.dim: _std_dim, aten.amax.default: _amax,
                      aten.upsample_nearest2d.vec: _nearest_upsample,
                      aten.adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
                      aten._adaptive_avg_pool2d.default: _adaptive_avg_pool2d})
    return table


def quantized(program: Any) -> bool:
    """Does the program hold quantize/dequantize ops (PT2E, torchao)?"""
    return any(n.op == "call_function" and "quantize" in str(n.target) for n in program.graph.nodes)


def fold_constants(program: Any) -> int:
    """Constant-propagate ``program`` in place (ExecuTorch's ``constant_prop_pass``); returns nodes folded."""
    from executorch.exir.passes import constant_prop_pass as cp
    before = sum(1 for n in program.graph.nodes if n.op == "call_function")
    # its argument check stops at a `.contiguous()` (a memory_format argument is not among its primitives):
    # BEiT's relative-position index was then rebuilt at run time on portable kernels in every layer
    primitives = cp._PRIMITIVE_TYPES
    cp._PRIMITIVE_TYPES = (*primitives, torch.memory_format)
    try:
        cp.constant_prop_pass(program)
    finally:
        cp._PRIMITIVE_TYPES = primitives
    _own_storage(program)
    return before - sum(1 for n in program.graph.nodes if n.op == "call_function")


def constant_values(program: Any, parameters: bool = False) -> dict[str, torch.Tensor]:
    """{placeholder name: value} for the inputs of ``program`` that are its buffers and lifted constants (and
    its parameters, with ``parameters``). Non-persistent buffers and lifted constants (a LayerNorm's averaging
    matrix, a folded index) live in ``program.constants``, the others in its state dict."""
    sig = program.graph_signature
    names = {**(sig.inputs_to_parameters if parameters else {}), **sig.inputs_to_buffers,
             **sig.inputs_to_lifted_tensor_constants}
    known = {**program.constants, **program.state_dict}
    return {ph: known[t] for ph, t in names.items() if isinstance(known.get(t), torch.Tensor)}


def _own_storage(program: Any) -> None:
    """Give each constant that is a view of another tensor's storage (a folded ``in_proj_weight[:E]``: the q rows
    of ``nn.MultiheadAttention``'s packed projection) storage of its own. ExecuTorch serializes a constant from its
    storage, not its view: q, k and v all read the packed weight's first rows, and the artifact failed its parity
    check."""
    for table in (program.constants, program.state_dict):
        for name, t in list(table.items()):
            if isinstance(t, torch.Tensor) and (t.storage_offset() or
                                                t.untyped_storage().nbytes() != t.numel() * t.element_size()):
                # the same strides: a folded constant a later view reads as laid out (DETR's permuted queries)
                owned = t.detach().clone(memory_format=torch.preserve_format)
                table[name] = torch.nn.Parameter(owned, requires_grad=False) if isinstance(t, torch.nn.Parameter) \
                    else owned


def graph_copy(program: Any) -> Any:
    """A copy of ``program`` whose graph can be rewritten without changing the caller's; its weights and
    constants are the caller's tensors (shared, not copied: a rewrite adds constants, it does not change them)."""
    tensors = (*program.state_dict.values(), *program.constants.values())
    return copy.deepcopy(program, {id(t): t for t in tensors})


def counts(program: Any, ops: dict) -> dict[str, int]:
    """How many calls of each op in ``ops`` the program makes, by op name."""
    out: dict[str, int] = {}
    for n in program.graph.nodes:
        if n.op == "call_function" and n.target in ops:
            name = str(n.target).replace("aten.", "").replace(".default", "")
            out[name] = out.get(name, 0) + 1
    return out


# elementwise ops that broadcast their tensor operands (numpy rules), as XNNPACK's binary ops do
_BROADCASTING = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.maximum.default,
                 aten.minimum.default}


def _shape(node: Any) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) and _static(val.shape) else None


def _repeated_shape(shape: Any, repeats: Any) -> list[int] | None:
    """The shape ``repeat(repeats)`` gives a tensor of ``shape`` when that repeat is an expand (every repeated dim
    of size 1, new leading dims aside), else None. ``q.unsqueeze(1).repeat(1, n, 1)`` (SwiftFormer's additive
    attention) is ``q.unsqueeze(1).expand(-1, n, -1)``."""
    reps = list(repeats)
    if shape is None or len(reps) < len(shape):
        return None
    lead, tail = reps[:len(reps) - len(shape)], reps[len(reps) - len(shape):]
    if not all(r == 1 or d == 1 for d, r in zip(shape, tail)):
        return None
    return [*lead, *(d * r for d, r in zip(shape, tail))]


def _is_expand(node: Any) -> bool:
    """An ``expand``, or a ``repeat`` that is one."""
    return node.op == "call_function" and (node.target is aten.expand.default or (
        node.target is aten.repeat.default and _repeated_shape(_shape(node.args[0]), node.args[1]) is not None))


def broadcast_expands(program: Any) -> int:
    """Drop each ``expand`` (or ``repeat`` that is one) whose every reader is a broadcasting elementwise op that
    gives the same output from the unexpanded tensor (in place; returns how many were dropped).

    ``context.expand_as(value) * value`` (MobileViTV2's linear attention) is ``context * value``: XNNPACK's binary
    ops broadcast, but it has no expand or repeat, which would run on a portable kernel and split the graph. The
    same values reach the same op, so the numbers are unchanged.
    """
    graph, dropped = program.graph, 0
    for node in list(graph.nodes):
        if not _is_expand(node) or not node.users:
            continue
        src = node.args[0]
        if _shape(src) is None or _shape(node) is None:
            continue

        def same_output(user) -> bool:   # the user's output shape, with src in place of the expand
            if user.op != "call_function" or user.target not in _BROADCASTING or _shape(user) is None:
                return False
            shapes = [_shape(src) if a is node else (_shape(a) if isinstance(a, torch.fx.Node) else ())
                      for a in user.args]
            return None not in shapes and tuple(torch.broadcast_shapes(*shapes)) == _shape(user)
        if all(same_output(u) for u in node.users):
            node.replace_all_uses_with(src)
            graph.erase_node(node)
            dropped += 1
    if dropped:
        program.graph_module.recompile()
    return dropped


def _float_expands(program: Any) -> int:
    return sum(1 for n in program.graph.nodes if _is_expand(n)
               and isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].is_floating_point())


def _expand_by_ones(x, size, *, implicit=False):
    """An ``expand`` read by a concatenation (DPT's class-token readout ``cls.expand_as(tokens)``) as ``x * ones``:
    XNNPACK has no expand, its multiply broadcasts, and ``x * 1`` is ``x`` (NaN and -0.0 included)."""
    if not x.is_floating_point() or not _static(x.shape, size):
        return NotImplemented
    shape = [x.shape[i - (len(size) - x.dim())] if s == -1 else s for i, s in enumerate(size)]
    return x * torch.ones(shape, dtype=x.dtype, device=x.device)


def _repeat_by_ones(x, repeats):
    shape = _repeated_shape(x.shape, repeats) if x.is_floating_point() and _static(x.shape) else None
    return NotImplemented if shape is None else x * torch.ones(shape, dtype=x.dtype, device=x.device)


def float_scalars(program: Any) -> int:
    """Write the integer scalar of a float tensor's add/sub/mul/div as a float (in place; returns how many):
    ``x + 0`` (FocalNet's ``ctx_all = 0; ctx_all = ctx_all + ...``), ``x / 2`` (SwiftFormer's head average).

    PyTorch computes them alike (the scalar is converted to the tensor's float type), but ExecuTorch's edge
    dialect lifts an integer scalar into an int64 tensor constant and casts it, and XNNPACK refuses the cast
    (``_to_dim_order_copy``: invalid dtype), which runs on a portable kernel and splits the graph. Integers
    beyond 2**24 (not exact in fp32) are left alone.
    """
    graph, done = program.graph, 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _ARITHMETIC or len(node.args) != 2:
            continue
        a, b = node.args
        val = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        if (isinstance(val, torch.Tensor) and val.is_floating_point() and type(b) is int
                and abs(b) <= 2 ** 24):
            node.args = (a, float(b))
            done += 1
    if done:
        program.graph_module.recompile()
    return done


_ARITHMETIC = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor}


def to_xnnpack_forms(program: Any, details: dict[str, Any] | None = None) -> Any:
    """A new program with :func:`xnnpack_decompositions` applied and its constants folded (float programs).

    ``details["program_rewrites"]`` records what was rewritten and how many nodes were folded.
    """
    quant = quantized(program)
    regions = 0
    if not quant:
        from edge.passes.channels_last import channels_last_regions
        if channels_last_regions(program, count_only=True):   # rewritten on a copy: the caller's is not changed
            program = graph_copy(program)
            regions = channels_last_regions(program)
    table = xnnpack_decompositions(with_constants=not quant)
    if not quant and not _indices_read(program):
        table[aten.max.dim] = _max_dim
    before = counts(program, table)
    out = program.run_decompositions(table)
    after = counts(out, table)
    # calls gone from the program (a form that emits the same op, a mean or a slice, is not counted)
    rec: dict[str, Any] = {"decomposed": {k: v - after.get(k, 0) for k, v in before.items() if v > after.get(k, 0)}}
    if regions:
        rec["decomposed"]["permute to channels-last and back around per-channel ops (written on the map)"] = regions
    expands = broadcast_expands(out)
    if expands:
        rec["decomposed"]["expand/repeat (into a broadcasting op)"] = expands
    left = 0 if quant else _float_expands(out)
    if left:   # the ones no broadcasting reader absorbs: a product with ones
        out = out.run_decompositions({aten.expand.default: _expand_by_ones, aten.repeat.default: _repeat_by_ones})
        rec["decomposed"]["expand/repeat (a product with ones)"] = left - _float_expands(out)
    scalars = float_scalars(out)
    if scalars:
        rec["float_scalars"] = scalars
    folded = 0
    if not quant:
        from edge.passes.sdpa_masks import bool_mask_calls, resolve_constant_masks
        if bool_mask_calls(out):   # masks built from constants (DETR's all-True padding mask): fold, read, resolve
            folded = fold_constants(out)
            dropped, additive = resolve_constant_masks(out)
            if dropped or additive:
                sdpa = aten.scaled_dot_product_attention.default
                out = out.run_decompositions({sdpa: table[sdpa]})
            for k, v in (("a constant all-True boolean mask dropped", dropped),
                         ("a constant boolean mask as an additive -inf mask", additive)):
                if v:
                    rec["decomposed"][f"scaled_dot_product_attention ({k})"] = v
    if not quant:
        from edge.passes.channels_last import channel_affines
        affines = channel_affines(out)
        if affines:
            rec["decomposed"]["per-channel product / sum of a map (a depthwise 1 x 1 convolution)"] = affines
    kept = counts(out, {aten.scaled_dot_product_attention.default})
    if kept:
        rec["kept"] = {k: f"{v} call(s) left to ExecuTorch's decomposition: a boolean mask, is_causal, grouped-query "
                          f"attention or a dynamic shape" for k, v in kept.items()}
    rec["constants_folded"] = 0 if quant else folded + fold_constants(out)
    if quant:
        rec["constants_folded_skipped"] = "quantized program: folding would turn its quantized weights into floats"
    if details is not None:
        details["program_rewrites"] = rec
    return out
