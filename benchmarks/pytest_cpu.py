"""A pytest plugin: each test's CPU time, its own and its children's (the commands it ran and waited for), one line
per test in ``cpu_<worker>.tsv`` under ``$PYTEST_CPU_DIR`` (default: the working directory). The figures of
docs/benchmarks.md's test-suite section:

    PYTHONPATH=benchmarks .venv/bin/python -m pytest -q -p pytest_cpu -n auto --dist loadfile
    cat cpu_*.tsv | sort -rn | head -30          # self + children, self, children, wall, test
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    (own, children), start = _cpu(), time.perf_counter()
    yield
    (own_after, children_after), wall = _cpu(), time.perf_counter() - start
    out = Path(os.environ.get("PYTEST_CPU_DIR", ".")) / f"cpu_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.tsv"
    with out.open("a") as handle:
        handle.write(f"{own_after - own + children_after - children:.2f}\t{own_after - own:.2f}\t"
                     f"{children_after - children:.2f}\t{wall:.2f}\t{item.nodeid}\n")
