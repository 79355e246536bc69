"""Reports of a bench matrix: results.json / results.csv (one row per cell), report.md, report.html.

report.html is one self-contained file (plots embedded as base64 PNG, no scripts, no network), so
it opens offline and can be mailed. The plots: latency distribution per cell, latency vs accuracy
(or parity) per model with its Pareto front, latency and peak memory vs input resolution, and the
per-op breakdown of the slowest cell from its runtime's own profiler.

Example:
    >>> from edge.report import load_results, write_all
    >>> write_all(load_results("bench/results.json"), "bench/")
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from edge.errors import UsageError

OK = "ok"


# ---------------------------------------------------------------- results files

def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json written by ``edge bench`` (or ``edge serve``), checking its schema."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; produce it with `edge bench MODEL ... --out DIR`")
    from edge.artifact import read_json
    data = read_json(path, UsageError, "pass the results.json that `edge bench` wrote")
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("edge.bench/") \
            or not isinstance(data.get("cells"), list):
        raise UsageError(f"{path} is not an edge bench results file (no 'schema': 'edge.bench/1' and 'cells'); "
                         f"pass the results.json that `edge bench` wrote")
    return data


def write_results(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """results.json (everything, samples included) and results.csv (one tidy row per cell)."""
    from edge.artifact import write_json_atomic
    from edge.cells import CELL_FIELDS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CELL_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for c in results["cells"]:
        w.writerow({k: ("" if c.get(k) is None else c.get(k)) for k in CELL_FIELDS})
    _write_text(out / "results.csv", buf.getvalue())
    return [out / "results.json", out / "results.csv"]


def _write_text(path: Path, text: str) -> None:
    import os
    import uuid
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_all(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write results.json, results.csv, report.md and report.html into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    paths = write_results(results, out)
    _write_text(out / "report.md", markdown(results))
    _write_text(out / "report.html", html_report(results))
    return paths + [out / "report.md", out / "report.html"]


# ---------------------------------------------------------------- tables

def _f(v: Any, fmt: str | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if fmt is None:
        return format(v, ".3f") if isinstance(v, float) else str(v)
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


TABLE_COLUMNS = [("model", "model", None), ("res", "resolution", None), ("target", "target", None),
                 ("precision", "precision", None), ("device", "device", None), ("status", "status", None),
                 ("p50 ms", "p50_ms", ".3f"),
                 ("p90 ms", "p90_ms", ".3f"), ("std ms", "std_ms", ".3f"), ("load ms", "load_ms", ".1f"),
                 ("peak RSS MiB", "peak_rss_mb", ".0f"), ("model MiB", "model_rss_mb", ".1f"),
                 ("size MiB", "size_mb", ".2f"), ("cosine", "cosine", ".6f"), ("accuracy", "accuracy", ".4f"),
                 ("placement", "placement", None), ("cached", "cached", None)]


def _value(c: dict[str, Any], key: str) -> Any:
    if key == "placement":   # the table shows the count; the profile section has the whole line
        p = c.get("placement") or {}
        return f"{p['delegated']}/{p['total']} {p['unit']}" if p.get("total") is not None else None
    return c.get(key)


def _rows(results: dict[str, Any]) -> list[list[str]]:
    return [[_f(_value(c, key), fmt) for _, key, fmt in TABLE_COLUMNS]
            for c in results["cells"]]


PROFILE_COLUMNS = ["cell", "cold load ms", "warm load ms", "first inference ms", "p50 ms", "peak RSS MiB",
                   "runtime alone MiB", "model adds MiB", "placement"]


def deployment_rows(results: dict[str, Any]) -> list[list[str]]:
    """Per measured cell: cold vs warm load, first inference vs steady state, the clean process's memory
    (the runtime alone and what the model adds) and where its ops ran."""
    rows = []
    for c in results["cells"]:
        if c.get("status") != OK or c.get("cold_load_ms") is None:
            continue
        rows.append([str(c["id"]), _f(c.get("cold_load_ms"), ".1f"), _f(c.get("warm_load_ms"), ".1f"),
                     _f(c.get("first_inference_ms"), ".3f"), _f(c.get("p50_ms"), ".3f"), _f(c.get("peak_rss_mb"), ".1f"),
                     _f(c.get("base_rss_mb"), ".1f"), _f(c.get("model_rss_mb"), ".1f"),
                     str((c.get("placement") or {}).get("summary") or "-")])
    return rows


def _off_placement(c: dict[str, Any], top: int = 8) -> list[str]:
    """The ops of a cell that did not run where most of it ran (portable / reference kernels / another provider)."""
    p = c.get("placement") or {}
    main = max(p.get("where") or {"": 0}, key=lambda k: (p.get("where") or {}).get(k, 0))
    off = [r for r in p.get("rows") or [] if r.get("where") != main]
    return [f"{r.get('op')} ({r.get('type')}, {r.get('where')}{', ' + r['kernel'] if r.get('kernel') else ''}"
            f"{', x' + str(r['count']) if r.get('count') else ''})" for r in off[:top]]


def _failures(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in results["cells"] if c.get("status") != OK]


def _not_run_lines(results: dict[str, Any]) -> list[str]:
    skipped = (results.get("settings") or {}).get("targets_not_run") or {}
    return [""] + [f"Target {t} not in this run: {why}" for t, why in sorted(skipped.items())] if skipped else []


def markdown(results: dict[str, Any]) -> str:
    """report.md: host, settings, the cell table, failures with their errors, the slowest cell's ops."""
    h, s = results.get("host", {}), results.get("settings", {})
    lines = [f"# edge bench report", "",
             f"{results.get('created', '')} on {h.get('cpu', '?')} ({h.get('cores', '?')} cores, {h.get('system', '')}); "
             f"{s.get('warmup', '?')} warmup + {s.get('iters', '?')} timed iterations per cell, batch 1.", "",
             "| " + " | ".join(name for name, _, _ in TABLE_COLUMNS) + " |",
             "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(results)]
    lines += _not_run_lines(results)
    fails = _failures(results)
    if fails:
        lines += ["", "## Cells that did not run", ""]
        lines += [f"- **{c['id']}** ({c['status']}): {c.get('error')}" for c in fails]
    prof_rows = deployment_rows(results)
    if prof_rows:
        lines += ["", "## Deployment profile (each cell in a clean process that imports only its runtime)", "",
                  "| " + " | ".join(PROFILE_COLUMNS) + " |", "|" + "|".join("---" for _ in PROFILE_COLUMNS) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in prof_rows]
        for c in results["cells"]:
            if _off_placement(c):
                lines.append(f"- {c['id']}: not on the main placement: {'; '.join(_off_placement(c))}")
    browser = [c for c in results["cells"] if c.get("target") == "browser"]
    if browser:
        lines += ["", "## Browser cells", ""]
        lines += [f"- {c['id']}: p50 {_f(c.get('p50_ms'))} ms on `{c.get('user_agent')}`" for c in browser]
    prof = results.get("op_profile") or {}
    if prof.get("rows"):
        lines += ["", f"## Per-op breakdown of the slowest cell ({prof['cell']}, {prof.get('runtime')} profiler)", "",
                  "| share | mean ms | calls | type | op |", "|---|---|---|---|---|"]
        lines += [f"| {r['share'] * 100:.1f}% | {r['mean_ms']:.4f} | {r['calls']} | {r['type']} | `{r['op']}` |"
                  for r in prof["rows"][:15]]
    elif prof.get("error"):
        lines += ["", f"Per-op breakdown of {prof.get('cell')}: {prof['error']}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots

def _label(c: dict[str, Any], with_model: bool = True) -> str:
    head = f"{c['model']}@{c['resolution']} " if with_model else ""
    return f"{head}{c['target']}/{c['precision']}"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("report plots need matplotlib: pip install 'edge[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_distribution(cells: list[dict[str, Any]]) -> str | None:
    """Box plot of every measured cell's per-iteration latency (log scale when the spread is wide)."""
    ok = [c for c in cells if c.get("status") == OK and c.get("samples_ms")]
    if not ok:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(ok) + 1.6))
    ax.boxplot([c["samples_ms"] for c in ok], vert=False, showfliers=True, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(ok) + 1), [_label(c) for c in ok], fontsize=8)
    lo, hi = min(min(c["samples_ms"]) for c in ok), max(max(c["samples_ms"]) for c in ok)
    if hi / max(lo, 1e-9) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("latency per inference (ms)")
    ax.set_title("Latency distribution per cell (box: p25-p75, line: median)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _quality(c: dict[str, Any]) -> tuple[float | None, str]:
    if c.get("accuracy") is not None:
        return c["accuracy"], "test accuracy"
    if c.get("cosine") is not None:
        return c["cosine"], "cosine vs PyTorch"
    return None, ""


def plot_pareto(cells: list[dict[str, Any]]) -> str | None:
    """Latency vs accuracy (or parity cosine) per model and resolution; the Pareto front is drawn."""
    ok = [c for c in cells if c.get("status") == OK and c.get("p50_ms") is not None and _quality(c)[0] is not None]
    if not ok:
        return None
    plt = _plt()
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in ok:
        groups.setdefault(f"{c['model']}@{c['resolution']}", []).append(c)
    n = len(groups)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    targets = sorted({c["target"] for c in ok})
    colors = {t: plt.cm.tab10(i % 10) for i, t in enumerate(targets)}
    markers = dict(zip(sorted({c["precision"] for c in ok}), "os^Dv<>pP*"))
    for ax, (name, group) in zip(axes.flat, sorted(groups.items())):
        label = _quality(group[0])[1]
        for c in group:
            ax.scatter(c["p50_ms"], _quality(c)[0], color=colors[c["target"]], marker=markers[c["precision"]],
                       s=50, label=f"{c['target']}/{c['precision']}")
        front, best = [], -math.inf
        for c in sorted(group, key=lambda c: c["p50_ms"]):
            if _quality(c)[0] > best:
                best = _quality(c)[0]
                front.append(c)
        ax.step([c["p50_ms"] for c in front], [_quality(c)[0] for c in front], where="post", color="grey",
                alpha=0.6, linestyle="--")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Latency vs quality (dashed: Pareto front; up and left is better)")
    fig.tight_layout()
    return _png(fig)


def plot_resolution(cells: list[dict[str, Any]]) -> str | None:
    """p50 latency and peak RSS against input resolution, one line per model/target/precision."""
    ok = [c for c in cells if c.get("status") == OK and c.get("p50_ms") is not None and c.get("resolution")]
    if not ok:
        return None
    plt = _plt()
    lines: dict[str, list[dict[str, Any]]] = {}
    for c in ok:
        lines.setdefault(f"{c['model']} {c['target']}/{c['precision']}", []).append(c)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, group in sorted(lines.items()):
        group.sort(key=lambda c: c["resolution"])
        x = [c["resolution"] for c in group]
        a1.plot(x, [c["p50_ms"] for c in group], "o-", label=name)
        a2.plot(x, [c["peak_rss_mb"] for c in group], "o-", label=name)
    a1.set_ylabel("p50 latency (ms)")
    a2.set_ylabel("peak RSS of the process (MiB)")
    for a in (a1, a2):
        a.set_xlabel("input resolution (px, square)")
        a.grid(alpha=0.3)
    if max(c["p50_ms"] for c in ok) / max(min(c["p50_ms"] for c in ok), 1e-9) > 30:
        a1.set_yscale("log")
    a1.legend(fontsize=7)
    fig.suptitle("Latency and peak memory vs resolution")
    fig.tight_layout()
    return _png(fig)


def plot_ops(profile: dict[str, Any] | None, top: int = 15) -> str | None:
    """Horizontal bars of the slowest cell's most expensive ops (the runtime's own profiler)."""
    if not profile or not profile.get("rows"):
        return None
    plt = _plt()
    rows = profile["rows"][:top][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.4))
    names = [f"{r['type']}  {r['op'][-38:]}" for r in rows]
    ax.barh(range(len(rows)), [r["mean_ms"] * r["calls"] / max(profile.get("iters") or 1, 1) for r in rows])
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    for i, r in enumerate(rows):
        ax.text(0, i, f" {r['share'] * 100:.1f}%", va="center", fontsize=7, color="white")
    ax.set_xlabel("ms per inference")
    ax.set_title(f"Per-op breakdown of the slowest cell: {profile['cell']} ({profile.get('runtime')})")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_debug(table: dict[str, Any]) -> str | None:
    """Error per layer in network order (a table from ``edge debug``): SQNR per module, quantized ones marked."""
    rows = sorted(table.get("rows") or [], key=lambda r: r["index"])
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.22 * len(rows) + 2), 4.2))
    x = list(range(len(rows)))
    y = [max(min(r["sqnr_db"], 200.0), -20.0) for r in rows]
    ax.plot(x, y, "-", color="grey", alpha=0.5, linewidth=1)
    q = [i for i, r in enumerate(rows) if r["quantized"]]
    f = [i for i, r in enumerate(rows) if not r["quantized"]]
    ax.scatter([x[i] for i in q], [y[i] for i in q], color="tab:red", marker="s", s=22, label="quantized")
    ax.scatter([x[i] for i in f], [y[i] for i in f], color="tab:blue", marker="o", s=18, label="float")
    worst = max(rows, key=lambda r: r["drop_db"])
    if worst["drop_db"] > 0:
        ax.annotate(worst["module"], (worst["index"], max(min(worst["sqnr_db"], 200.0), -20.0)), fontsize=7,
                    xytext=(4, -12), textcoords="offset points")
    ax.set_xticks(x, [r["module"][-28:] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR vs PyTorch (dB, higher is better)")
    ax.set_title(f"{table.get('target')}/{table.get('precision')}: error per layer in network order "
                 f"({table.get('granularity')})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def debug_section(tables: list[dict[str, Any]]) -> list[str]:
    """HTML for the debug tables recorded in a results file (``results["debug"]``) or given directly."""
    esc = html.escape
    parts = []
    for t in tables:
        png = plot_debug(t)
        parts.append(f"<h2>Where the error comes from: {esc(str(t.get('artifact')))}</h2>")
        parts.append(f"<img alt='error per layer' src='data:image/png;base64,{png}'>" if png
                     else "<p class=meta>no layer rows in this debug table.</p>")
        parts += [f"<p class=meta>{esc(str(n))}</p>" for n in t.get("notes") or []]
    return parts


def debug_html(tables: list[dict[str, Any]]) -> str:
    """A self-contained page with the plot of each ``edge debug`` table (``edge debug ... --html FILE``)."""
    return "\n".join([f"<!doctype html><html lang=en><head><meta charset=utf-8><title>edge debug</title>"
                      f"<style>{_CSS}</style></head><body><h1>edge debug</h1>", *debug_section(tables),
                      "</body></html>"])


# ---------------------------------------------------------------- html

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:nth-child(-n+5),th{text-align:left}th{background:#f2f2f2}tr.failed td{background:#fff0f0}tr.skipped td{background:#fffbe6}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.err{font-family:monospace;font-size:12px;white-space:pre-wrap}
h2{margin-top:1.6em}.meta{color:#555}"""


def html_report(results: dict[str, Any]) -> str:
    """A self-contained report.html: the table, failures and every plot as an embedded PNG."""
    h, s = results.get("host", {}), results.get("settings", {})
    esc = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>edge bench report</title>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head><body>",
             "<h1>edge bench report</h1>",
             f"<p class=meta>{esc(str(results.get('created', '')))} on {esc(str(h.get('cpu', '?')))} "
             f"({h.get('cores', '?')} cores, {esc(str(h.get('system', '')))}); {s.get('warmup', '?')} warmup + "
             f"{s.get('iters', '?')} timed iterations per cell, batch 1; versions "
             f"{esc(', '.join(f'{k} {v}' for k, v in (s.get('versions') or {}).items()))}.</p>",
             "<table><tr>" + "".join(f"<th>{esc(n)}</th>" for n, _, _ in TABLE_COLUMNS) + "</tr>"]
    for c, row in zip(results["cells"], _rows(results)):
        parts.append(f"<tr class='{esc(str(c.get('status')))}'>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>")
    parts.append("</table>")
    parts += [f"<p class=meta>{esc(line)}</p>" for line in _not_run_lines(results) if line]
    fails = _failures(results)
    if fails:
        parts.append("<h2>Cells that did not run</h2><ul>")
        parts += [f"<li><b>{esc(c['id'])}</b> ({esc(str(c['status']))}): <span class=err>{esc(str(c.get('error')))}"
                  f"</span></li>" for c in fails]
        parts.append("</ul>")
    prof_rows = deployment_rows(results)
    if prof_rows:
        parts.append("<h2>Deployment profile</h2><p class=meta>Each cell in a clean process that imports only its "
                     "runtime: cold load (no runtime cache) vs warm load (cache hit, or a second load), first "
                     "inference vs steady state, the runtime alone and what the model adds to it, where the ops "
                     "ran.</p><table><tr>" + "".join(f"<th>{esc(n)}</th>" for n in PROFILE_COLUMNS) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in prof_rows]
        parts.append("</table>")
        off = [(c["id"], _off_placement(c)) for c in results["cells"] if _off_placement(c)]
        if off:
            parts.append("<ul>" + "".join(f"<li>{esc(i)}: not on the main placement: {esc('; '.join(o))}</li>"
                                          for i, o in off) + "</ul>")
    browser = [c for c in results["cells"] if c.get("target") == "browser"]
    if browser:
        parts.append("<h2>Browser cells</h2><ul>")
        parts += [f"<li>{esc(c['id'])}: p50 {_f(c.get('p50_ms'))} ms, user agent <code>{esc(str(c.get('user_agent')))}"
                  f"</code></li>" for c in browser]
        parts.append("</ul>")
    plots = [("Latency distribution", plot_distribution(results["cells"])),
             ("Latency vs accuracy (Pareto view)", plot_pareto(results["cells"])),
             ("Latency and peak memory vs resolution", plot_resolution(results["cells"])),
             ("Per-op breakdown of the slowest cell", plot_ops(results.get("op_profile")))]
    for title, png in plots:
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(f"<img alt='{esc(title)}' src='data:image/png;base64,{png}'>" if png
                     else "<p class=meta>no measured cell has the data for this plot.</p>")
    prof = results.get("op_profile") or {}
    if prof.get("error") and not prof.get("rows"):
        parts.append(f"<p class=meta>{esc(prof['error'])}</p>")
    parts += debug_section(results.get("debug") or [])
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- compare

def _key(c: dict[str, Any]) -> tuple:
    return (c.get("model"), c.get("resolution"), c.get("target"), c.get("precision"), c.get("user_agent"))


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Cells matched by (model, resolution, target, precision); ratios are b / a (below 1: b is faster)."""
    index = {_key(c): c for c in a["cells"]}
    rows = []
    for cb in b["cells"]:
        ca = index.pop(_key(cb), None)
        row = {"id": cb.get("id"), "a_status": ca.get("status") if ca else "absent", "b_status": cb.get("status")}
        for k in ("p50_ms", "p90_ms", "mean_ms", "peak_rss_mb", "load_ms", "size_mb"):
            va, vb = (ca or {}).get(k), cb.get(k)
            row[f"a_{k}"], row[f"b_{k}"] = va, vb
            row[f"{k}_ratio"] = vb / va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else None
        row.update(noise_verdict((ca or {}).get("samples_ms"), cb.get("samples_ms")))
        acc_a, acc_b = _quality(ca or {})[0], _quality(cb)[0]
        row["quality_delta"] = acc_b - acc_a if acc_a is not None and acc_b is not None else None
        rows.append(row)
    rows += [{"id": c.get("id"), "a_status": c.get("status"), "b_status": "absent"} for c in index.values()]
    return rows


def noise_verdict(a: list[float] | None, b: list[float] | None, *, resamples: int = 1000,
                  level: float = 0.95) -> dict[str, Any]:
    """Whether b's median latency differs from a's by more than their run-to-run spread.

    A bootstrap of the ratio of medians (each run's samples resampled with replacement, a fixed seed):
    ``same`` when its ``level`` interval contains 1, else ``faster`` / ``slower``. Returns ``verdict`` and
    ``p50_ratio_ci`` (None without samples in both runs).

    Example:
        >>> noise_verdict(run_a["samples_ms"], run_b["samples_ms"])["verdict"]
        'same'
    """
    import numpy as np
    if not a or not b or len(a) < 3 or len(b) < 3:
        return {"verdict": None, "p50_ratio_ci": None}
    rng = np.random.default_rng(0)
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ma = np.median(rng.choice(xa, (resamples, len(xa))), axis=1)
    mb = np.median(rng.choice(xb, (resamples, len(xb))), axis=1)
    lo, hi = np.quantile(mb / ma, [(1 - level) / 2, (1 + level) / 2])
    verdict = "same" if lo <= 1.0 <= hi else "faster" if hi < 1.0 else "slower"
    return {"verdict": verdict, "p50_ratio_ci": [float(lo), float(hi)]}


def format_compare(rows: list[dict[str, Any]], a_name: str = "a", b_name: str = "b") -> str:
    lines = [f"ratios are {b_name} / {a_name} (below 1.00: {b_name} is faster or smaller)",
             f"verdict: 'same' when the 95% bootstrap interval of the p50 ratio contains 1 (run-to-run spread)",
             f"{'cell':<44} {'p50 a ms':>9} {'p50 b ms':>9} {'p50 x':>7} {'p90 x':>7} {'RSS x':>7} {'quality d':>10}"
             f"  verdict"]
    for r in rows:
        if r.get("p50_ms_ratio") is None:
            lines.append(f"{str(r['id']):<44} {a_name}: {r['a_status']}, {b_name}: {r['b_status']}")
            continue
        lines.append(f"{str(r['id']):<44} {_f(r['a_p50_ms']):>9} {_f(r['b_p50_ms']):>9} {_f(r['p50_ms_ratio'], '.2f'):>7} "
                     f"{_f(r.get('p90_ms_ratio'), '.2f'):>7} {_f(r.get('peak_rss_mb_ratio'), '.2f'):>7} "
                     f"{_f(r.get('quality_delta'), '+.4f'):>10}  {_verdict_text(r)}")
    return "\n".join(lines)


def _verdict_text(r: dict[str, Any]) -> str:
    ci = r.get("p50_ratio_ci")
    return "-" if not r.get("verdict") else f"{r['verdict']} (x{ci[0]:.2f}..x{ci[1]:.2f})"


def format_table(results: dict[str, Any]) -> str:
    """The cell table as aligned text (what `edge bench` prints at the end)."""
    head = [n for n, _, _ in TABLE_COLUMNS]
    rows = _rows(results)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    out = ["  ".join(x.ljust(w) for x, w in zip(head, widths))]
    out += ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in rows]
    for c in _failures(results):
        out.append(f"{c['id']}: {c['status']}: {c.get('error')}")
    return "\n".join(out)
