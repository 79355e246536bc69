"""Progress display for long steps: one line per step on stderr with its duration (CLI only)."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

ENABLED = False


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    if not ENABLED:
        yield
        return
    print(f"  .. {what}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f"  !! {what} failed after {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        raise
    print(f"  ok {what} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
