"""OpenVINO fp32 / int8 (NNCF) vs PyTorch eager fp32, measured side by side in one run.

For each model: convert fp32 and int8 with edge (verified as usual), then time PyTorch eager, the
OpenVINO fp32 IR and the OpenVINO int8 IR in interleaved rounds (so background load hits all three
alike) with the same timer (edge.profile.time_session: burn-in, then a timed loop). Every OpenVINO
figure states the INFERENCE_PRECISION_HINT it ran with. For models with a test set the int8
artifact's top-1 agreement with eager and its accuracy are measured on the whole test set.

    .venv/bin/python benchmarks/openvino_vs_eager.py                       # vit_tiny_digits and vit_tiny
    .venv/bin/python benchmarks/openvino_vs_eager.py --models vit_tiny_digits --rounds 5 --iters 100

``--profile`` adds OpenVINO's per-layer counters summed per layer type and kernel for every OpenVINO row (ms per
run; ``i8`` kernels are the int8 ones), so a run shows where the remaining time goes.

``--presets performance,mixed`` also converts int8 with NNCF's MIXED preset (asymmetric activations) and times it
in the same rounds, with its test-set agreement.

Goals (issue 6): int8 >= 4x over eager with >= 98% top-1 agreement on digits; int8 >= 1.6x over OpenVINO fp32.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edge
from edge.profile import EagerSession, format_kinds, op_kinds, time_interleaved

PROFILE_ITERS = 30   # runs under the per-layer counters (--profile)


def agreement(model: torch.nn.Module, session, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    with torch.inference_mode():
        ref = np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy() for i in range(len(x))])
    got = np.concatenate([session.run(x[i:i + 1])[0] for i in range(len(x))])
    return {"samples": len(x), "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
            "eager_accuracy": float((ref.argmax(1) == y).mean()), "int8_accuracy": float((got.argmax(1) == y).mean())}


def bench_model(name: str, out: Path, args) -> dict:
    from edge.zoo import create_model
    torch.manual_seed(0)
    model, entry = create_model(name)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(entry.input_shapes[0]).astype(np.float32))
    t0 = time.perf_counter()
    arts = edge.convert_all(name, targets=["openvino"], precisions=["fp32", "int8"], out=out / name,
                            options={"int8_preset": args.presets[0]})
    convert_s = time.perf_counter() - t0
    arts = {a.manifest.precision: a for a in arts}
    extra = {}   # int8 artifacts of the other NNCF presets asked for (--presets), timed in the same rounds
    for preset in args.presets[1:]:
        (extra[preset],) = edge.convert_all(name, targets=["openvino"], precisions=["int8"],
                                            out=out / f"{name}-{preset}", options={"int8_preset": preset})
    hint = args.precision_hint
    # every hint other than f32 is checked against PyTorch first (edge verify --runtime-option precision_hint=...):
    # OpenVINO's reduced-precision kernels have computed wrong numbers before (converters/openvino.py, masks)
    checks = {}
    for h in sorted(({hint} | ({"bf16"} if args.bf16 else set())) - {"f32"}):
        for p, art in arts.items():
            rec = edge.verify(art.path, runtime_options={"precision_hint": h})   # reference rebuilt from the manifest
            cosine = next(iter(rec["outputs"].values()))["cosine"]
            checks[f"{p} ({h})"] = f"{rec['precision']} check passed, cosine {cosine:.5f}"
    if args.threads:
        torch.set_num_threads(args.threads)
    ov_opts = {"threads": args.threads} if args.threads else {}
    sessions = {"eager fp32": EagerSession(model)}
    for p in ("fp32", "int8"):
        sessions[f"openvino {p} ({hint})"] = edge.load(arts[p].path, precision_hint=hint, cache_dir=False, **ov_opts)
    for preset, art in extra.items():
        sessions[f"openvino int8 {preset} ({hint})"] = edge.load(art.path, precision_hint=hint, cache_dir=False,
                                                                 **ov_opts)
    if args.bf16:   # what the CPU plugin does when nobody sets the hint
        sessions["openvino fp32 (bf16)"] = edge.load(arts["fp32"].path, precision_hint="bf16", cache_dir=False, **ov_opts)
        sessions["openvino int8 (bf16)"] = edge.load(arts["int8"].path, precision_hint="bf16", cache_dir=False, **ov_opts)
    inputs = {k: [x] if k.startswith("eager") else [x.numpy()] for k in sessions}
    stats = time_interleaved(sessions, inputs, rounds=args.rounds, warmup=args.warmup, iters=args.iters)
    eager = stats["eager fp32"]["p50_ms"]
    fp32 = stats[f"openvino fp32 ({hint})"]["p50_ms"]
    res = {"model": name, "input": list(entry.input_shapes[0]), "torch_threads": torch.get_num_threads(),
           "convert_s": round(convert_s, 1), "latency": stats,
           "speedup_vs_eager": {k: eager / v["p50_ms"] for k, v in stats.items()},
           "int8_vs_openvino_fp32": fp32 / stats[f"openvino int8 ({hint})"]["p50_ms"],
           "min_speedup_vs_eager": {k: stats["eager fp32"]["min_ms"] / v["min_ms"] for k, v in stats.items()},
           "int8_vs_openvino_fp32_min": stats[f"openvino fp32 ({hint})"]["min_ms"] / stats[f"openvino int8 ({hint})"]["min_ms"],
           "openvino_threads": sessions[f"openvino fp32 ({hint})"].load_details["compiled_properties"].get(
               "INFERENCE_NUM_THREADS"),
           "int8_parity": next(iter(arts["int8"].manifest.parity["outputs"].values())),
           "hint_checks": checks,
           "int8_quantization": arts["int8"].manifest.details.get("quantization")}
    if entry.test_set is not None:
        tx, ty = entry.test_set()
        res["int8_test_set"] = agreement(model, sessions[f"openvino int8 ({hint})"], np.asarray(tx), np.asarray(ty))
        for preset in extra:
            res[f"int8 {preset}_test_set"] = agreement(model, sessions[f"openvino int8 {preset} ({hint})"],
                                                       np.asarray(tx), np.asarray(ty))
    if args.profile:
        res["kinds"] = {k: op_kinds(s.native_profile(s.prepare(*inputs[k]), iters=PROFILE_ITERS, top=None),
                                    PROFILE_ITERS) for k, s in sessions.items() if not k.startswith("eager")}
    for k, s in sessions.items():
        if not k.startswith("eager"):
            s.close()
    return res


def report(res: dict, hint: str) -> str:
    lines = [f"\n== {res['model']} {res['input']}  (torch threads {res['torch_threads']}, openvino threads "
             f"{res['openvino_threads']}; medians over {len(next(iter(res['latency'].values()))['round_medians'])} "
             f"interleaved rounds)"]
    for k, v in res["latency"].items():
        rm = ", ".join(f"{m:.3f}" for m in v["round_medians"])
        lines.append(f"  {k:<24} p50 {v['p50_ms']:8.3f} ms  min {v['min_ms']:7.3f}  x{res['speedup_vs_eager'][k]:5.2f} "
                     f"vs eager (p50)  x{res['min_speedup_vs_eager'][k]:5.2f} (min)   round medians {rm}")
    lines.append(f"  int8 vs openvino fp32 ({hint} hint): x{res['int8_vs_openvino_fp32']:.2f} (p50), "
                 f"x{res['int8_vs_openvino_fp32_min']:.2f} (min)")
    for k, v in res.get("hint_checks", {}).items():
        lines.append(f"  openvino {k}: {v}")
    for key in [k for k in res if k.endswith("_test_set")]:
        t, what = res[key], key[:-len("_test_set")]
        lines.append(f"  {what} on the test set ({t['samples']}): top-1 agreement with eager "
                     f"{t['top1_agreement']:.4f}, accuracy {t['int8_accuracy']:.4f} (eager {t['eager_accuracy']:.4f})")
    for path, kinds in res.get("kinds", {}).items():
        total = sum(k["ms"] for k in kinds)
        lines.append(f"  {path}: per-layer counters {total:.3f} ms per run ({PROFILE_ITERS} runs)")
        lines += format_kinds(kinds, top=8, indent="    ")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit_tiny_digits", "vit_tiny"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--precision-hint", default="f32", help="INFERENCE_PRECISION_HINT of the main OpenVINO rows")
    ap.add_argument("--bf16", action="store_true", help="also time both IRs under the bf16 hint (the CPU default)")
    ap.add_argument("--threads", type=int, help="threads for both PyTorch and OpenVINO (default: each its own)")
    ap.add_argument("--json", help="write the full results here")
    ap.add_argument("--profile", action="store_true", help="per-layer counters per layer type and kernel")
    ap.add_argument("--presets", default="performance", help="NNCF presets of the int8 artifacts, comma-separated "
                    "(openvino option int8_preset: performance, mixed); the first is the main int8 row")
    args = ap.parse_args()
    args.presets = [p for p in args.presets.split(",") if p]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            res = bench_model(name, Path(tmp), args)
            print(report(res, args.precision_hint), flush=True)
            results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
