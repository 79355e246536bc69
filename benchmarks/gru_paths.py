"""GRU and minGRU paths side by side, one run: eager vs each runtime, native op vs edge's tuned form.

Part 1, nn.GRU 64->128 over 196 steps, batch 1 (zoo ``gru_classifier``, STACK.md's case), all timed in
  interleaved rounds: eager nn.GRU, eager tuned GRU, and per target edge.convert's artifact (the ``gru`` pass picks
  ``native`` on ONNX/OpenVINO, ``scan`` on ExecuTorch: one XNNPACK call per step) against the runtime's own GRU op
  (``optimize=False``: the raw toolchain path). ExecuTorch: lowering seconds and delegate count.
Part 2, minGRU (dim 72, expansion 2: VisionGRU-Ti's stage 1) over 56x56 = 3136 tokens:
  the chunked scan (``mingru_scan`` pass) per runtime against the sequential loop, twice: the scan
  alone (gates a, b [1, 3136, 144] in, states h out: the part the two differ in) and the whole
  minGRU layer (plus its two projections and gate activations, which both run identically). The
  loop's graph has ~4 nodes per token; with ``--seq-tokens`` below the length it is measured at that
  length and scaled linearly (its cost is exactly linear), which the output marks. (Exporting the loop at
  3136 tokens to ONNX did not finish in 16 minutes.) The scan alone uses the target's chunk
  (the converter's ``mingru_chunk`` form) in token order. A third graph, ``one pass``, reads the same a, b and writes h with a
  single ``a * b + b``: the least any graph with those inputs and output costs on that runtime (binding the
  inputs, one pass over the data, copying the output out), set beside the 10x budget (sequential / 10).

The four minGRU artifacts of a runtime are timed in interleaved rounds (``--rounds``), medians quoted.

Run:  .venv/bin/python benchmarks/gru_paths.py [--targets onnx,openvino,executorch] [--iters 50] [--rounds 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import edge
from edge.converters import get_converter
from edge.passes.recurrent import CHUNK, ChunkedMinGRU, chunked_linear_scan, sequential_mingru_scan
from edge.profile import EagerSession, time_interleaved, time_session
from edge.zoo import create_model
from edge.zoo.visiongru import MinGRU


def eager_ms(model: nn.Module, x: torch.Tensor, warmup: int, iters: int) -> float:
    """Median ms of the module in eager mode, timed by the loop every runtime session is timed by."""
    return statistics.median(time_session(EagerSession(model), [x], warmup=warmup, iters=iters)[1])


def convert(model, x, target, out, **kw):
    """(artifact, what its manifest says about the conversion)."""
    t = time.perf_counter()
    art = edge.convert(model, example_inputs=x if isinstance(x, tuple) else (x,), target=target, out=out, **kw)
    conv_s = time.perf_counter() - t
    d = art.manifest.details
    info = {"convert_s": conv_s, "parity": art.manifest.parity.get("passed"),
            "passes": {p["pass"]: f'{p["variant"]}:{p["rewrites"]}' for p in d.get("optimize_passes", [])}}
    if "lowering_seconds" in d:
        info["lowering_s"] = d["lowering_seconds"]
        info["lowering_cpu_s"] = d.get("lowering_cpu_seconds")
        info["delegation"] = d.get("delegation")
    if "op_histogram" in d:
        info["recurrent_ops"] = {k: v for k, v in d["op_histogram"].items() if "GRU" in k or "Loop" in k}
    return art, info


class _Seq(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class _Scan(nn.Module):
    """The scan alone: gates (a, b) -> states h, chunked (at ``chunk``) or one token at a time."""

    def __init__(self, sequential: bool, chunk: int = CHUNK):
        super().__init__()
        self.sequential, self.chunk = sequential, chunk

    def forward(self, a, b):
        return sequential_mingru_scan(a, b) if self.sequential else chunked_linear_scan(a, b, chunk=self.chunk)


class _OnePass(nn.Module):
    """The cheapest graph from (a, b) to an h of the same shape: one elementwise pass (not a scan)."""

    def forward(self, a, b):
        return a * b + b


def part_gru(args, tmp: Path) -> None:
    """Every artifact converted first, then eager and all artifacts timed in interleaved rounds."""
    model, _ = create_model("gru_classifier")
    x = torch.randn(1, 196, 64)
    tuned = edge.optimize(model, target="executorch")
    sessions = {"eager nn.GRU": EagerSession(model), "eager tuned GRU": EagerSession(tuned)}
    inputs = {k: (x,) for k in sessions}
    infos = {}
    for target in args.targets:
        kinds = [("edge", {})]
        if target != "executorch" or args.raw_executorch:
            kinds.append(("raw nn.GRU", {"optimize": False}))
        for kind, kw in kinds:
            art, infos[(target, kind)] = convert(model, x, target, tmp / f"gru-{target}-{kind[:3]}", **kw)
            sessions[(target, kind)] = edge.load(art.path)
            inputs[(target, kind)] = (x.numpy(),)
    stats = time_interleaved(sessions, inputs, rounds=args.rounds, warmup=args.warmup, iters=args.iters)
    for session in sessions.values():
        if not isinstance(session, EagerSession):
            session.close()
    ms = {k: statistics.median(v["round_medians"]) for k, v in stats.items()}
    e_raw = ms["eager nn.GRU"]
    print(f"\n== nn.GRU 64->128, 196 steps, batch 1 (threads: torch {torch.get_num_threads()}); medians of "
          f"{args.rounds} interleaved rounds x {args.iters} runs")
    print(f"eager nn.GRU             p50 {e_raw:8.3f} ms")
    print(f"eager tuned GRU          p50 {ms['eager tuned GRU']:8.3f} ms   ({e_raw / ms['eager tuned GRU']:.2f}x vs "
          f"nn.GRU; the ExecuTorch form)")
    for target in args.targets:
        edge_ms = ms[(target, "edge")]
        print(f"{target:10s} edge          p50 {edge_ms:8.3f} ms   {e_raw / edge_ms:5.2f}x vs eager nn.GRU   "
              f"{infos[(target, 'edge')]}")
        if (target, "raw nn.GRU") in ms:
            raw_ms = ms[(target, "raw nn.GRU")]
            print(f"{target:10s} raw nn.GRU    p50 {raw_ms:8.3f} ms   edge/raw = {edge_ms / raw_ms:.2f}   "
                  f"{infos[(target, 'raw nn.GRU')]}")
        else:
            print(f"{target} raw nn.GRU: skipped (lowering takes ~161 s, STACK.md; --raw-executorch runs it)")


def part_mingru(args, tmp: Path) -> None:
    torch.manual_seed(0)
    N, seq_n = args.tokens, min(args.seq_tokens, args.tokens)
    ref = MinGRU(72).eval()
    x = torch.randn(1, N, 72)
    seq = _Seq(ChunkedMinGRU(ref, sequential=True)).eval()
    chunked = _Seq(ChunkedMinGRU(ref)).eval()
    with torch.no_grad():
        err = float((chunked(x) - seq(x)).abs().max())
    e_seq, e_chunk = eager_ms(seq, x, 2, max(3, args.iters // 10)), eager_ms(chunked, x, args.warmup, args.iters)
    e_log = eager_ms(ref, x, args.warmup, args.iters)
    print(f"\n== minGRU dim 72 (inner 144), {N} tokens; chunked vs sequential max |diff| {err:.2e}")
    print(f"eager log-space (logcumsumexp) p50 {e_log:8.3f} ms   (does not convert: STACK.md)")
    print(f"eager sequential loop          p50 {e_seq:8.3f} ms")
    print(f"eager chunked scan             p50 {e_chunk:8.3f} ms   {e_seq / e_chunk:6.1f}x vs sequential")
    a, b = torch.rand(1, N, 144), torch.randn(1, N, 144)
    for target in args.targets:
        chunk = get_converter(target).forms.get("mingru_chunk", CHUNK)
        cases = {"scan alone": (_Scan(False, chunk), _Scan(True), (a, b)),
                 "minGRU layer": (nn.Sequential(ref), seq, (x,))}
        runs, infos = {}, {}
        for what, (chunked_m, seq_m, inputs) in cases.items():
            short = tuple(t[:, :seq_n] for t in inputs)
            art, infos[what] = convert(chunked_m, inputs, target, tmp / f"min-{target}-{what[:4]}")
            runs[(what, "chunked")] = (art, inputs)
            art, _ = convert(seq_m, short, target, tmp / f"seq-{target}-{what[:4]}", optimize=False)
            runs[(what, "sequential")] = (art, short)
        art, _ = convert(_OnePass(), (a, b), target, tmp / f"one-{target}", optimize=False)
        runs["one pass"] = (art, (a, b))
        sessions = {k: edge.load(art.path) for k, (art, _) in runs.items()}
        stats = time_interleaved(sessions, {k: [t.numpy() for t in xs] for k, (_, xs) in runs.items()},
                                 rounds=args.rounds, warmup=max(args.warmup // 3, 1), iters=max(args.iters // 3, 3))
        for session in sessions.values():
            session.close()
        for what in cases:
            ms, s_ms = (statistics.median(stats[(what, kind)]["round_medians"]) for kind in ("chunked", "sequential"))
            scaled = s_ms * N / seq_n
            note = "" if seq_n == N else f" (measured at {seq_n} tokens: {s_ms:.3f} ms, scaled x{N / seq_n:g})"
            print(f"{target:10s} {what:12s} chunked p50 {ms:8.3f} ms | sequential p50 {scaled:9.3f} ms{note} | "
                  f"{scaled / ms:6.1f}x   chunked (chunk {chunk}): {infos[what]}", flush=True)
            if what == "scan alone":
                one = statistics.median(stats["one pass"]["round_medians"])
                print(f"{target:10s} {'':12s} 10x budget {scaled / 10:.3f} ms; one elementwise pass a * b + b over the "
                      f"same tensors p50 {one:.3f} ms ({one / (scaled / 10):.0%} of the budget)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="onnx,openvino,executorch")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=3136)
    ap.add_argument("--rounds", type=int, default=5, help="minGRU part: interleaved timing rounds")
    ap.add_argument("--seq-tokens", type=int, default=392, help="length at which the sequential loop is converted")
    ap.add_argument("--raw-executorch", action="store_true", help="also lower the raw nn.GRU (~161 s)")
    ap.add_argument("--only", choices=("gru", "mingru"))
    args = ap.parse_args()
    args.targets = [t for t in args.targets.split(",") if t]
    tmp = Path(tempfile.mkdtemp(prefix="gru_paths_"))
    try:
        if args.only in (None, "gru"):
            part_gru(args, tmp)
        if args.only in (None, "mingru"):
            part_mingru(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
