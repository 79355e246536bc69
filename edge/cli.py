"""The ``edge`` command line. Each command parses its flags and calls the SDK function a Python user calls.

Exit codes: 0 ok, 1 an artifact failed verification or could not be built, 2 bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from edge import __version__
from edge.errors import EdgeError, UsageError
from edge.registry import Registry

COMMANDS: Registry[Callable[[argparse.Namespace], int]] = Registry("command")


def command(name: str):
    """Decorator: register ``fn(args) -> exit code`` as ``edge <name>``."""
    return COMMANDS.register(name)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def _parse_options(pairs: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """``--option key=value`` pairs; values are JSON-decoded when they parse (numbers, true/false)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {pair!r} must look like key=value")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.replace("-", "_")] = value
    return out


_FLAG_PREFIX = "target_option_"


def _add_target_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option the registered targets declare (``Option``), built from the declarations, so a
    plugin target's options get flags too. A key several targets declare is one flag; a key whose flag another
    argument already has stays reachable with ``--option key=value``."""
    from edge.converters import TARGETS
    declared: dict[str, list[tuple[str, Any]]] = {}
    for name in TARGETS.names():
        try:
            cls = TARGETS.get(name)
        except EdgeError:   # a plugin that fails to import: `edge targets` says why
            continue
        for key, opt in getattr(cls, "options", {}).items():
            declared.setdefault(key, []).append((name, opt))
    group = parser.add_argument_group("target options (built from each target's declared options)")
    for key, decls in sorted(declared.items()):
        opt, names = decls[0][1], ", ".join(n for n, _ in decls)
        flag, dest = "--" + key.replace("_", "-"), _FLAG_PREFIX + key
        if flag in parser._option_string_actions:
            continue
        boolean = set(opt.choices) == {False, True}
        choices = f" ({', '.join(map(str, opt.choices))}; default {opt.default})" if opt.choices and not boolean else ""
        help_text = f"{names}: {opt.help}{choices}"
        if boolean:
            if opt.default:
                group.add_argument("--no-" + key.replace("_", "-"), dest=dest, action="store_const", const=False,
                                   help=f"{help_text} (on by default; this flag turns it off)")
            else:
                group.add_argument(flag, dest=dest, action="store_const", const=True, help=help_text)
        else:
            group.add_argument(flag, dest=dest, metavar=key.upper(), type=opt.parse, help=help_text)


def _target_flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The target options given with their own flags."""
    return {k[len(_FLAG_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_FLAG_PREFIX) and v is not None}


@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    import edge
    from edge.sources import parse_shapes
    if not args.out.strip():
        raise UsageError("-o/--out is empty; name the artifact folder to create, e.g. -o out/model")
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    options = {**_parse_options(args.option), **_target_flag_values(args)}
    arts = edge.convert_all(
        args.model, targets=targets, precisions=precisions, out=args.out, input_shapes=parse_shapes(args.input_shape),
        weights=args.weights, trust_weights=args.trust_weights, dynamic_batch=args.dynamic_batch,
        optimize=not args.no_optimize, disable_passes=args.disable_pass or (), keep_tokens=args.keep_tokens,
        calib=args.calib, verify=not args.no_verify, options=options, labels=_read_labels(args.labels),
        max_drop=args.max_drop,
        _single=len(targets) * len(precisions) == 1)
    rows = [{"path": str(a.path), "target": a.manifest.target, "precision": a.manifest.precision,
             "status": a.manifest.status, "parity": a.manifest.parity} for a in arts]
    _emit(args, rows, "\n".join(f"{r['status']:>12}  {r['target']}/{r['precision']}  -> {r['path']}"
                                f"{_parity_text(r['parity'])}" for r in rows))
    return 0


def _read_labels(path: str | None) -> list[str] | None:
    """``--labels FILE``: one class name per line (blank lines at the end ignored), or a JSON list."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--labels {path} cannot be read ({getattr(e, 'strerror', None) or e}); "
                         f"give a UTF-8 text file with one class name per line") from None
    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--labels {path} is not JSON ({e}); give a JSON list of class names") from None
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise UsageError(f"--labels {path} must hold a JSON list of class names")
        return [str(n) for n in names]
    return text.rstrip("\n").split("\n") if text.strip() else []


def _parity_text(parity: dict[str, Any] | None) -> str:
    from edge.parity import ParityReport
    return ParityReport.from_dict(parity).summary()


@command("verify")
def cmd_verify(args: argparse.Namespace) -> int:
    import edge
    options = _parse_options(args.runtime_option, flag="--runtime-option")
    parity = edge.verify(args.artifact, args.model, weights=args.weights, trust_weights=args.trust_weights,
                         runtime_options=options, trust_source=args.trust_source)
    under = f" under {parity['runtime_options']}" if parity.get("runtime_options") else ""
    _emit(args, parity, f"verified {args.artifact}{under}{_parity_text(parity)}")
    return 0


@command("debug")
def cmd_debug(args: argparse.Namespace) -> int:
    import edge
    from edge.debugger import format_table
    table = edge.debug(args.artifact, inputs=args.inputs, top=args.top, model=args.model, weights=args.weights,
                       trust_weights=args.trust_weights, trust_source=args.trust_source)
    _emit(args, table.to_json(), format_table(table))
    if args.html:
        from edge.report import _write_text, debug_html
        _write_text(Path(args.html), debug_html([table.to_json()]))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    import edge
    from edge.matrix import are_artifacts
    from edge.profile import format_report
    if not are_artifacts(args.artifacts):
        return _bench_matrix(args)
    if args.targets or args.precisions or args.resolutions:
        raise UsageError("--targets/--precisions/--resolutions apply to model names, not to artifact folders")
    options = _parse_options(args.runtime_option, flag="--runtime-option")
    reports = []
    for path in args.artifacts:
        reports.append(edge.benchmark(path, warmup=args.warmup, iters=args.iters, batch=args.batch,
                                      native_profile=not args.no_native_profile, **options))
    _emit(args, [r.to_json() for r in reports] if len(reports) > 1 else reports[0].to_json(),
          "\n\n".join(format_report(r) for r in reports))
    return 0


def _bench_matrix(args: argparse.Namespace) -> int:
    """`edge bench MODEL... --targets ... --precisions ... --resolutions ...`: the matrix and its reports."""
    if args.runtime_option:
        raise UsageError("--runtime-option applies to artifact folders (edge bench ARTIFACT ...), "
                         "not to a matrix of models")
    from edge.matrix import STATUS_FAILED, parse_resolutions, run_matrix, split_list
    from edge.report import format_table, write_all
    from edge.sources import parse_shapes
    results = run_matrix(args.artifacts, targets=split_list(args.targets), precisions=split_list(args.precisions)
                         or ["fp32"], resolutions=parse_resolutions(args.resolutions), cache_dir=args.cache_dir,
                         warmup=args.warmup, iters=args.iters, calib=args.calib, options=_parse_options(args.option),
                         rebuild=args.rebuild, optimize=not args.no_optimize, progress=True,
                         op_profile=not args.no_native_profile, weights=args.weights,
                         input_shapes=parse_shapes(args.input_shape), out=args.out, ray=args.ray,
                         devices=split_list(args.devices))
    paths = write_all(results, args.out)
    _emit(args, results, format_table(results) + "\nwrote " + ", ".join(str(p) for p in paths))
    return 1 if any(c["status"] == STATUS_FAILED for c in results["cells"]) else 0


@command("devices")
def cmd_devices(args: argparse.Namespace) -> int:
    """`edge devices [--ray ADDRESS]`: the devices a run can measure on, and the targets each runs."""
    if args.ray:
        from edge.fleet import list_devices
        rows = list_devices(args.ray)
    else:
        from edge.devices import device_for
        rows = [device_for("local").info()]
    _emit(args, rows, "\n".join(
        f"{r['name']:<16} {r['kind']:<8} {r.get('node') or r['host'].get('hostname', '')}  {r['host'].get('cpu', '')}"
        f"\n  runs: {', '.join(t for t, why in r['targets'].items() if why is None) or 'nothing'}" for r in rows))
    return 0


@command("calib")
def cmd_calib(args: argparse.Namespace) -> int:
    """`edge calib generate MODEL -o calib.npz`: data-free calibration inputs to keep, inspect and reuse."""
    from edge.calibration import generate
    from edge.sources import parse_shapes
    shapes = parse_shapes(args.input_shape)
    if shapes is not None and len(shapes) != 1:
        raise UsageError("edge calib generate makes one input; pass a single --input-shape")
    settings = {k: getattr(args, k) for k in ("images", "steps", "budget_s", "seed") if getattr(args, k) is not None}
    gen = generate(args.model, input_shape=shapes[0] if shapes else None, weights=args.weights,
                   trust_weights=args.trust_weights, method=args.method, out=args.out,
                   cache=not args.no_cache, **settings)
    rec = gen.record()
    loss = " ".join(f"{k} {v:.4g}" for k, v in rec["final_loss"].items())
    _emit(args, {**rec, "out": str(args.out)},
          f"wrote {args.out}: {rec['images']} images (+{rec['held_out']} held out) by {rec['method']}, "
          f"{rec['steps']} steps in {rec['seconds']:.1f}s (stopped by {rec['stopped_by']}"
          f"{', from the cache' if rec['cached'] else ''}); final loss {loss}")
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from edge.report import load_results, write_all
    paths = write_all(load_results(args.results), args.out or Path(args.results).parent)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    from edge.report import compare, format_compare, load_results
    rows = compare(load_results(args.a), load_results(args.b))
    _emit(args, rows, format_compare(rows, Path(args.a).name if Path(args.a).name != Path(args.b).name else "a",
                                     Path(args.b).name if Path(args.a).name != Path(args.b).name else "b"))
    return 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from edge.serve import serve
    serve(args.artifact, host=args.host, port=args.port, results=args.results)
    return 0


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from edge.artifact import Artifact
    art = Artifact.open(args.artifact, check_hashes=not args.no_check)
    m = art.manifest
    if args.json:
        _emit(args, m.to_json(), "")
        return 0
    lines = [f"{art.path}: {m.target}/{m.precision} ({m.format}, runtime {m.runtime}) status {m.status}",
             f"  source   {json.dumps(m.source)}",
             *(f"  input    {t.name} {t.shape} {t.dtype}" for t in m.inputs),
             *(f"  output   {t.name} {t.shape} {t.dtype}" for t in m.outputs),
             *(f"  file     {f} sha256 {h[:16]}..." for f, h in m.files.items()),
             f"  parity  {_parity_text(m.parity) or ' (none)'}",
             f"  versions {', '.join(f'{k} {v}' for k, v in m.versions.items())}",
             f"  created  {m.created}"]
    for key, value in m.details.items():
        if key != "op_histogram":
            lines.append(f"  {key}: {json.dumps(value, default=str)[:200]}")
    print("\n".join(lines))
    return 0


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from edge.zoo import get_entry, list_models
    rows = [{"name": n, "input_shapes": get_entry(n).input_shapes, "bundled_weights": bool(get_entry(n).weights),
             "description": get_entry(n).description} for n in list_models()]
    _emit(args, rows, "\n".join(f"{r['name']:<20} {str(r['input_shapes']):<22} "
                                f"{'weights' if r['bundled_weights'] else 'random init':<12} {r['description']}"
                                for r in rows))
    return 0


@command("targets")
def cmd_targets(args: argparse.Namespace) -> int:
    from edge.converters import TARGETS, get_converter
    rows = []
    for name in TARGETS.names():
        try:
            conv = get_converter(name)
        except EdgeError as e:  # a third-party entry point that fails to import
            rows.append({"name": name, "available": False, "reason": str(e)})
            continue
        missing = conv.missing()
        rows.append({"name": name, "format": conv.format, "runtime": conv.runtime, "precisions": list(conv.precisions),
                     "options": {k: {"default": o.default, "choices": list(o.choices), "help": o.help}
                                 for k, o in conv.options.items()},
                     "forms": dict(conv.forms), "sources": list(conv.sources),
                     "available": missing is None,
                     "reason": f"pip install 'edge[{conv.extra}]'" if missing else (conv.can_execute() or "")})
    _emit(args, rows, "\n".join(f"{r['name']:<11} {'yes' if r['available'] else 'no ':<4} "
                                f"{','.join(r.get('precisions', [])):<44} {r.get('reason', '')}" for r in rows))
    return 0


@command("optimize")
def cmd_optimize(args: argparse.Namespace) -> int:
    from edge.passes import list_passes
    rows = [{"name": p.name, "default": p.default, "option": p.option, "description": p.description}
            for p in list_passes()]
    _emit(args, rows, "\n".join(f"{r['name']:<14} {'on ' if r['default'] else 'off'} {r['description']}" for r in rows)
          or "no passes registered")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Convert, verify and profile PyTorch vision models for "
                                "ONNX Runtime, OpenVINO, ExecuTorch, CoreML and CUDA.")
    p.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sp.add_argument("--progress", action="store_true", help="show step progress even when stderr is not a terminal")
        sp.add_argument("--verbose", "-v", action="store_true",
                        help="show the backends' own output and warnings (hidden by default), and tracebacks")
        return sp

    c = add("convert", "convert a model for one or more targets, then verify it against PyTorch")
    c.add_argument("model", help="zoo name (see `edge models`), file.py:factory, package.module:factory, or a .pt2")
    c.add_argument("--target", "-t", default="onnx", help="target(s), comma-separated (see `edge targets`)")
    c.add_argument("--precision", "-p", default="fp32", help="precision(s), comma-separated (fp32, fp16, int8, ...)")
    c.add_argument("--out", "-o", required=True, help="artifact folder (several targets: one subfolder each)")
    c.add_argument("--weights", help=".pt/.pth state dict or .safetensors for a factory model")
    c.add_argument("--trust-weights", action="store_true", help="load a pickled checkpoint with weights_only=False")
    c.add_argument("--input-shape", action="append", help="input shape like 1,3,224,224; repeat for several inputs")
    c.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    c.add_argument("--no-optimize", action="store_true", help="skip edge's optimize passes")
    c.add_argument("--disable-pass", action="append", metavar="NAME", help="skip one optimize pass (see `edge optimize`)")
    c.add_argument("--keep-tokens", type=float, help="ViT token dropping: keep this fraction of patch tokens")
    c.add_argument("--calib", help="calibration data: image folder, .npy/.npz, 'datafree' (inputs generated from "
                   "the model; 'datafree:psaq,steps=100,budget_s=60' sets its method and limits; see "
                   "`edge calib generate`), 'synthetic' or 'testset'")
    c.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="int8: keep the layers that cost accuracy in float until within POINTS of the float model")
    c.add_argument("--no-verify", action="store_true", help="skip the parity check (artifact marked unverified)")
    c.add_argument("--labels", metavar="FILE", help="class names, one per line (or a JSON list), stored in the "
                   "manifest for apps (edge serve shows them)")
    c.add_argument("--option", action="append", metavar="KEY=VALUE", help="a target option without its own flag")
    _add_target_flags(c)

    v = add("verify", "re-run an artifact's parity check against PyTorch")
    v.add_argument("artifact")
    v.add_argument("--model", help="the reference model (zoo name, file.py:factory, package.module:factory or "
                   ".pt2); default: the source the manifest names")
    v.add_argument("--weights", help="weights of the reference model (if not recorded in the manifest)")
    v.add_argument("--trust-weights", action="store_true")
    v.add_argument("--trust-source", action="store_true",
                   help="rebuild the reference from the code or files the manifest names (imports and runs that "
                        "code: only for artifacts you trust)")
    v.add_argument("--runtime-option", action="append", metavar="KEY=VALUE",
                   help="runtime option to check under, e.g. precision_hint=bf16 (openvino); recorded apart")

    d = add("debug", "per-layer table of where an artifact's numbers depart from PyTorch (onnx, openvino, executorch)")
    d.add_argument("artifact")
    d.add_argument("--top", type=int, help="show only the N modules that introduce the most error, worst first")
    d.add_argument("--inputs", help=".npy/.npz of input tensors (default: the artifact's verification inputs)")
    d.add_argument("--html", metavar="FILE", help="also write the table as a plot (error per layer) to FILE")
    d.add_argument("--model", help="the reference model (as for `edge verify`); default: the manifest's source")
    d.add_argument("--weights", help="weights of the reference model (if not recorded in the manifest)")
    d.add_argument("--trust-weights", action="store_true")
    d.add_argument("--trust-source", action="store_true",
                   help="rebuild the reference from the code or files the manifest names (as for `edge verify`)")

    b = add("bench", "measure artifacts' latency, or convert+verify+measure a matrix of models (see --targets)")
    b.add_argument("artifacts", nargs="+", metavar="ARTIFACT_OR_MODEL",
                   help="artifact folders, or zoo model names for a matrix run (models x targets x precisions x resolutions)")
    b.add_argument("--targets", help="matrix: targets, comma-separated (default: every target that runs here)")
    b.add_argument("--precisions", help="matrix: precisions, comma-separated (default fp32)")
    b.add_argument("--resolutions", help="matrix: square input sizes, comma-separated (default: each model's own)")
    b.add_argument("--out", "-o", default="bench", help="matrix: folder for results.json/csv, report.md/html")
    b.add_argument("--cache-dir", help="matrix: artifact cache (default $EDGE_CACHE_DIR or ~/.cache/edge)")
    b.add_argument("--rebuild", action="store_true", help="matrix: convert again even if the cache has it")
    b.add_argument("--calib", help="matrix: calibration data for int8 cells, e.g. datafree "
                   "(see `edge convert --calib`)")
    b.add_argument("--no-optimize", action="store_true", help="matrix: skip edge's optimize passes")
    b.add_argument("--option", action="append", metavar="KEY=VALUE", help="matrix: target option")
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--iters", type=int, default=100)
    b.add_argument("--batch", type=int, default=1, help="batch size for artifacts with a dynamic batch")
    b.add_argument("--no-native-profile", action="store_true", help="skip the runtime's per-op profile")
    b.add_argument("--runtime-option", action="append", metavar="KEY=VALUE",
                   help="artifacts: runtime option, e.g. precision_hint=bf16 or threads=1 (openvino)")
    b.add_argument("--weights", help="matrix: weights for file.py:factory / package.module:factory models")
    b.add_argument("--input-shape", action="append", help="matrix: input shape of factory models, like 1,3,224,224")
    b.add_argument("--ray", metavar="ADDRESS", help="matrix: run on a Ray cluster (auto, or ray://HOST:10001)")
    b.add_argument("--devices", help="matrix with --ray: devices to measure on, comma-separated (default: all)")

    cg = sub.add_parser("calib", help="calibration data tools (edge calib generate MODEL -o calib.npz)",
                        description="calibration data tools")
    cg_sub = cg.add_subparsers(dest="calib_command", metavar="SUBCOMMAND", required=True)
    g = cg_sub.add_parser("generate", help="generate data-free calibration inputs from the model alone",
                          description="optimise synthetic calibration inputs from the model alone (psaq for "
                          "attention models, bn-stats for BatchNorm models, else the inversion fallback) and "
                          "write them as an .npz that --calib accepts")
    g.add_argument("model", help="zoo name, file.py:factory or package.module:factory")
    g.add_argument("--out", "-o", required=True, help="the .npz to write")
    g.add_argument("--method", default="auto", help="auto (by the model's structure), psaq, spdfq, bn-stats or inversion")
    g.add_argument("--images", type=int, help="calibration images to generate (default 64)")
    g.add_argument("--steps", type=int, help="the most optimisation steps (default 500)")
    g.add_argument("--budget-s", type=float, help="the most seconds to spend (default 120)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--input-shape", action="append", help="input shape like 1,3,224,224")
    g.add_argument("--weights", help=".pt/.pth state dict or .safetensors for a factory model")
    g.add_argument("--trust-weights", action="store_true", help="load a pickled checkpoint with weights_only=False")
    g.add_argument("--no-cache", action="store_true", help="generate again even if the cache holds this model's set")
    g.add_argument("--json", action="store_true", help="print JSON instead of a line")
    g.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")

    r = add("report", "rebuild results.csv, report.md and report.html from a results.json", json_flag=False)
    r.add_argument("results", help="results.json written by `edge bench MODEL ...` (or `edge serve`)")
    r.add_argument("--out", "-o", help="folder for the reports (default: the folder of results.json)")
    cp = add("compare", "compare two bench runs cell by cell as ratios (b / a)")
    cp.add_argument("a", help="results.json of the baseline run")
    cp.add_argument("b", help="results.json of the new run")
    sv = add("serve", "serve the phone web app with the ONNX artifacts under DIR; the page posts its latency back",
             json_flag=False)
    sv.add_argument("artifact", metavar="DIR", help="an ONNX artifact folder, or a folder of artifacts (every ONNX "
                    "artifact below it is offered), e.g. the -o folder of edge convert")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: reachable from phones on the LAN)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--results", default="results.json",
                    help="results.json the page's browser cell is added to (created if missing)")

    i = add("info", "show an artifact's manifest")
    i.add_argument("artifact")
    i.add_argument("--no-check", action="store_true", help="do not check file hashes")
    dv = add("devices", "list the devices a bench run can measure on (this machine, or a Ray cluster's)")
    dv.add_argument("--ray", metavar="ADDRESS", help="a Ray cluster (auto, or ray://HOST:10001)")
    add("models", "list zoo models")
    add("targets", "list targets, their precisions and whether their backend is installed")
    add("optimize", "list optimize passes")
    return p


@contextlib.contextmanager
def _warnings_as_lines(command: str, verbose: bool) -> Iterator[None]:
    """edge's own warnings (an unchecked runtime option, a model not fully delegated) as one plain line each;
    other packages' warnings go where backend output goes (hidden unless --verbose). Restored afterwards."""
    from edge.errors import EdgeWarning
    from edge.progress import console
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, EdgeWarning):
                print(f"edge {command}: warning: {message}", file=console())
            elif verbose:
                original(message, category, filename, lineno, file, line)
            else:
                print(f"{category.__name__}: {message} ({filename}:{lineno})", file=sys.stderr)
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """The ``edge`` command. Run as a program (``argv`` None), backends' own output goes to a log file that is
    named only when something went wrong; ``--verbose`` shows it, and an internal error's traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    import edge.progress
    verbose = bool(getattr(args, "verbose", False))
    show_progress = not getattr(args, "json", False) and sys.stderr.isatty() or bool(getattr(args, "progress", False))
    hush = argv is None and not verbose and args.command != "serve"
    log: Path | None = None
    keep_log = False
    with contextlib.ExitStack() as stack:
        if hush:
            log = stack.enter_context(edge.progress.hide_backend_output())
        stack.enter_context(edge.progress.enabled(show_progress))
        stack.enter_context(_warnings_as_lines(args.command, verbose))
        err = edge.progress.console()
        try:
            return COMMANDS.get(args.command)(args)
        except EdgeError as e:
            print(f"edge {args.command}: error: {e}", file=err)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=err)
            return 130
        except BrokenPipeError:   # the reader went away (`edge targets | head`): not an error
            sys.stdout = open(os.devnull, "w")   # nothing left to flush into the closed pipe at exit
            return 0
        except Exception as e:  # a bug in edge or an unexpected backend failure: one line, details on request
            if verbose:
                raise
            keep_log = log is not None
            if keep_log:
                import traceback
                traceback.print_exc(file=sys.stderr)   # into the backend log
            where = f"; the traceback is in {log}" if keep_log else "; rerun with --verbose for the traceback"
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [""]
            print(f"edge {args.command}: internal error: {type(e).__name__}: {lines[-1][:300]}{where}", file=err)
            return 1
        finally:
            if log is not None and not keep_log:
                stack.callback(log.unlink, missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
