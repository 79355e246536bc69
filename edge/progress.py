"""edge's own terminal lines: step progress (CLI only), and the stream they go to while backends are hushed.

Backends print a lot (C libraries straight to file descriptors 1 and 2, Python logging and warnings). The CLI
runs each command inside :func:`hide_backend_output`, which sends all of that to a log file, so a user sees
edge's lines only; ``--verbose`` shows everything. edge's own lines go to :func:`console`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, TextIO

ENABLED = False
_CONSOLE: TextIO | None = None


def console() -> TextIO:
    """Where edge's own lines go: the terminal's stderr, also while backend output is hidden."""
    return _CONSOLE or sys.stderr


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Show step progress inside the block (restored afterwards)."""
    global ENABLED
    before, ENABLED = ENABLED, on
    try:
        yield
    finally:
        ENABLED = before


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    if not ENABLED:
        yield
        return
    out = console()
    print(f"  .. {what}", file=out, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f"  !! {what} failed after {time.perf_counter() - t0:.1f}s", file=out, flush=True)
        raise
    print(f"  ok {what} ({time.perf_counter() - t0:.1f}s)", file=out, flush=True)


@contextlib.contextmanager
def hide_backend_output() -> Iterator[Path]:
    """Send everything written to file descriptors 1 and 2 to a log file for the block.

    ``sys.stdout`` keeps the terminal (edge prints its results there) and :func:`console` gives edge's own
    stderr lines; Python logging, warnings and C libraries' output land in the log, whose path is yielded.
    The caller deletes the log (or names it to the user when something went wrong).
    """
    global _CONSOLE
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    log_fd, log_path = tempfile.mkstemp(prefix="edge-", suffix=".log")
    saved = os.dup(1), os.dup(2)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    terminal_out = os.fdopen(os.dup(1), "w", buffering=1, encoding=encoding, errors="replace")
    terminal_err = os.fdopen(os.dup(2), "w", buffering=1, encoding=encoding, errors="replace")
    old_stdout, old_console = sys.stdout, _CONSOLE
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout, _CONSOLE = terminal_out, terminal_err
    try:
        yield Path(log_path)
    finally:
        for stream in (terminal_out, terminal_err, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        sys.stdout, _CONSOLE = old_stdout, old_console
        for stream in (terminal_out, terminal_err):   # a reader that went away (`edge targets | head`) is fine
            with contextlib.suppress(BrokenPipeError):
                stream.close()
