"""What making a new local MLflow store costs (its schema: MLflow's migrations), in CPU seconds, against opening one
that exists: the figure behind the test suite's template store (tests/helpers.py, docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_store_creation.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flopsweep.sinks.store import mlflow_client
from progress import runs  # benchmarks/progress.py, beside this script


def cpu_of(uri: str) -> float:
    start = time.process_time()
    mlflow_client(uri).search_experiments(max_results=1)  # MLflow makes the schema on first use
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cpu_of(f"sqlite:///{Path(tempfile.mkdtemp()) / 'warm.db'}")  # imports and MLflow's own set-up, once
    new, again = [], []
    for _ in runs(args.runs, "a new MLflow store, then asked again"):
        uri = f"sqlite:///{Path(tempfile.mkdtemp()) / 'mlflow.db'}"
        new.append(cpu_of(uri))
        again.append(cpu_of(uri))
    print(f"new store: median {statistics.median(new):.2f} s CPU (min {min(new):.2f}, max {max(new):.2f}); "
          f"an existing store (asked again): median {statistics.median(again):.3f} s ({args.runs} runs)")


if __name__ == "__main__":
    main()
