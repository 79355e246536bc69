"""Memory-lean VisionGRU forms: stage-1 work in stripes of tokens, the scan state carried between stripes.

Why. At 1024 px VisionGRU-Ti's stage 1 holds 65536 tokens; the chunked minGRU scan
(:class:`edge.passes.recurrent.ChunkedMinGRU`) computes its gates, states and output projection for the
whole sequence at once, so a runtime keeps several full-length [1, 65536, 144] fp32 tensors alive (38 MB
each), and the block's MLP hidden layer is [1, 65536, 288] (75 MB). The stem's first convolution is
[1, 36, 512, 512] (38 MB) with its LayerNorm and GELU behind it. The artifact peaked at 2.5x DeiT-S's
memory although it needs half the MACs.

The ``striped`` form (pass ``visiongru_stripes``, switched on by the pass option ``mingru_form="striped"``;
``mingru_stripe`` sets the tokens per stripe, default :data:`STRIPE`) computes the same numbers with
stripe-sized intermediates:

* :class:`StripedMinGRU`: gates, scan and ``to_out`` of one stripe at a time; the state after a stripe
  enters the next one (for the reverse direction the stripes run last to first, the state after a
  stripe's first token entering the stripe before it). Exact: the same recurrence, cut at stripe edges.
* :class:`StripedBlock2DGRU`: a 2DGRU block whose LayerNorm + depthwise conv run on the whole map (the
  reverse scan reads every token), whose forward minGRU runs stripe by stripe, and whose reverse minGRU,
  residual sum and MLP are finished stripe by stripe from the last stripe to the first.
* :class:`StripedTokenizer`: the conv stem in bands of output rows; each band reads the input rows its
  3x3 stride-2 convolutions need (a halo of one row), zero padding only at the image's top and bottom.

Blocks with at most one stripe of tokens (stage 3-4, and everything at 224 px with the default stripe)
keep the chunked form unchanged. Everything is static slices, matmuls, elementwise ops and ``cat``: it
converts wherever the chunked scan converts.

The ``loop`` form runs each level of the chunked scan as one ``torch.scan`` loop (:func:`loop_linear_scan`).
The ``stripe_loop`` form (:class:`LoopStripedBlock2DGRU`) puts the stripes themselves in a loop: a long
block's forward minGRU is one ``torch.scan`` over its stripes (the state is the carry), its reverse minGRU,
residual sum and MLP a second one from the last stripe to the first; blocks of one stripe run the loop
form. The graph holds one stripe's nodes, and the runtime keeps one stripe's intermediates alive
(ONNX Runtime, VisionGRU-Ti at 512 px: 41 MiB of activations over the loaded session, against 176 MiB for
the loop form). Where whole rows of the token grid make stripes of more than half ``mingru_stripe`` tokens
(the row count dividing H), the stripes are whole rows and each loop makes its stripe's
y = DWConv(LN(x)) itself from the stripe and the rows around it, so neither y nor the convolution's
full-size temporaries exist and no stripe is cut short (a short last stripe is sliced off full-length
tensors: copies). ONNX Runtime, stage 1 of VisionGRU-Ti alone at 1248 px (97,344 tokens): 369 MiB peak
with 4096-token stripes and a tail, 270 with whole stripes of 4056, 179 with whole rows.
ONNX ``Scan``, OpenVINO ``TensorIterator`` (through ONNX; OpenVINO takes no loop inside another, so a stripe's own scan stays unrolled), ExecuTorch's loop with one XNNPACK delegate per stripe
(its reverse loops flip their inputs and outputs on portable kernels; ``striped`` stays fully delegated).
Core ML has no loop: its converter refuses ``loop`` and ``stripe_loop`` and names ``striped``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import UsageError
from edge.passes import OptimizeContext, declare_form, register_pass
from edge.passes.recurrent import CHUNK, ChunkedMinGRU, _entering, chunked_linear_scan, end_state

# Tokens per stripe. The live intermediates of a stripe are a few [stripe, 2 * dim] tensors (stage 1 of
# VisionGRU-Ti: 2.4 MB each at 4096 tokens); every stripe adds one copy of the scan's nodes to the graph.
STRIPE = 4096
FORMS = ("chunked", "striped", "loop", "stripe_loop")
# A converter may declare ``forms = {"mingru_form": "striped"}``; the pass option of the same name overrides it.
declare_form("mingru_form", "chunked", FORMS, "striped: VisionGRU's stem and long 2DGRU blocks in stripes of "
             "tokens, the scan state carried between stripes (exact, less peak memory at high resolution); "
             "loop: each level of the chunked minGRU scan as one torch.scan loop (ONNX Scan; far fewer nodes); "
             "stripe_loop: the long blocks' stripes as torch.scan loops, the other scans as in loop")


def stripes(n: int, stripe: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive stripes of ``stripe`` tokens covering ``n`` (the last may be shorter)."""
    if stripe < 1:
        raise UsageError(f"mingru_stripe must be >= 1 token, got {stripe}")
    return [(s, min(s + stripe, n)) for s in range(0, n, stripe)]


class StripedMinGRU(nn.Module):
    """A :class:`ChunkedMinGRU` run over stripes of ``stripe`` tokens with its state carried between them.

    ``forward(x, h0, return_state)`` is the wrapped layer's (same outputs at fp32 rounding); each stripe's
    gates, states and output projection are stripe-sized. :meth:`stripe_forward` runs one stripe, for
    callers that finish the stripe's output at once (:class:`StripedBlock2DGRU`).

    Example:
        >>> lean = StripedMinGRU(ChunkedMinGRU(min_gru), stripe=4096)
        >>> y = lean(x)          # == ChunkedMinGRU(min_gru)(x)
    """

    def __init__(self, inner: ChunkedMinGRU, stripe: int = STRIPE):
        super().__init__()
        if stripe < 1:
            raise UsageError(f"mingru_stripe must be >= 1 token, got {stripe}")
        self.inner, self.stripe, self.reverse = inner, int(stripe), inner.reverse

    def order(self, n: int) -> list[tuple[int, tuple[int, int]]]:
        """(index, (start, end)) of the stripes in scan order (last to first for a reverse layer)."""
        idx = list(enumerate(stripes(n, self.stripe)))
        return idx[::-1] if self.reverse else idx

    def stripe_forward(self, x_s: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One stripe [B, n, dim] from the state entering it: (output [B, n, dim], state leaving it)."""
        return self.inner(x_s, h, return_state=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, return_state: bool = False):
        outs: list[torch.Tensor | None] = [None] * len(stripes(x.shape[1], self.stripe))
        h = h0
        for i, (s, e) in self.order(x.shape[1]):
            outs[i], h = self.stripe_forward(x[:, s:e], h)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return (out, h) if return_state else out


class StripedBlock2DGRU(nn.Module):
    """edge.zoo.visiongru.Block2DGRU with stripe-sized intermediates (same submodules, same numbers).

    x + minGRU_fwd(y) + minGRU_bwd(y) with y = DWConv(LN(x)), then x + MLP(LN(x)): y is computed whole,
    the forward scan runs stripe by stripe (its outputs kept: [N, dim] in all), then the reverse scan runs
    from the last stripe to the first and each stripe's residual sum and MLP are finished at once. Full
    length tensors alive at the peak: x, y, the forward outputs and the finished stripes (all [N, dim]).
    """

    def __init__(self, block: nn.Module, stripe: int = STRIPE):
        super().__init__()
        if not (isinstance(block.min_gru_1, ChunkedMinGRU) and isinstance(block.min_gru_2, ChunkedMinGRU)
                and block.min_gru_2.reverse and not block.min_gru_1.reverse):
            raise UsageError("the striped VisionGRU form needs the chunked minGRU scan first (pass mingru_scan)")
        for name in ("norm", "dw_conv", "norm2", "projection1", "activation", "projection2"):
            setattr(self, name, getattr(block, name))
        self.min_gru_1 = StripedMinGRU(block.min_gru_1, stripe)
        self.min_gru_2 = StripedMinGRU(block.min_gru_2, stripe)
        self.stripe = int(stripe)

    def _mlp(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.projection2(self.activation(self.projection1(self.norm2(z))))

    def _mixed(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """y = DWConv(LN(x)) [B, N, C], the input of both scans (whole: the reverse scan reads every token)."""
        B, N, C = x.shape
        y = self.norm(x).reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)
        return self.dw_conv(y).permute(0, 2, 3, 1).reshape(B, N, C)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        N = x.shape[1]
        y = self._mixed(x, hw)
        fwd = self.min_gru_1(y)
        outs: list[torch.Tensor | None] = [None] * len(stripes(N, self.stripe))
        h = None
        for i, (s, e) in self.min_gru_2.order(N):
            b_s, h = self.min_gru_2.stripe_forward(y[:, s:e], h)
            outs[i] = self._mlp(x[:, s:e] + fwd[:, s:e] + b_s)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _conv_rows(conv: nn.Conv2d, x: torch.Tensor, first: int, height: int, o0: int, o1: int) -> torch.Tensor:
    """Output rows [o0, o1) of ``conv`` applied to a full input of ``height`` rows, from ``x`` holding its
    rows [first, first + x.shape[2]). Rows above 0 / below ``height`` are the conv's zero padding; columns
    keep the conv's own padding."""
    (k, _), (s, _), (p, pw) = conv.kernel_size, conv.stride, conv.padding
    lo, hi = o0 * s - p, (o1 - 1) * s - p + k          # input rows read, [lo, hi), padding included
    top, bottom = max(0, -lo), max(0, hi - height)
    rows = x[:, :, max(lo, 0) - first:min(hi, height) - first]
    if top or bottom:
        rows = F.pad(rows, (0, 0, top, bottom))
    return F.conv2d(rows, conv.weight, conv.bias, (s, conv.stride[1]), (0, pw), conv.dilation, conv.groups)


def _rows_needed(conv: nn.Conv2d, o0: int, o1: int, height: int) -> tuple[int, int]:
    """The input rows [start, end) (inside [0, height)) that output rows [o0, o1) of ``conv`` read."""
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    return max(o0 * s - p, 0), min((o1 - 1) * s - p + k, height)


def _out_size(conv: nn.Conv2d, n: int) -> int:
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    return (n + 2 * p - k) // s + 1


class StripedTokenizer(nn.Module):
    """edge.zoo.visiongru.Tokenizer (Conv s2 -> LN -> GELU -> Conv s2 -> LN) in bands of output rows.

    Each band of ``rows`` output rows reads only the first convolution's rows it needs (its own input
    rows plus a one-row halo), so the [36, H/2, W/2] map of the first convolution is never whole.
    """

    def __init__(self, stem: nn.Module, stripe: int = STRIPE):
        super().__init__()
        for name in ("conv1", "norm1", "gelu", "conv2", "norm2"):
            setattr(self, name, getattr(stem, name))
        for conv in (self.conv1, self.conv2):
            if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                raise UsageError("the striped stem needs zero-padded, undilated convolutions")
        self.stripe = int(stripe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H = x.shape[2]
        H1 = _out_size(self.conv1, H)
        H2, W2 = _out_size(self.conv2, H1), _out_size(self.conv2, _out_size(self.conv1, x.shape[3]))
        rows = max(1, self.stripe // max(W2, 1))
        bands = []
        for o0, o1 in stripes(H2, rows):
            q0, q1 = _rows_needed(self.conv2, o0, o1, H1)      # first-conv rows this band reads
            y = self.gelu(self.norm1(_conv_rows(self.conv1, x, 0, H, q0, q1)))
            bands.append(self.norm2(_conv_rows(self.conv2, y, q0, H1, o0, o1)))
        return bands[0] if len(bands) == 1 else torch.cat(bands, dim=2)


# ------------------------------------------------------------------------------------------------ loop form
# The carry is the first operand of each product (h * a_t, not a_t * h; the same number): OpenVINO 2026.4's
# CPU plugin computes a TensorIterator body whose first op reads a sliced input first, carry second, wrongly
# (ONNX Scan converted by its ONNX frontend: 1e1 off on a 5-step h' = a * h + b; h * a + b is exact).
def _ends_body(carry, xs):
    h, p = carry
    a_t, b_t = xs
    # scan needs a stacked output; a [B, 1, 1] sliver of the gate costs nothing
    return (h * a_t + b_t, p * a_t), a_t[:, :1, :1].clone()


def _steps_body(h, xs):
    a_t, b_t = xs
    h = h * a_t + b_t
    return h, h.clone()   # a scan output must not alias the carry


def loop_linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk: int = CHUNK,
                     reverse: bool = False) -> torch.Tensor:
    """:func:`edge.passes.recurrent.chunked_linear_scan` with each level's ``chunk`` steps as one
    ``torch.scan`` loop (ONNX ``Scan``; the body is one step over all chunks) instead of unrolled steps.

    The same products and sums in the same order: the same numbers. The graph holds a few nodes per level
    instead of ~10 per step, so a VisionGRU graph is some 10x smaller: the runtime's resident memory and
    the conversion time follow the node count (see the module docstring). The N % chunk tokens left over
    run unrolled, as in the chunked scan.
    """
    from torch._higher_order_ops.scan import scan   # torch's loop op: only this form needs it
    B, N, D = a.shape
    if N <= chunk:
        return chunked_linear_scan(a, b, h0, chunk, reverse)
    C = N // chunk
    M, r = C * chunk, N - C * chunk
    am, bm = (a, b) if not r else ((a[:, r:], b[:, r:]) if reverse else (a[:, :M], b[:, :M]))
    # step-major [chunk, B, C, D]: iteration j reads step j of every chunk
    a4 = am.reshape(B, C, chunk, D).permute(2, 0, 1, 3)
    b4 = bm.reshape(B, C, chunk, D).permute(2, 0, 1, 3)
    zero = a4[0] - a4[0]
    (h_end, p_end), _ = scan(_ends_body, (zero, zero + 1.0), (a4, b4), reverse=reverse)
    ends = loop_linear_scan(p_end, h_end, h0, chunk, reverse)          # [B, C, D]: the state after chunk c
    _, hs = scan(_steps_body, _entering(ends, h0, reverse), (a4, b4), reverse=reverse)
    h = hs.permute(1, 2, 0, 3).reshape(B, M, D)
    if not r:
        return h
    rest = slice(0, r) if reverse else slice(M, N)
    tail = chunked_linear_scan(a[:, rest], b[:, rest], end_state(h, reverse), chunk, reverse)
    return torch.cat([tail, h] if reverse else [h, tail], dim=1)


def loop_forward(m: ChunkedMinGRU, x: torch.Tensor, h0: torch.Tensor | None = None, return_state: bool = False):
    """``m``'s forward with its scan as :func:`loop_linear_scan` (token order, no position-major)."""
    a, b = m._gates(x)
    h = loop_linear_scan(a, b, h0, m.chunk, m.reverse)
    out = m.to_out(h)
    return (out, end_state(h, m.reverse)) if return_state else out


class LoopMinGRU(ChunkedMinGRU):
    """A :class:`ChunkedMinGRU` whose scan is :func:`loop_linear_scan` (:func:`loop_forward`)."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, return_state: bool = False):
        return loop_forward(self, x, h0, return_state)


def _stacked(t: torch.Tensor, k: int, m: int) -> torch.Tensor:
    """The first ``m`` tokens of [B, N, C] stripe-major, [k, B, m / k, C]: a loop's iteration i reads stripe i.

    At batch 1 a reshape of the same memory, not a transpose (a runtime copies a transpose: one full-length
    tensor more per loop input), and no slice when ``m`` is every token (a slice is a copy too)."""
    B, N, C = t.shape
    t = t if m == N else t[:, :m]
    if B == 1:
        return t.reshape(k, 1, m // k, C)
    return t.reshape(B, k, m // k, C).transpose(0, 1)


def _unstacked(t: torch.Tensor) -> torch.Tensor:
    """[k, B, S, C] (a loop's stacked outputs) -> [B, k * S, C] in token order (at batch 1 a reshape)."""
    k, B, S, C = t.shape
    return (t if B == 1 else t.transpose(0, 1)).reshape(B, k * S, C)


def _loop(body, init: torch.Tensor, xs, reverse: bool = False):
    """``torch.scan(body, init, xs, reverse)`` when captured (the program holds one loop op); eager PyTorch
    runs the same body over dim 0 in Python (eager scan compiles its body, and recompiles it with symbolic
    strides that no longer match the carry's when the shapes change between calls)."""
    if torch.compiler.is_compiling():
        from torch._higher_order_ops.scan import scan   # torch's loop op: only this form needs it
        return scan(body, init, xs, reverse=reverse)
    xs = xs if isinstance(xs, tuple) else (xs,)
    carry, ys = init, [None] * xs[0].shape[0]
    for i in (range(len(ys) - 1, -1, -1) if reverse else range(len(ys))):
        carry, ys[i] = body(carry, xs[0][i] if len(xs) == 1 else tuple(t[i] for t in xs))
    return carry, torch.stack(ys)


def _carried(h: torch.Tensor) -> torch.Tensor:
    """A loop's state [B, inner] as the flat [B * inner] it is carried as: a 1-D carry has one stride (a
    [1, inner] state's first stride is arbitrary, and the loop op refuses a carry whose strides differ from
    its initial value's)."""
    return h.reshape(-1)


class LoopStripedBlock2DGRU(StripedBlock2DGRU):
    """A :class:`StripedBlock2DGRU` whose stripes run inside two ``torch.scan`` loops (ONNX ``Scan``, OpenVINO
    ``TensorIterator``): the forward minGRU over the stripes with its state as the carry, then the reverse
    minGRU, residual sum and MLP from the last stripe to the first.

    The same numbers as the unrolled stripes, but the graph holds one stripe's nodes instead of one copy per
    stripe, and a runtime keeps one stripe's intermediates alive, not one set per stripe of an unrolled
    graph that its memory planner may overlap. Stripes are whole rows where :meth:`_rows` finds a row count
    (:meth:`_row_stripes`: y made inside the loops). Otherwise they are ``stripe`` tokens with y made whole,
    and the ``N % stripe`` tokens left over run unrolled after the forward loop and before the reverse loop
    (scan order). A sequence of less than two stripes has nothing to loop over: its scans run the ``loop``
    form (each level a loop over chunks).
    """

    def _zero(self, y: torch.Tensor, layer: StripedMinGRU) -> torch.Tensor:
        """The state entering the first stripe: zeros, flat (a * 0 + b == b exactly: the gates are finite)."""
        return y.new_zeros(y.shape[0] * layer.inner.to_hidden.out_features)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        rows = self._rows(hw)
        if rows:
            return self._row_stripes(x, hw, rows)
        k, S = N // self.stripe, self.stripe
        y = self._mixed(x, hw)
        if k < 2:       # one stripe, nothing to loop over: each scan level as a loop, as in the loop form
            return self._mlp(x + loop_forward(self.min_gru_1.inner, y) + loop_forward(self.min_gru_2.inner, y))
        M, g1, g2 = k * S, self.min_gru_1, self.min_gru_2

        def forward_stripe(h, y_s):
            out, h = g1.stripe_forward(y_s, h.view(B, -1))
            return _carried(h), out

        h, outs = _loop(forward_stripe, self._zero(y, g1), _stacked(y, k, M))
        fwd = _unstacked(outs)
        if M < N:
            fwd = torch.cat([fwd, g1.stripe_forward(y[:, M:], h.view(B, -1))[0]], dim=1)
        tail, h = None, self._zero(y, g2)
        if M < N:          # the reverse scan starts with the tokens past the last whole stripe
            b_t, h = g2.stripe_forward(y[:, M:], None)
            h = _carried(h)
            tail = self._mlp(x[:, M:] + fwd[:, M:] + b_t)

        def reverse_stripe(h, xs):
            y_s, x_s, f_s = xs
            b_s, h = g2.stripe_forward(y_s, h.view(B, -1))
            return _carried(h), self._mlp(x_s + f_s + b_s)

        _, outs = _loop(reverse_stripe, h, tuple(_stacked(t, k, M) for t in (y, x, fwd)), reverse=True)
        out = _unstacked(outs)
        return out if tail is None else torch.cat([out, tail], dim=1)

    def _halo(self) -> int | None:
        """Rows of y a stripe of whole rows reads above and below it (the depthwise convolution's padding),
        or None when the convolution is not a same-size odd square one of stride 1 (the whole-row path does
        not apply)."""
        conv = self.dw_conv
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding if not isinstance(conv.padding, str) else (-1, -1)
        if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros"
                or kh != 2 * ph + 1 or kw != 2 * pw + 1):
            return None
        return ph

    def _rows(self, hw: tuple[int, int]) -> int | None:
        """Rows per stripe when the stripes can be whole rows of the token grid: the most rows ``r`` that
        divide H with ``r * W <= stripe`` tokens, if that is more than half a stripe, covers the convolution's
        halo and leaves at least two stripes; else None (the stripes of exactly ``stripe`` tokens). Only for
        sequences of two stripes or more: a shorter one keeps the loop form (each scan level a loop), whose
        intermediates are smaller than a stripe body's unrolled scan on the wider channels of later stages
        (ONNX Runtime, VisionGRU-Ti at 1248 px: stage 3's 8 blocks of 6,084 tokens in two row stripes each
        raised the peak by 283 MiB)."""
        (H, W), p = hw, self._halo()
        if p is None or H * W < 2 * self.stripe:
            return None
        r = next((r for r in range(min(H, self.stripe // max(W, 1)), 0, -1) if H % r == 0), 0)
        return r if r * W * 2 > self.stripe and r >= max(p, 1) and H // r >= 2 else None

    def _y_rows(self, x_s: torch.Tensor, above: torch.Tensor, below: torch.Tensor, W: int) -> torch.Tensor:
        """y = DWConv(LN(x)) of one stripe of whole rows [B, r * W, C], from its tokens and the LayerNorm'd
        rows the convolution reads above and below it ([B, p * W, C], zeros past the image's edge)."""
        B, S, C = x_s.shape
        rows = torch.cat([above, self.norm(x_s), below], dim=1).view(B, -1, W, C).permute(0, 3, 1, 2)
        conv = self.dw_conv
        y = F.conv2d(rows, conv.weight, conv.bias, 1, (0, conv.padding[1]), 1, conv.groups)
        return y.permute(0, 2, 3, 1).reshape(B, S, C)

    def _row_stripes(self, x: torch.Tensor, hw: tuple[int, int], r: int) -> torch.Tensor:
        """The loops over stripes of ``r`` whole rows, with y = DWConv(LN(x)) made per stripe inside each loop
        (from the stripe's tokens and the LayerNorm'd rows of its halo) instead of whole: no full-length y, and
        no full-length LayerNorm, transposes and convolution in front of the loops (ONNX Runtime, stage 1 of
        VisionGRU-Ti at 1248 px: those held about four [97344, 72] tensors at once). The forward loop's
        outputs stay stacked for the reverse loop. Costs the LayerNorm and convolution twice (once per
        direction): about 1% of the block's MACs."""
        B, N, C = x.shape
        H, W = hw
        k, S, p, g1, g2 = H // r, r * W, self._halo(), self.min_gru_1, self.min_gru_2
        xk = x.view(B, k, S, C)
        edge_rows = xk[:, :1, :p * W]
        zero = edge_rows - edge_rows       # exact zeros (x is finite); ExecuTorch delegates a sub, not a full
        above = torch.cat([zero, self.norm(xk[:, :-1, S - p * W:])], dim=1)   # stripe i reads stripe i-1's last p rows
        below = torch.cat([self.norm(xk[:, 1:, :p * W]), zero], dim=1)        # and stripe i+1's first p rows
        halo = k * p * W
        xs, ups, downs = _stacked(x, k, N), *(_stacked(t.reshape(B, halo, C), k, halo) for t in (above, below))

        def forward_stripe(h, parts):
            x_s, up, down = parts
            out, h = g1.stripe_forward(self._y_rows(x_s, up, down, W), h.view(B, -1))
            return _carried(h), out

        _, fwd = _loop(forward_stripe, self._zero(x, g1), (xs, ups, downs))

        def reverse_stripe(h, parts):
            x_s, up, down, f_s = parts
            b_s, h = g2.stripe_forward(self._y_rows(x_s, up, down, W), h.view(B, -1))
            return _carried(h), self._mlp(x_s + f_s + b_s)

        _, outs = _loop(reverse_stripe, self._zero(x, g2), (xs, ups, downs, fwd), reverse=True)
        return _unstacked(outs)


def _as_loop(m: ChunkedMinGRU) -> LoopMinGRU:
    new = LoopMinGRU.__new__(LoopMinGRU)
    new.__dict__.update(m.__dict__)     # same submodules and settings, another forward
    new.position_major = False
    return new


def _loop_scans(module: nn.Module) -> int:
    """Every chunked minGRU scan under ``module`` as a :class:`LoopMinGRU`; returns how many."""
    n = 0
    for m in list(module.modules()):
        for name, child in list(m.named_children()):
            if type(child) is ChunkedMinGRU and not isinstance(m, StripedMinGRU):
                setattr(m, name, _as_loop(child))
                n += 1
    return n


def form_of(options: dict, forms: dict | None = None) -> str:
    """The minGRU form: the pass option ``mingru_form`` if given, else the converter's declared form."""
    form = options.get("mingru_form") or (forms or {}).get("mingru_form") or "chunked"
    if form not in FORMS:
        from edge.errors import UnknownNameError
        raise UnknownNameError("minGRU form (mingru_form)", str(form), FORMS)
    return form


@register_pass("visiongru_stripes", "VisionGRU's stem and long-sequence 2DGRU blocks in stripes of tokens, the "
               "scan state carried between stripes (exact; less peak memory at high resolution). Runs when "
               "the form (or pass option) mingru_form='striped' is given; 'loop' swaps the scan's unrolled steps for "
               "torch.scan loops", order=23, variant=lambda forms: forms.get("mingru_form", "chunked"))
def striped_pass(module: nn.Module, ctx: OptimizeContext) -> tuple[int, dict]:
    """Blocks with more than ``mingru_stripe`` tokens become :class:`StripedBlock2DGRU`, every VisionGRU
    stem a :class:`StripedTokenizer`; shorter blocks keep the chunked form. ``mingru_stripe`` counts tokens
    of the narrowest blocks (VisionGRU's stage 1); a block of k times their width takes 1/k of that. Whether
    a block is long is known only from its input, so every Block2DGRU is wrapped and a short one runs as a
    single stripe."""
    form = form_of(ctx.options, ctx.forms)
    if form == "loop":
        return _loop_scans(module), {"form": "loop"}
    if form not in ("striped", "stripe_loop"):
        return 0, {"form": "chunked"}
    from edge.zoo.visiongru import Block2DGRU, Tokenizer
    stripe = ctx.options.get("mingru_stripe")
    stripe = STRIPE if stripe is None else int(stripe)
    if stripe < 1:
        raise UsageError(f"mingru_stripe must be >= 1 token, got {stripe}")
    block_form = LoopStripedBlock2DGRU if form == "stripe_loop" else StripedBlock2DGRU
    n = 0
    # The stripe is in tokens of the narrowest blocks; a block k times wider takes stripes of 1/k the tokens,
    # so that a stripe's intermediates take the same bytes in every stage (ONNX Runtime, VisionGRU-Ti at 1248
    # px, stage 3 alone: 453 MiB peak in 4096-token stripes, which is the loop form there, 228 in 1024).
    widths = sorted({m.dw_conv.in_channels for m in module.modules() if isinstance(m, Block2DGRU)})
    by_width = {w: max(1, stripe * widths[0] // w) for w in widths}

    def swap(parent: nn.Module) -> None:
        nonlocal n
        for name, child in list(parent.named_children()):
            if isinstance(child, Block2DGRU) and isinstance(child.min_gru_1, ChunkedMinGRU):
                setattr(parent, name, block_form(child, by_width[child.dw_conv.in_channels]))
                n += 1
            elif isinstance(child, Tokenizer):
                setattr(parent, name, StripedTokenizer(child, stripe))
                n += 1
            else:
                swap(child)

    swap(module)
    if form == "stripe_loop":   # other minGRUs loop over chunks (a stripe's scan stays unrolled: OpenVINO
        n += _loop_scans(module)  # takes no TensorIterator inside another)
    return n, {"form": form, "stripe": stripe, "stripes_by_width": {str(w): s for w, s in by_width.items()}}
