"""Token dropping (HiRED: class token + top-k patches by class-token attention) at --keep 0.5.

Speed: zoo vit_tiny at 224 (196 patch tokens, 12 blocks) on ONNX Runtime (and OpenVINO with --openvino),
undropped vs dropped after block L for each --layers, measured side by side: the artifacts are benchmarked
in interleaved rounds and the median of the rounds' p50s is reported (the machine is shared and noisy).
Agreement: vit_tiny_digits converted to ONNX with the same settings; the artifact's top-1 agreement with
the undropped model over the whole digits test set comes from its manifest (parity.vs_original).

    .venv/bin/python benchmarks/token_dropping.py [--keep 0.5] [--layers 0 1 2] [--rounds 5] [--openvino]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import edge


def speed(targets: list[str], keep: float, layers: list[int], rounds: int, iters: int, out: Path) -> dict:
    """{(target, layer or None): median p50 ms} for vit_tiny at 224."""
    arts = {}
    for target in targets:
        arts[(target, None)] = edge.convert("vit_tiny", target=target, out=out / f"{target}-full")
        for L in layers:
            arts[(target, L)] = edge.convert("vit_tiny", target=target, out=out / f"{target}-drop{L}",
                                             keep_tokens=keep, prepared=_prepared(keep, L))
    p50s: dict = {k: [] for k in arts}
    for _ in range(rounds):
        for k, art in arts.items():
            p50s[k].append(edge.benchmark(art.path, warmup=5, iters=iters, native_profile=False).p50_ms)
    return {k: statistics.median(v) for k, v in p50s.items()}


def _prepared(keep: float, layer: int, model: str = "vit_tiny"):
    from edge.api import prepare
    prep = prepare(model, keep_tokens=keep)
    prep.pass_options["drop_layer"] = layer   # edge.convert exposes keep_tokens; the layer is a pass option
    return prep


def agreement(keep: float, layers: list[int], out: Path) -> dict:
    res = {}
    for L in layers:
        art = edge.convert("vit_tiny_digits", target="onnx", out=out / f"digits-drop{L}", keep_tokens=keep,
                           prepared=_prepared(keep, L, "vit_tiny_digits"))
        p = art.manifest.parity
        res[L] = {"agree": p["vs_original"]["test_set_top1_agreement"], "n": p["vs_original"]["test_set_samples"],
                  "acc": p["vs_original"]["accuracy"], "acc0": p["vs_original"]["original_accuracy"],
                  "parity_max_abs": p["outputs"]["output"]["max_abs"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--openvino", action="store_true", help="also measure OpenVINO (fp32, f32 hint)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    targets = ["onnx"] + (["openvino"] if args.openvino else [])
    with tempfile.TemporaryDirectory() as tmp:
        acc = agreement(args.keep, args.layers, Path(tmp))
        t = speed(targets, args.keep, args.layers, args.rounds, args.iters, Path(tmp))
    print(f"\ntoken dropping, keep {args.keep}: vit_tiny 224 (197 -> {round(args.keep * 196) + 1} tokens) speed; "
          f"vit_tiny_digits agreement with the undropped model")
    print(f"{'target':10} {'drop after block':>16} {'p50 ms':>8} {'speedup':>8} {'digits top-1 agree':>19} "
          f"{'acc (orig)':>12} {'parity vs dropped eager':>24}")
    for target in targets:
        base = t[(target, None)]
        print(f"{target:10} {'(none)':>16} {base:8.3f} {1.0:7.2f}x")
        for L in args.layers:
            a = acc[L]
            print(f"{target:10} {L:>16} {t[(target, L)]:8.3f} {base / t[(target, L)]:7.2f}x "
                  f"{a['agree']:>12.4f} ({a['n']}) {a['acc']:.4f} ({a['acc0']:.4f}) "
                  f"{'max_abs ' + format(a['parity_max_abs'], '.2g'):>24}")


if __name__ == "__main__":
    main()
