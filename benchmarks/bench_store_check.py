"""What the check of a local store costs before a sweep (flopsweep/sinks/health.py: SQLite's quick_check of the whole
file and a write lock), against the store's size: a real MLflow store whose metrics table is filled with rows
(``--rows`` per step, a job logs about 40 metrics), wall seconds, median of ``--repeats``.

    .venv/bin/python benchmarks/bench_store_check.py --steps 0 200000 1000000 4000000
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from flopsweep.sinks.health import probe
from flopsweep.sinks.store import mlflow_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 200_000, 1_000_000, 4_000_000],
                        help="metric rows in the store at each step")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "mlflow.db"
    uri = f"sqlite:///{path}"
    mlflow_client(uri).search_experiments(max_results=1)  # MLflow's schema
    rows = 0
    for target in sorted(args.steps):
        with sqlite3.connect(path) as db:
            db.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                           "VALUES (?, ?, ?, ?, 0, 0)",
                           ((f"flops/metric_{i % 40}", float(i), 1_700_000_000_000 + i, f"{i // 40:032x}")
                            for i in range(rows, target)))
        rows = max(rows, target)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            assert probe(uri) is None
            times.append(time.perf_counter() - start)
        size = path.stat().st_size + (Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0)
        print(f"{rows:>9} metric rows ({rows // 40:>6} jobs), {size / 2**20:7.1f} MiB: check median "
              f"{statistics.median(times) * 1000:7.1f} ms (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")


if __name__ == "__main__":
    main()
