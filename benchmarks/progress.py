"""A benchmark's signs of life: a line on stderr as each run starts, so that no benchmark is silent for long (its
results, on stdout, stay clean to paste into docs/benchmarks.md)."""

from __future__ import annotations

import sys
import time
from typing import Iterator


def runs(n: int, what: str) -> Iterator[int]:
    """``range(n)``, saying on stderr which run of ``what`` starts and how long the one before it took."""
    last = None
    for i in range(n):
        took = f" (the one before: {time.perf_counter() - last:.1f} s)" if last is not None else ""
        print(f"{what}: run {i + 1} of {n}{took}", file=sys.stderr, flush=True)
        last = time.perf_counter()
        yield i
