"""VisionGRU-Ti vs DeiT-S as resolution grows: latency, peak memory and compute efficiency, side by side.

Both models are converted by edge for each runtime (``--runtimes``): VisionGRU-Ti once per minGRU form
(``--forms``: ``chunked`` is the ``mingru_scan`` pass alone, ``striped`` adds the memory-lean stripe form
of edge/passes/scan_lean.py, ``loop`` runs each scan level as a runtime loop: ONNX ``Scan``, on OpenVINO a
``TensorIterator``; ``stripe_loop`` runs the long blocks' stripes in such a loop too), DeiT-S with ``img_size`` = the resolution so its position embedding fits.

* Memory (MiB): each artifact alone in a fresh process, peak RSS over load + ``--mem-iters`` runs minus
  the RSS before loading (the artifact's own cost: weights, compiled kernels, activations). Memory figures
  do not depend on machine load.
* Latency: every artifact of a runtime loaded together and timed in interleaved rounds (``--rounds``;
  medians of the round medians), so drift hits all alike. ``DeiT/VGRU`` is DeiT-S's latency over
  VisionGRU's (> 1: VisionGRU is faster).
* Compute: GMACs (matmul + conv MACs, torch's FLOP counter / 2), achieved GMAC/s = GMACs / latency,
  and that as a share of this CPU's fp32 matmul rate measured in the same run (torch, 1024^3, all threads).
* ``--memory``: per-stage tables too: eager PyTorch peak per stage (fresh process each), and per runtime
  the peak of each stage converted alone (stem, stage 1..4 of VisionGRU; DeiT-S whole), to show where
  the memory goes.

Run:
  .venv/bin/python benchmarks/visiongru_vs_deit.py --sizes 512,1024 --runtimes openvino,onnx
  .venv/bin/python benchmarks/visiongru_vs_deit.py --smoke            # tiny sizes, one round: proves it runs
  .venv/bin/python benchmarks/visiongru_vs_deit.py --sizes 512 --runtimes openvino --memory --verify
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import edge
from edge.errors import EdgeError
from edge.profile import reset_peak_rss, rss_mb, time_interleaved
from edge.zoo import create_model

RUNTIME_TARGETS = {"openvino": "openvino", "onnx": "onnx", "onnxruntime": "onnx", "executorch": "executorch"}
FORM_OPTIONS = {"chunked": {}, "striped": {"mingru_form": "striped"}, "loop": {"mingru_form": "loop"},
                "stripe_loop": {"mingru_form": "stripe_loop"}}


# --smoke builds these shallower variants (same widths): the point is that every path of the script runs
SMOKE_KW = {"deit_small": {"depth": 2}, "visiongru_tiny": {"depths": (1, 1, 1, 1)}}
_SMOKE = False


def build(name: str, size: int) -> nn.Module:
    kw = {"img_size": size} if name.startswith("deit") else {}
    kw.update(SMOKE_KW[name] if _SMOKE or os.environ.get("VGRU_BENCH_SMOKE") else {})
    model, _ = create_model(name, pretrained=False, **kw)
    return model.eval()


def gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """Matmul + conv + attention MACs of one forward (torch's FLOP counter counts 2 per MAC), in G.

    torch's counter has no formula for SDPA's CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``):
    without the one given here it counts DeiT-S's attention as 0 MACs (at 1248 px, 131 of its ~470 GMAC)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def attention(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as fc:
        model(x)
    return fc.get_total_flops() / 2e9


def matmul_gmacs_per_s(n: int = 1024, reps: int = 10) -> float:
    """This CPU's fp32 matmul rate (GMAC/s), median of ``reps`` n^3 products on all torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return n ** 3 / statistics.median(times) / 1e9


# ------------------------------------------------------------------------------------------------ memory
def _child(args: list[str]) -> dict:
    """Run this script in a fresh process (``--child ...``) and return the JSON it prints last."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"child {args} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def artifact_peak(path: Path, iters: int, options: dict | None = None) -> dict[str, float]:
    """Memory (MiB over the RSS before loading) of the artifact at ``path`` in a fresh process: ``load``
    (peak while the runtime loads / compiles it), ``resident`` (after loading), ``run`` (peak over
    ``iters`` runs after loading) and ``peak`` (the larger of load and run)."""
    return _child(["artifact", str(path), str(iters), json.dumps(options or {})])


def _child_artifact(path: str, iters: str, options: str) -> dict:
    import numpy as np
    from edge.artifact import Artifact
    from edge.runtimes import RUNTIMES
    art = Artifact.open(path)
    __import__(RUNTIMES.get(art.manifest.runtime).requires[0])   # the runtime's import is not the artifact's cost
    x = [np.random.default_rng(0).standard_normal(t.concrete_shape(1)).astype(t.dtype) for t in art.manifest.inputs]
    gc.collect()
    base = rss_mb()[0]
    reset_peak_rss()
    with edge.load(path, **json.loads(options)) as s:
        resident, load = rss_mb()
        reset_peak_rss()
        for _ in range(int(iters)):
            s.run(*x)
        run = rss_mb()[1]
    return {"load": load - base, "resident": resident - base, "run": run - base, "peak": max(load, run) - base,
            "nodes": _graph_nodes(art)}


def _graph_nodes(art) -> int | None:
    """Operations in the artifact's graph (ONNX nodes, OpenVINO IR layers), None for other formats."""
    main = str(art.main_path)
    if main.endswith(".onnx"):
        import onnx
        return len(onnx.load(main, load_external_data=False).graph.node)
    if main.endswith(".xml"):
        return open(main).read().count("<layer ")
    return None


class _Stage(nn.Module):
    """Stage ``i`` of a VisionGRU's GRUBlocks alone: NCHW in (after the stem / the previous stage), NCHW out."""

    def __init__(self, blocks: nn.Module, i: int):
        super().__init__()
        self.down = nn.Sequential(getattr(blocks, f"conv{i}"), getattr(blocks, f"norm{i}")) if i else nn.Identity()
        self.blocks = blocks.layers[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        B, C, H, W = x.shape
        t = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        for blk in self.blocks:
            t = blk(t, (H, W))
        return t.reshape(B, H, W, C).permute(0, 3, 1, 2)


def vgru_stages(model: nn.Module, size: int) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, example input) of the stem and each stage of a VisionGRU, in order."""
    x = torch.randn(1, 3, size, size)
    out = [("stem", model.tokenizer, x)]
    with torch.no_grad():
        x = model.tokenizer(x)
        for i in range(len(model.snake_gru.layers)):
            st = _Stage(model.snake_gru, i)
            out.append((f"stage{i + 1}", st, x))
            x = st(x)
    return out


def _child_eager(name: str, size: str, options: str) -> dict:
    """Eager PyTorch peak RSS per stage (MiB over the RSS before the stage) and of the whole forward;
    ``options``: the pass options as JSON, ``null`` for the model as built (no optimize passes)."""
    torch.set_num_threads(1)
    size_i = int(size)
    model = build(name, size_i)
    if json.loads(options) is not None:
        model = edge.optimize(model, target="onnx", **json.loads(options))
    parts = vgru_stages(model, size_i) if name.startswith("visiongru") else []
    peaks = {}
    with torch.no_grad():
        for stage, mod, x in parts:
            gc.collect()
            base = rss_mb()[0]
            reset_peak_rss()
            mod(x)
            peaks[stage] = rss_mb()[1] - base
        x = torch.randn(1, 3, size_i, size_i)
        gc.collect()
        base = rss_mb()[0]
        reset_peak_rss()
        model(x)
        peaks["whole"] = rss_mb()[1] - base
    return peaks


# ------------------------------------------------------------------------------------------------ runs
def convert(model: nn.Module, x: torch.Tensor, target: str, out: Path, args, **kw) -> tuple[edge.Artifact, float]:
    t = time.perf_counter()
    art = edge.convert(model, example_inputs=(x,), target=target, out=out, verify=args.verify, **kw)
    return art, time.perf_counter() - t


def form_options(form: str, args) -> dict:
    """The pass options of a VisionGRU form (``--stripe``: tokens per stripe of the striped forms)."""
    opts = dict(FORM_OPTIONS[form])
    if form in ("striped", "stripe_loop") and args.stripe:
        opts["mingru_stripe"] = args.stripe
    return opts


def session_options(runtime: str, args) -> dict:
    """Runtime options both models get (``--ort-lean``: ORT without its arena, memory pattern and weight
    pre-packing; ``--ov-lean``: OpenVINO without its JIT-fused element-wise subgraphs)."""
    if args.ort_lean and RUNTIME_TARGETS[runtime] == "onnx":
        return {"mem_arena": 0, "mem_pattern": 0, "prepacking": 0}
    if args.ov_lean and RUNTIME_TARGETS[runtime] == "openvino":
        return {"snippets": 0}
    return {}


def variants(args) -> list[tuple[str, str]]:
    """(label, form) of the models compared: VisionGRU-Ti per form, then DeiT-S."""
    return [(f"VGRU-{f}", f) for f in args.forms] + [("DeiT-S", "")]


def run_size(size: int, runtime: str, args, tmp: Path, macs: dict) -> dict[str, dict]:
    target = RUNTIME_TARGETS[runtime]
    made = {}
    for label, form in variants(args):
        name = "deit_small" if label == "DeiT-S" else "visiongru_tiny"
        model = build(name, size)
        x = torch.randn(1, 3, size, size)
        if (label, size) not in macs:
            macs[label, size] = gmacs(model, x)
        kw = {"pass_options": form_options(form, args)} if form else {}
        try:
            art, conv_s = convert(model, x, target, tmp / f"{label}-{size}-{target}", args, **kw)
        except EdgeError as e:   # a form a runtime cannot take is reported, the others still run
            print(f"  {label} on {runtime}: not converted: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        del model
        gc.collect()
        made[label] = {"art": art, "convert_s": conv_s, "status": art.manifest.status,
                       "mem": artifact_peak(art.path, args.mem_iters, session_options(runtime, args))}
        made[label]["peak_mb"] = made[label]["mem"]["peak"]
    sessions = {k: edge.load(v["art"].path, **session_options(runtime, args)) for k, v in made.items()}
    inputs = {k: [torch.randn(1, 3, size, size).numpy()] for k in made}
    try:
        stats = time_interleaved(sessions, inputs, rounds=args.rounds, warmup=args.warmup, iters=args.iters)
    finally:
        for s in sessions.values():
            s.close()
    for k, v in made.items():
        v["ms"] = statistics.median(stats[k]["round_medians"])
        art = v.pop("art")
        if not args.keep:
            shutil.rmtree(art.path, ignore_errors=True)
    return made


def stage_table(size: int, args, tmp: Path) -> None:
    """Where the memory goes: eager peak per stage, then per runtime each stage converted alone."""
    forms = ["reference", *args.forms]
    eager = {f: _child(["eager", "visiongru_tiny", str(size),
                        json.dumps(None if f == "reference" else form_options(f, args))]) for f in forms}
    deit = _child(["eager", "deit_small", str(size), "null"])
    stages = [k for k in eager[forms[0]] if k != "whole"]
    print(f"\n{size} px: peak MiB by stage (eager PyTorch, 1 thread; each stage over the RSS before it)")
    print(f"  {'form':>12} | " + " ".join(f"{s:>8}" for s in stages) + f" | {'whole':>8}")
    for f in forms:
        print(f"  {f:>12} | " + " ".join(f"{eager[f][s]:8.1f}" for s in stages) + f" | {eager[f]['whole']:8.1f}")
    print(f"  {'DeiT-S':>12} | " + " ".join(f"{'':>8}" for _ in stages) + f" | {deit['whole']:8.1f}")
    for runtime in args.runtimes:
        target = RUNTIME_TARGETS[runtime]
        print(f"{size} px on {runtime}: each VisionGRU-Ti stage converted alone: peak MiB (load + "
              f"{args.mem_iters} runs) / resident MiB after load / graph nodes")
        print(f"  {'form':>12} | " + " ".join(f"{s:>14}" for s in stages))
        for f in args.forms:
            model = edge.optimize(build("visiongru_tiny", size), target=target, **form_options(f, args))
            row = []
            for stage, mod, x in vgru_stages(model, size):
                try:
                    art, _ = convert(mod, x, target, tmp / f"{stage}-{f}-{size}-{target}", args, optimize=False)
                except EdgeError:
                    row.append("n/a")
                    continue
                m = artifact_peak(art.path, args.mem_iters, session_options(runtime, args))
                row.append(f"{m['peak']:.0f}/{m['resident']:.0f}/{m['nodes']}")
                shutil.rmtree(art.path, ignore_errors=True)
            print(f"  {f:>12} | " + " ".join(f"{v:>14}" for v in row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", default="openvino", help="comma list: openvino, onnx, executorch")
    ap.add_argument("--target", help="one runtime (the old flag; same as --runtimes)")
    ap.add_argument("--sizes", default="224,512,1024")
    ap.add_argument("--forms", default="chunked,striped", help="VisionGRU forms to compare: " + ", ".join(FORM_OPTIONS))
    ap.add_argument("--stripe", type=int, help="tokens per stripe of the striped forms (default: scan_lean.STRIPE)")
    ap.add_argument("--iters", type=int, default=5, help="timed runs per model per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mem-iters", type=int, default=3, help="runs after load in the memory measurement")
    ap.add_argument("--verify", action="store_true", help="also run the parity check (slow at 1024 px)")
    ap.add_argument("--memory", action="store_true", help="also print the per-stage memory tables")
    ap.add_argument("--smoke", action="store_true", help="shallow models at 64 px, one round: proves the script runs")
    ap.add_argument("--ort-lean", action="store_true", help="ONNX Runtime sessions without the CPU memory arena, "
                    "memory pattern and weight pre-packing (mem_arena=0, mem_pattern=0, prepacking=0), for both models")
    ap.add_argument("--ov-lean", action="store_true", help="OpenVINO sessions without the CPU plugin's snippets "
                    "(snippets=0: SNIPPETS_MODE=DISABLE), for both models")
    ap.add_argument("--keep", metavar="DIR", help="keep the converted artifacts in a new folder under DIR")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps({"artifact": _child_artifact, "eager": _child_eager}[kind](*rest)))
        return
    args.runtimes = [r for r in (args.target or args.runtimes).split(",") if r]
    args.forms = [f for f in args.forms.split(",") if f]
    for f in args.forms:
        if f not in FORM_OPTIONS:
            ap.error(f"unknown form {f!r}; choose from {', '.join(FORM_OPTIONS)}")
    for r in args.runtimes:
        if r not in RUNTIME_TARGETS:
            ap.error(f"unknown runtime {r!r}; choose from {', '.join(RUNTIME_TARGETS)}")
    if args.smoke:   # shallow models (SMOKE_KW) at 64 px, one round: proves every path runs, measures nothing
        args.sizes, args.rounds, args.iters, args.warmup, args.mem_iters = "64", 1, 2, 1, 1
        global _SMOKE
        _SMOKE = True
        os.environ["VGRU_BENCH_SMOKE"] = "1"   # the child processes build the same variants
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    peak = matmul_gmacs_per_s()
    print(f"ORT options: {session_options('onnx', args) or 'defaults'}; CPU {cpu}, {os.cpu_count()} cores; fp32 matmul {peak:.1f} GMAC/s (torch, 1024^3, "
          f"{torch.get_num_threads()} threads); batch 1, warmup {args.warmup}, {args.rounds} rounds x {args.iters} iters")
    tmp = Path(tempfile.mkdtemp(prefix="vgru_deit_", dir=args.keep))
    macs: dict[str, float] = {}
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            if args.memory:
                stage_table(size, args, tmp)
            for runtime in args.runtimes:
                r = run_size(size, runtime, args, tmp, macs)
                if "DeiT-S" not in r:
                    continue
                d = r["DeiT-S"]
                print(f"\n{size} px on {runtime}")
                print(f"  {'model':>14} | {'ms':>8} {'MiB':>7} | {'DeiT/VGRU ms':>12} {'VGRU/DeiT MiB':>13} | "
                      f"{'GMAC':>6} {'GMAC/s':>7} {'of peak':>7} | {'load':>5} {'resid':>5} {'run':>5} {'nodes':>6} | "
                      f"{'convert s':>9} parity")
                for label, v in r.items():
                    mem = v["mem"]
                    rate = macs[label, size] / (v["ms"] / 1e3)
                    ratios = (f"{d['ms'] / v['ms']:11.2f}x {v['peak_mb'] / max(d['peak_mb'], 1e-9):12.2f}x"
                              if label != "DeiT-S" else f"{'':>12} {'':>13}")
                    print(f"  {label:>14} | {v['ms']:8.1f} {v['peak_mb']:7.0f} | {ratios} | {macs[label, size]:6.1f} "
                          f"{rate:7.1f} {rate / peak:6.0%} | {mem['load']:5.0f} {mem['resident']:5.0f} {mem['run']:5.0f} "
                          f"{mem['nodes'] or 0:6d} | {v['convert_s']:9.0f} {v['status']}", flush=True)
    finally:
        if args.keep:
            print(f"artifacts kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
