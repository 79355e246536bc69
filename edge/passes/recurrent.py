"""Recurrent passes: nn.GRU / nn.LSTM unrolled into delegate-friendly steps, minGRU's scan without logcumsumexp.

Why. ``aten.gru`` / ``aten.lstm`` reach most edge toolchains badly: ExecuTorch's decomposition
leaves ``split_with_sizes_copy`` on portable kernels between 196 XNNPACK calls (161 s to lower),
CoreML refuses ``aten.gru`` from a program, and OpenVINO unrolls it into MatMuls when it comes
from a program. minGRU's log-space scan (``torch.logcumsumexp``) either does not convert or
converts to silently wrong numbers (see STACK.md). The forms here use only ops that every target
keeps in its fast path: matmul (Linear), sigmoid/tanh, mul/add/sub, static slices and one ``cat``.

* ``gru`` / ``lstm``: :class:`TunedGRU` / :class:`TunedLSTM` hold the same weights; the input
  projection of all time steps is one matmul, each step is one hidden matmul and elementwise
  gates. Outputs (``output, h_n`` / ``output, (h_n, c_n)``) are PyTorch's. Three forms, picked
  per target (the pass variant):
  ``native`` (ONNX, OpenVINO) keeps nn.GRU/nn.LSTM: their own GRU/LSTM op is fastest there;
  ``scan`` (ExecuTorch) writes the steps as one ``torch.scan`` whose body (``SCAN_STEPS_PER_CALL``
  steps: hidden matmul + gates each) the ExecuTorch converter lowers as ONE XNNPACK delegate that
  the program's loop calls per iteration: lowering takes seconds whatever the length (the unrolled
  graph took 127 s at 196 steps), no portable op runs between steps;
  ``unrolled`` (CoreML, CUDA, anything else) writes every step out as slices + matmul + gates.
* ``mingru_scan``: :class:`ChunkedMinGRU` replaces each minGRU (edge.zoo.visiongru.MinGRU or a
  module with minGRU-pytorch's layout) by a chunked scan: inside a chunk of ``CHUNK`` tokens an
  unrolled recurrence runs over all chunks at once (products of gates in [0, 1]: nothing can
  overflow, nothing is divided) gives each chunk's end state, those are scanned the same way one
  level up, and each chunk's steps run again from the state entering it. Work is linear in the
  sequence length; graph size grows with ``log_CHUNK(length)``. :meth:`ChunkedMinGRU.step` is the
  streaming form (state in, state out).
  A VisionGRU block's backward minGRU becomes a reverse scan, so its two flips go away. The forms a
  converter declares pick the chunk, the one-pass form (``mingru_products``) and the position-major
  layout (``mingru_layout``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import UsageError
from edge.passes import OptimizeContext, declare_form, refit_linear, register_pass

# Forms the converters choose from (``Converter.forms``), with the measurements behind the choices:
# - rnn="native": nn.GRU / nn.LSTM kept as one GRU/LSTM(Sequence) op, for runtimes that run it faster than
#   any unrolled form (benchmarks/gru_paths.py); rnn="scan": a torch.scan whose body a converter lowers as one
#   delegate called per iteration (converters/executorch/); rnn="unrolled": per-step matmuls and gates.
# - SCAN_STEPS_PER_CALL: time steps per iteration of the scan. 196-step GRU 64->128, one run, medians of 3
#   rounds: 1 / 2 / 3 steps 1.48 / 1.18 / 1.26 ms (4 / 8: 1.37 / 1.71), lowering 2.8 / 3.1 / 3.5 s (8: 9.3 s);
#   eager nn.GRU 2.90 ms.
# - mingru_chunk: the minGRU scan's chunk (forward + reverse scan of 3136 x 144, chunk 4 / 8 / 16 timed
#   interleaved in one run): ExecuTorch 2.30 / 2.51 / 2.79 ms and 420 / 468 / 638 graph nodes, lowering
#   14.8 / 16.3 / 20.2 s; OpenVINO 1.61 / 1.47 / 1.40 ms.
# - mingru_products="kept": every state and gate product in one pass: fewer graph nodes, which ExecuTorch's
#   lowering time follows. OpenVINO ran that form slower (two more full-size concats: 29.7 vs 19.1 ms for a
#   VisionGRU-Ti stage-1 layer at 512 px).
# - mingru_layout="position-major": the scan runs on position-major gates, one transpose in and out of the
#   layer instead of strided slices and concats. Forward + reverse minGRU pair, one run, 3 rounds: OpenVINO
#   73.5 -> 64.5 ms at 65536 x 72 (VisionGRU-Ti stage 1 at 1024 px), 23.8 -> 22.4 ms at 4096 x 288 (stage 3);
#   ONNX Runtime 142.6 -> 144.9 ms at 65536 x 72 (not used there).
SCAN_STEPS_PER_CALL = 2
CHUNK = 16
declare_form("rnn", "unrolled", ("unrolled", "native", "scan"),
             "native: keep nn.GRU/nn.LSTM as one op; scan: a torch.scan loop; unrolled: per-step matmuls")
declare_form("mingru_chunk", CHUNK, (), "positions per chunk of the minGRU linear scan")
declare_form("mingru_products", "recomputed", ("recomputed", "kept"),
             "kept: the minGRU scan keeps every state and gate product in one pass (fewer graph nodes)")
declare_form("mingru_layout", "token-major", ("token-major", "position-major"),
             "position-major: the minGRU scan runs on position-major gates (one transpose in and out)")


def _rnn_variant(forms: dict[str, Any]) -> str:
    return forms["rnn"]


def _rnn_form(forms: dict[str, Any]) -> tuple[str, int]:
    """(form, steps per call) of the tuned GRU/LSTM under ``forms``."""
    form = _rnn_variant(forms)
    return form, SCAN_STEPS_PER_CALL if form == "scan" else 1


def _replace(root: nn.Module, match, make) -> int:
    """Replace every submodule for which ``match(m)`` holds by ``make(m)``; returns the count."""
    n = 0
    for name, child in list(root.named_children()):
        if match(child):
            setattr(root, name, make(child))
            n += 1
        else:
            n += _replace(child, match, make)
    return n


# ---------------------------------------------------------------------------------------------- GRU / LSTM
def _cat(ts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """torch.cat that skips the copy of a single tensor (XNNPACK delegates cat only for >= 2 inputs)."""
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=dim)


class _TunedRNN(nn.Module):
    """Shared layout of the tuned GRU/LSTM: per (layer, direction) a fused input projection and hidden matmul."""

    gates = 3

    def __init__(self, rnn: nn.RNNBase, form: str = "unrolled", steps_per_call: int = 1):
        super().__init__()
        if form not in ("unrolled", "scan"):
            raise UsageError(f"tuned RNN form {form!r} is not one of unrolled, scan")
        if steps_per_call < 1:
            raise UsageError(f"steps_per_call must be >= 1, got {steps_per_call}")
        self.form, self.steps_per_call = form, steps_per_call
        if getattr(rnn, "proj_size", 0):
            raise UsageError("nn.LSTM with proj_size > 0 is not rewritten by the 'lstm' pass")
        self.input_size, self.hidden_size = rnn.input_size, rnn.hidden_size
        self.num_layers, self.batch_first = rnn.num_layers, rnn.batch_first
        self.bidirectional, self.bias = rnn.bidirectional, rnn.bias   # nn.GRU's attributes, for code that reads them
        self.dirs = 2 if rnn.bidirectional else 1
        self.ih, self.hh = nn.ModuleList(), nn.ModuleList()
        H, G = self.hidden_size, self.gates
        for layer in range(self.num_layers):
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
                b_ih = getattr(rnn, "bias_ih" + sfx) if rnn.bias else torch.zeros(G * H)
                b_hh = getattr(rnn, "bias_hh" + sfx) if rnn.bias else torch.zeros(G * H)
                ih = nn.Linear(w_ih.shape[1], G * H)
                hh = nn.Linear(H, G * H, bias=self._hh_has_bias(rnn.bias))
                with torch.no_grad():
                    ih.weight.copy_(w_ih)
                    ih.bias.copy_(self._fold_bias(b_ih.detach(), b_hh.detach()))
                    hh.weight.copy_(w_hh)
                    if hh.bias is not None:
                        hh.bias.copy_(self._hh_bias(b_hh.detach()))
                self.ih.append(ih)
                self.hh.append(hh)

    def _cell(self, gx, gh, state):
        """One step from the input part ``gx`` and hidden part ``gh`` of the gates: the new state tuple."""
        raise NotImplementedError

    def _first(self, gx, k):
        """The step of direction ``k`` from a zero state (no hidden matmul): the new state tuple."""
        raise NotImplementedError

    def _hh_has_bias(self, bias: bool) -> bool:
        return False

    def _fold_bias(self, b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        return b_ih + b_hh

    def _hh_bias(self, b_hh: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, x) -> None:
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise UsageError(f"the tuned {type(self).__name__} does not take a PackedSequence; convert with "
                             f"disable_passes=('gru', 'lstm') or pass a padded tensor")

    def _layers(self, x: torch.Tensor, states: list[tuple[torch.Tensor, ...]]):
        """x: [T, B, I] time-major; states: per (layer, dir) initial state tuple. Returns (y, final states)."""
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.dirs):
                k = layer * self.dirs + d
                xp = self.ih[k](x)                                  # [T, B, G*H]: all steps in one matmul
                run = self._scan if self.form == "scan" else self._direction
                y, fin = run(xp, k, states[k], reverse=bool(d))
                outs.append(y)
                finals.append(fin)
            x = _cat(outs, -1)
        return x, finals

    def _direction(self, xp, k, state, reverse):
        """Unrolled: every step written out. ``state``: tuple of [1, B, H] (None entries: zeros)."""
        T, hh = xp.shape[0], self.hh[k]
        ys = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            gx = xp[t:t + 1]                                       # [1, B, G*H]
            # from a zero state W_hh h vanishes: no zeros tensor (a full() op ExecuTorch leaves on portable)
            state = self._first(gx, k) if state[0] is None else self._cell(gx, hh(state[0]), state)
            ys[t] = state[0]
        return _cat(ys, 0), state

    def _scan(self, xp, k, state, reverse):
        """One torch.scan over the steps, ``steps_per_call`` steps per iteration (one delegate call).

        Steps the loop cannot take in whole iterations (and a first step from a zero state) run
        before it, unrolled in the top-level graph.
        """
        from torch._higher_order_ops.scan import scan   # torch's private loop op: only this form needs it
        T, n = xp.shape[0], self.steps_per_call
        lead = (T - (state[0] is None)) % n + (state[0] is None)   # steps run before the loop
        if T - lead < n:                                          # too short for one whole iteration
            lead = T
        head = None
        if lead:
            head, state = self._direction(xp[T - lead:] if reverse else xp[:lead], k, state, reverse)
            if lead == T:
                return head, state
        xp = xp[:T - lead] if reverse else xp[lead:]
        w, b = self.hh[k].weight, self.hh[k].bias
        rest = xp.shape[1:]

        def body(carry, gx):
            if n == 1:   # the step's output computed twice: scan outputs must not alias the carry, and a
                gh = F.linear(carry[0], w, b)   # copy would run on a portable kernel between delegate calls
                return self._cell(gx, gh, carry), self._cell(gx, gh, carry)[0]
            ys = [None] * n
            for j in (range(n - 1, -1, -1) if reverse else range(n)):
                carry = self._cell(gx[j:j + 1], F.linear(carry[0], w, b), carry)
                ys[j] = carry[0]
            return carry, torch.cat(ys, 0)
        if n == 1:   # carry [B, H]
            carry, ys = scan(body, tuple(s[0] for s in state), xp, reverse=reverse)
            carry = tuple(c.view(1, *c.shape) for c in carry)   # a view XNNPACK takes (unsqueeze: portable)
        else:        # carry [1, B, H] (the steps slice [1, B, 3H] from their iteration's [n, B, 3H])
            carry, ys = scan(body, tuple(state), xp.reshape(-1, n, *rest), reverse=reverse)
            ys = ys.reshape(-1, *ys.shape[2:])
        if head is not None:
            ys = torch.cat([ys, head] if reverse else [head, ys], dim=0)
        return ys, carry


class TunedGRU(_TunedRNN):
    """nn.GRU with the same weights and outputs, written as slices + matmul + sigmoid/tanh per step."""

    gates = 3

    def _hh_has_bias(self, bias: bool) -> bool:
        return bias

    def _fold_bias(self, b_ih, b_hh):
        H = self.hidden_size   # r and z take b_ih + b_hh; n keeps b_hn inside r * (W_hn h + b_hn)
        return torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])

    def _hh_bias(self, b_hh):
        H = self.hidden_size
        return torch.cat([torch.zeros(2 * H), b_hh[2 * H:]])

    def __init__(self, rnn: nn.GRU, form: str = "unrolled", steps_per_call: int = 1):
        super().__init__(rnn, form, steps_per_call)
        # b_hn for a first step from h = 0, as its own tensor: a parameter shared between that step and
        # the hidden matmul makes XNNPACK's partitioner split the unrolled graph into 3 delegates
        H = self.hidden_size
        for k, hh in enumerate(self.hh):
            b = torch.zeros(H) if hh.bias is None else hh.bias.detach()[2 * H:].clone()
            self.register_buffer(f"first_bias{k}", b, persistent=False)

    def _cell(self, gx, gh, state):
        """One GRU step from the input part ``gx`` and hidden part ``gh`` (both [..., 3H]) of the gates."""
        H, (h,) = self.hidden_size, state
        rz = torch.sigmoid(gx[..., :2 * H] + gh[..., :2 * H])
        n = torch.tanh(gx[..., 2 * H:] + rz[..., :H] * gh[..., 2 * H:])
        return (n + rz[..., H:] * (h - n),)

    def _first(self, gx, k):
        """The step from h = 0: the hidden part is just b_hn."""
        H = self.hidden_size
        rz = torch.sigmoid(gx[..., :2 * H])
        n = torch.tanh(gx[..., 2 * H:] + rz[..., :H] * getattr(self, f"first_bias{k}"))
        return (n - rz[..., H:] * n,)

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None):
        self._check(x)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
            hx = hx.unsqueeze(1) if hx is not None else None
        elif self.batch_first:
            x = x.transpose(0, 1)
        L = self.num_layers * self.dirs
        y, finals = self._layers(x, [(None if hx is None else hx[k:k + 1],) for k in range(L)])
        h_n = _cat([f[0] for f in finals], 0)
        if unbatched:
            return y.squeeze(1), h_n.squeeze(1)
        return (y.transpose(0, 1) if self.batch_first else y), h_n


class TunedLSTM(_TunedRNN):
    """nn.LSTM (no proj_size) with the same weights and outputs; gates i, f, g, o as in PyTorch."""

    gates = 4

    def _cell(self, gx, gh, state):
        """One LSTM step from the input and hidden parts of the gates (i, f, g, o) and the state (h, c)."""
        H, g = self.hidden_size, gx + gh
        i_f = torch.sigmoid(g[..., :2 * H])
        c = i_f[..., H:] * state[1] + i_f[..., :H] * torch.tanh(g[..., 2 * H:3 * H])
        return torch.sigmoid(g[..., 3 * H:]) * torch.tanh(c), c

    def _first(self, gx, k):
        """The step from h = c = 0: no hidden matmul, no forget term."""
        H = self.hidden_size
        c = torch.sigmoid(gx[..., :H]) * torch.tanh(gx[..., 2 * H:3 * H])
        return torch.sigmoid(gx[..., 3 * H:]) * torch.tanh(c), c

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        self._check(x)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if hx is not None else None
        elif self.batch_first:
            x = x.transpose(0, 1)
        L = self.num_layers * self.dirs
        states = [(None, None) if hx is None else (hx[0][k:k + 1], hx[1][k:k + 1]) for k in range(L)]
        y, finals = self._layers(x, states)
        h_n = _cat([f[0] for f in finals], 0)
        c_n = _cat([f[1] for f in finals], 0)
        if unbatched:
            return y.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (y.transpose(0, 1) if self.batch_first else y), (h_n, c_n)


@register_pass("gru", "nn.GRU -> one input matmul + per-step hidden matmul and gates (ExecuTorch: a torch.scan "
               f"of {SCAN_STEPS_PER_CALL} steps per iteration, each one XNNPACK delegate call); ONNX/OpenVINO keep "
               "their native GRU op", order=20, variant=_rnn_variant)
def gru_pass(module: nn.Module, ctx: OptimizeContext) -> int:
    if _rnn_variant(ctx.forms) == "native":
        return 0
    return _replace(module, lambda m: type(m) is nn.GRU, lambda m: TunedGRU(m, *_rnn_form(ctx.forms)))


@register_pass("lstm", "nn.LSTM -> one input matmul + sliced per-step gates; ONNX/OpenVINO keep their native "
               "LSTM op", order=21, variant=_rnn_variant)
def lstm_pass(module: nn.Module, ctx: OptimizeContext) -> int:
    if _rnn_variant(ctx.forms) == "native":
        return 0
    return _replace(module, lambda m: type(m) is nn.LSTM and not m.proj_size,
                    lambda m: TunedLSTM(m, *_rnn_form(ctx.forms)))


# ---------------------------------------------------------------------------------------------- minGRU
def _softplus_free_gates(gate: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """minGRU's coefficient a = 1 - sigmoid(gate) and value b = sigmoid(gate) * g(hidden), no where/softplus.

    g(x) = x + 0.5 for x >= 0, sigmoid(x) below: relu(x) + sigmoid(min(x, 0)) is the same function.
    """
    g = torch.relu(hidden) + torch.sigmoid(torch.clamp(hidden, max=0.0))
    return torch.sigmoid(-gate), torch.sigmoid(gate) * g


def _columns(a: torch.Tensor, b: torch.Tensor, reverse: bool,
             dim: int = 2) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """The steps of [B, C, L, D] along dim 2 (or [B, L, C, D] along ``dim=1``) in scan order, (t, a_t, b_t).

    Sliced once and read by both passes of a level (slices are 40% of the scan's nodes, and every node
    costs ExecuTorch's lowering about 25 ms: it re-traces the graph some 35 times).
    """
    L, lead = a.shape[dim], (slice(None),) * dim
    return [(t, a[(*lead, slice(t, t + 1))], b[(*lead, slice(t, t + 1))])
            for t in (range(L - 1, -1, -1) if reverse else range(L))]


def _steps(cols: list[tuple[int, torch.Tensor, torch.Tensor]], h: torch.Tensor | None, dim: int = 2) -> torch.Tensor:
    """All states of h_t = a_t h_{t-1} + b_t over ``cols`` (see :func:`_columns`), all C chunks at once.

    ``h``: the state entering each chunk, [B, C, 1, D] (None: zeros). Returns [B, C, L, D].
    L steps on [B, C, 1, D] slices do N * D work in all; a Hillis-Steele doubling form inside the
    chunk halves the nodes but does log2(L) times the work: 3.6x slower on ONNX Runtime, 5.5x on
    OpenVINO, 1.5x on ExecuTorch for a forward + reverse scan at 3136 x 144. A ``torch.scan`` loop
    over the steps (the GRU's ExecuTorch form) was slower on ExecuTorch: 5.3 ms vs 4.0 ms at
    3136 x 144 (the loop copies every step's slices on portable kernels), and VisionGRU-Ti still took
    283 s to lower.
    """
    hs: list[torch.Tensor | None] = [None] * len(cols)
    for t, a_t, b_t in cols:
        h = b_t if h is None else a_t * h + b_t
        hs[t] = h
    return _cat(hs, dim)


def _ends(cols: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chunk: the state after it from a zero state, and the product of its gates ([B, C, 1, D])."""
    h = p = None
    for _, a_t, b_t in cols:
        h, p = (b_t, a_t) if h is None else (a_t * h + b_t, a_t * p)
    return h, p


def _steps_and_products(cols: list[tuple[int, torch.Tensor, torch.Tensor]]):
    """All states from a zero state and all gate products of ``cols``, plus the chunk's end state and product.

    Returns ``(H, P, h_end, p_end)``: H and P are [B, C, L, D], the ends [B, C, 1, D]; the states from an
    entering state E are then ``H + P * E``.
    """
    hs: list[torch.Tensor | None] = [None] * len(cols)
    ps: list[torch.Tensor | None] = [None] * len(cols)
    h = p = None
    for t, a_t, b_t in cols:
        h, p = (b_t, a_t) if h is None else (a_t * h + b_t, a_t * p)
        hs[t], ps[t] = h, p
    return _cat(hs, 2), _cat(ps, 2), h, p


def _entering(ends: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """The state entering each chunk [B, C, D] from the state after each chunk ``ends`` [B, C, D]."""
    B, C, D = ends.shape
    end = ends[:, :1]
    first = end - end if h0 is None else h0.view(B, 1, D)
    if C == 1:
        return first
    return torch.cat([ends[:, 1:], first] if reverse else [first, ends[:, :C - 1]], dim=1)


def end_state(h: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The state a scan ends in: [B, N, D] -> [B, D], its first token when ``reverse``, else its last.

    A slice and a view, not a select: XNNPACK takes those inside a loop body too (with a select there,
    ExecuTorch's lowering fails with "Invalid partition, found dependency cycles")."""
    return (h[:, :1] if reverse else h[:, -1:]).view(h.shape[0], h.shape[2])


def position_major_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk: int = CHUNK,
                        reverse: bool = False) -> torch.Tensor:
    """:func:`chunked_linear_scan` on gates laid out position-major: [B, L, C, D] holds token c * L + j at
    ``[:, j, c]`` (chunks of L tokens). Returns the states in the same layout.

    Each step's slice is then one contiguous block, and the states are concatenated along dim 1: no
    strided copies. In token order ([B, C, L, D] sliced along dim 2) OpenVINO copies the slices out
    with a reference Split kernel and the states back with a reference Concat (87 ms of VisionGRU-Ti's
    1030 ms at 1024 px); :class:`ChunkedMinGRU` pays one transpose of its input and one of its output
    instead (``position_major``).
    """
    B, L, C, D = a.shape
    cols = _columns(a, b, reverse, dim=1)
    h_end, p_end = _ends(cols)
    ends = chunked_linear_scan(p_end.view(B, C, D), h_end.view(B, C, D), h0, chunk, reverse)
    return _steps(cols, _entering(ends, h0, reverse).view(B, 1, C, D), dim=1)


def chunked_linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                        chunk: int = CHUNK, reverse: bool = False, keep_products: bool = False) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t over dim 1 of [B, N, D] (h_{-1} = h0 [B, D] or 0), with a in [0, 1].

    ``reverse=True`` scans from the last token to the first: ``flip(scan(flip(a), flip(b)))`` without
    the flips. Two passes over chunks of ``chunk`` tokens, all chunks at once: the first keeps only
    each chunk's end state (from zero) and gate product; those form a sequence of length N // chunk
    scanned the same way (recursively), giving the state entering each chunk; the second pass runs
    the chunk's steps again from that state and keeps every state. (Keeping the gate products of
    every step and adding ``p_t * state`` afterwards costs two more full-size concats: OpenVINO
    19.1 ms vs 29.7 ms for a VisionGRU-Ti stage-1 layer at 512 px.) The N % chunk tokens left over
    (at the end in scan order) continue from the last chunk's state. Only mul/add/slice/cat, no
    constants, products of numbers in [0, 1] only: safe and convertible everywhere.

    ``keep_products=True`` is that other form: one pass keeps every state from zero and every gate
    product, and the states are ``H + P * entering state``. Fewer graph nodes, which is what
    ExecuTorch's lowering time follows: a forward + reverse scan of 3136 x 144 at chunk 4 has 367
    nodes instead of 417 and lowers in 2.65 s instead of 3.38 s, but runs in 4.02 ms instead of 3.32 ms.
    """
    B, N, D = a.shape
    if N <= chunk:
        # views, not (un)squeeze: aten.squeeze.dim is in ExecuTorch's decomposition table and alone makes
        # its lowering decompose the whole program once more (converters/executorch.py)
        cols = _columns(a.view(B, 1, N, D), b.view(B, 1, N, D), reverse)
        return _steps(cols, None if h0 is None else h0.view(B, 1, 1, D)).view(B, N, D)
    C = N // chunk
    M, r = C * chunk, N - C * chunk
    am, bm = (a, b) if not r else ((a[:, r:], b[:, r:]) if reverse else (a[:, :M], b[:, :M]))
    a4, b4 = am.reshape(B, C, chunk, D), bm.reshape(B, C, chunk, D)
    cols = _columns(a4, b4, reverse)
    if keep_products:
        H, P, h_end, p_end = _steps_and_products(cols)
    else:
        h_end, p_end = _ends(cols)
    ends = chunked_linear_scan(p_end.view(B, C, D), h_end.view(B, C, D), h0, chunk, reverse,
                               keep_products)   # [B, C, D]: the state after chunk c
    # the state entering the first chunk in scan order: h0, or zeros made by arithmetic (a zeros() is a
    # constant-fill op ExecuTorch runs on a portable kernel between delegate calls; x - x, not x * 0.0:
    # a Python number costs ExecuTorch's lowering one more re-trace of the program)
    before = _entering(ends, h0, reverse)
    if keep_products:
        h = (H + P * before.view(B, C, 1, D)).reshape(B, M, D)
    else:
        h = _steps(cols, before.view(B, C, 1, D)).reshape(B, M, D)
    if not r:
        return h
    rest = slice(0, r) if reverse else slice(M, N)
    tail = chunked_linear_scan(a[:, rest], b[:, rest], end_state(h, reverse), chunk, reverse, keep_products)
    return torch.cat([tail, h] if reverse else [h, tail], dim=1)


def sequential_mingru_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                           reverse: bool = False) -> torch.Tensor:
    """The plain recurrence, one token at a time (the reference and the benchmark's baseline)."""
    B, N, D = a.shape
    h = h0.view(B, 1, D) if h0 is not None else None
    hs = [None] * N
    for t in (range(N - 1, -1, -1) if reverse else range(N)):
        h = b[:, t:t + 1] if h is None else a[:, t:t + 1] * h + b[:, t:t + 1]
        hs[t] = h
    return torch.cat(hs, dim=1)


def _row_halves(linear: nn.Linear) -> tuple[nn.Linear, nn.Linear]:
    """Two Linears computing the first and the second half of ``linear``'s outputs (weights copied)."""
    d = linear.out_features // 2
    b = linear.bias
    return tuple(refit_linear(linear, linear.weight[rows], None if b is None else b[rows])
                 for rows in (slice(0, d), slice(d, 2 * d)))


class ChunkedMinGRU(nn.Module):
    """A minGRU (minGRU-pytorch layout: ``to_hidden_and_gate``, ``to_out``) with the chunked scan.

    ``forward(x)`` equals the log-space reference at 1e-4; ``forward(x, h0, return_state=True)``
    also returns the inner state after the last token. :meth:`step` runs one token (streaming).
    ``reverse=True`` scans from the last token to the first, i.e. computes ``m(x.flip(1)).flip(1)``
    of the source minGRU ``m`` without the two flips (a copy each; ExecuTorch runs flip on a
    portable kernel); the returned state is then the one after the first token.
    ``position_major=True`` (OpenVINO) runs the scan on the gates of the tokens reordered
    position-major (:func:`position_major_scan`) when the length is a multiple of the chunk: the
    input is transposed once before the two projections, the output once after ``to_out``.

    Example:
        >>> y, h = layer(x_prefix, return_state=True)
        >>> y_t, h = layer.step(x_t, h)          # next token; equals the full scan's output at t
    """

    def __init__(self, src: nn.Module, *, chunk: int = CHUNK, sequential: bool = False, reverse: bool = False,
                 keep_products: bool = False, position_major: bool = False):
        super().__init__()
        # to_hidden_and_gate as two Linears (its rows split in half): the same dot products without a
        # split of the output, which OpenVINO runs with a reference kernel (11% of VisionGRU-Ti at 1024 px)
        self.to_hidden, self.to_gate = _row_halves(src.to_hidden_and_gate)
        self.to_out = src.to_out
        self.chunk, self.sequential, self.reverse, self.keep_products = chunk, sequential, reverse, keep_products
        self.position_major = position_major

    def _gates(self, x: torch.Tensor):
        return _softplus_free_gates(self.to_gate(x), self.to_hidden(x))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, return_state: bool = False):
        B, N, _ = x.shape
        L = self.chunk
        if self.position_major and not self.sequential and N > L and N % L == 0:
            # tokens position-major for the scan ([B, L, N / L, dim]), back to token order after to_out
            a, b = self._gates(x.view(B, N // L, L, -1).transpose(1, 2))
            h = position_major_scan(a, b, h0, L, self.reverse)
            out = self.to_out(h).transpose(1, 2).reshape(B, N, -1)
            return (out, h[:, 0, 0] if self.reverse else h[:, L - 1, -1]) if return_state else out
        a, b = self._gates(x)
        if self.sequential:
            h = sequential_mingru_scan(a, b, h0, self.reverse)
        else:
            h = chunked_linear_scan(a, b, h0, self.chunk, self.reverse, self.keep_products)
        out = self.to_out(h)
        if not return_state:
            return out
        return out, end_state(h, self.reverse)

    def step(self, x_t: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: ``x_t`` [B, dim], ``h`` [B, inner] (None at the start) -> (output [B, dim], new state)."""
        a, b = self._gates(x_t)
        h = b if h is None else a * h + b
        return self.to_out(h), h


def is_mingru(m: nn.Module) -> bool:
    """edge's MinGRU, or any module with minGRU-pytorch's layout (bias-free to_hidden_and_gate, to_out)."""
    if isinstance(m, ChunkedMinGRU):
        return False
    from edge.zoo.visiongru import MinGRU
    if isinstance(m, MinGRU):
        return True
    return (type(m).__name__.lower() == "mingru" and isinstance(getattr(m, "to_hidden_and_gate", None), nn.Linear)
            and hasattr(m, "to_out"))


def _mingru_kwargs(forms: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """ChunkedMinGRU's arguments under ``forms`` (pass option ``mingru_chunk`` overrides the form's chunk)."""
    return {"chunk": int((options or {}).get("mingru_chunk", forms["mingru_chunk"])),
            "keep_products": forms["mingru_products"] == "kept",
            "position_major": forms["mingru_layout"] == "position-major"}


def _mingru_variant(forms: dict[str, Any]) -> str:
    kw = _mingru_kwargs(forms)
    kept = ", products kept" if kw["keep_products"] else ""
    major = ", position-major" if kw["position_major"] else ""
    return f"chunk {kw['chunk']}{kept}{major}"


@register_pass("mingru_scan", "minGRU's logcumsumexp scan -> chunked linear scan (mul/add/slice only; converts "
               "on every target, linear in length)", order=22, variant=_mingru_variant)
def mingru_pass(module: nn.Module, ctx: OptimizeContext) -> tuple[int, dict]:
    """A VisionGRU block's backward minGRU (run as ``m(y.flip(1)).flip(1)``) becomes a reverse scan: no flips.

    The chunk, the one-pass form and the layout come from the forms ``mingru_chunk``, ``mingru_products``
    and ``mingru_layout``; pass option ``mingru_chunk`` overrides the chunk.
    """
    from edge.zoo.visiongru import Block2DGRU
    kw = _mingru_kwargs(ctx.forms, ctx.options)
    n = 0
    for blk in module.modules():
        if isinstance(blk, Block2DGRU) and is_mingru(blk.min_gru_2):
            blk.min_gru_2 = ChunkedMinGRU(blk.min_gru_2, reverse=True, **kw)
            n += 1
    return n + _replace(module, is_mingru, lambda m: ChunkedMinGRU(m, **kw)), dict(kw)
