"""Latency profiling for any runtime session: burn-in, then a timed loop with sync around each call.

Reports the union of what benchmark_model, benchmark_app, onnxruntime_perf_test and AI Hub
show: load ms, first inference, warmup, iterations, mean/std/min/max, p50/p90/p95/p99,
throughput, peak RSS and its growth during the run, and the runtime's own per-op table.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class LatencyReport:
    """One benchmark of one artifact. Times in milliseconds; memory in MiB."""

    runtime: str
    target: str
    precision: str
    batch: int
    load_ms: float
    first_inference_ms: float
    warmup: int
    iters: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput_per_s: float
    peak_rss_mb: float
    rss_growth_mb: float
    timer: str = "perf_counter"
    device: str = field(default_factory=lambda: f"{platform.machine()} {platform.processor() or ''}".strip())
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    native_profile: list[dict[str, Any]] | None = None
    load_details: dict[str, Any] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_json(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB, from /proc (Linux) or getrusage."""
    try:
        with open("/proc/self/status") as f:
            vals = {k: v for k, v in (line.split(":", 1) for line in f if ":" in line)}
        return int(vals["VmRSS"].split()[0]) / 1024, int(vals["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if platform.system() == "Linux" else 1024**2)
        return peak, peak


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark so peak RSS covers this run only (Linux; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    p = np.percentile(a, [50, 90, 95, 99])
    return {"mean_ms": float(a.mean()), "std_ms": float(a.std()), "min_ms": float(a.min()), "max_ms": float(a.max()),
            "p50_ms": float(p[0]), "p90_ms": float(p[1]), "p95_ms": float(p[2]), "p99_ms": float(p[3])}


def time_session(session: Any, inputs: Sequence[Any], *, warmup: int, iters: int) -> tuple[float, list[float]]:
    """(first-inference ms, per-iteration ms) for ``session.run`` (the call a user makes), synchronized."""
    run, sync = session.run, session.synchronize
    t0 = time.perf_counter()
    run(*inputs)
    sync()
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(max(warmup - 1, 0)):
        run(*inputs)
    sync()
    timed = getattr(session, "timed_run", None)   # CUDA sessions time with events
    samples = []
    for _ in range(iters):
        if timed is not None:
            samples.append(timed(inputs))
            continue
        t0 = time.perf_counter()
        run(*inputs)
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return first, samples


class EagerSession:
    """A PyTorch module behind the two calls ``time_session`` makes (``run``, ``synchronize``), so eager
    timings come from the same loop as a runtime's (benchmarks time both in :func:`time_interleaved`)."""

    def __init__(self, module: Any):
        self.module = module.eval()

    def run(self, *inputs: Any) -> Any:
        import torch
        with torch.inference_mode():
            return self.module(*inputs)

    def synchronize(self) -> None:
        pass


def time_interleaved(sessions: dict, inputs: dict, *, rounds: int, warmup: int, iters: int) -> dict[Any, dict]:
    """Time several sessions taking turns, ``rounds`` times: per key ``summarize`` of all samples plus
    ``round_medians``. Machine noise (tens of percent over minutes here) then hits every session alike,
    where one block per session would compare the drift."""
    samples: dict[Any, list[float]] = {k: [] for k in sessions}
    medians: dict[Any, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            _, sm = time_session(s, inputs[k], warmup=warmup, iters=iters)
            samples[k] += sm
            medians[k].append(float(np.median(sm)))
    return {k: {**summarize(v), "round_medians": medians[k]} for k, v in samples.items()}


def op_kinds(table: Sequence[dict[str, Any]], iters: int) -> list[dict[str, Any]]:
    """A native-profile table (``session.native_profile(..., top=None)`` over ``iters`` runs) summed per kind
    of op: ``kind``, ``ops`` (rows), ``ms`` per run, ``share``; most expensive first.

    The kind is the row's ``kind`` where the runtime gives one (ExecuTorch: the XNNPACK operator), else its
    ``type`` with the kernel (OpenVINO: ``FullyConnected/brgemm_avx512_amx_i8``).
    """
    sums: dict[str, list[float]] = {}
    for row in table:
        kind = row.get("kind") or "/".join(str(p) for p in (row["type"], row.get("exec_type")) if p)
        acc = sums.setdefault(kind, [0.0, 0])
        acc[0] += row["total_ms"] / iters
        acc[1] += 1
    total = sum(ms for ms, _ in sums.values()) or 1.0
    return [{"kind": k, "ops": n, "ms": ms, "share": ms / total}
            for k, (ms, n) in sorted(sums.items(), key=lambda kv: -kv[1][0])]


def format_kinds(kinds: Sequence[dict[str, Any]], top: int = 12, indent: str = "  ") -> list[str]:
    """The first ``top`` rows of :func:`op_kinds` as lines: ms per run, share, number of ops, kind."""
    return [f"{indent}{k['ms']:7.3f} ms  {k['share']:6.1%}  x{k['ops']:<4} {k['kind']}" for k in kinds[:top]]


def profile_session(session: Any, inputs: Sequence[Any], *, warmup: int = 10, iters: int = 100,
                    native: bool = True, rss_before: float | None = None) -> LatencyReport:
    """Benchmark an open session on ``inputs``."""
    reset_peak_rss()
    rss0 = rss_mb()[0] if rss_before is None else rss_before
    first, samples = time_session(session, inputs, warmup=warmup, iters=iters)
    rss1, peak = rss_mb()
    stats = summarize(samples)
    m = session.artifact.manifest
    batch = int(np.asarray(inputs[0]).shape[0]) if inputs and np.asarray(inputs[0]).ndim else 1
    table = session.native_profile(session.prepare(*inputs), iters=min(iters, 20)) if native else None
    return LatencyReport(runtime=session.name, target=m.target, precision=m.precision, batch=batch,
                         load_ms=session.load_ms, first_inference_ms=first, warmup=warmup, iters=iters,
                         throughput_per_s=1e3 * batch / stats["mean_ms"], peak_rss_mb=peak,
                         rss_growth_mb=rss1 - rss0, timer=session.timer, native_profile=table,
                         load_details=dict(session.load_details), samples_ms=samples, **stats)


def format_report(r: LatencyReport) -> str:
    """A readable table of one report, native per-op table included."""
    lines = [f"{r.target}/{r.precision} on {r.runtime} (batch {r.batch}, {r.iters} iters after {r.warmup} warmup, {r.timer})",
             f"  load {r.load_ms:9.2f} ms   first inference {r.first_inference_ms:8.3f} ms",
             f"  mean {r.mean_ms:9.3f} ms   std {r.std_ms:.3f}   min {r.min_ms:.3f}   max {r.max_ms:.3f}",
             f"  p50  {r.p50_ms:9.3f} ms   p90 {r.p90_ms:.3f}   p95 {r.p95_ms:.3f}   p99 {r.p99_ms:.3f}",
             f"  throughput {r.throughput_per_s:.1f}/s   peak RSS {r.peak_rss_mb:.1f} MiB (+{r.rss_growth_mb:.1f} during run)"]
    if r.native_profile:
        lines.append("  top ops (runtime's own profiler):")
        for row in r.native_profile[:10]:
            prec = f" [{row['precision']}]" if row.get("precision") else ""
            lines.append(f"    {row['share'] * 100:5.1f}%  {row['mean_ms']:8.4f} ms x{row['calls']:<4} {row['type']:<22} {row['op']}{prec}")
    return "\n".join(lines)
