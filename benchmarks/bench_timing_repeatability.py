"""Do repeated timing runs of one config agree? N separate `flopsweep` invocations, each reporting its median
step time; prints those medians and their coefficient of variation.

    .venv/bin/python benchmarks/bench_timing_repeatability.py [--runs 5] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from progress import runs  # benchmarks/progress.py, beside this script

DEFAULT = ["model=bert_base", "batch.size=8", "batch.seq_len=128", "device=cpu", "tracking=none", "measure.warmup=3",
           "measure.repeats=15"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("overrides", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    medians = []
    for _ in runs(args.runs, "flopsweep " + " ".join(args.overrides)):
        with tempfile.TemporaryDirectory() as cwd:
            proc = subprocess.run([sys.executable, "-m", "flopsweep", *args.overrides], cwd=cwd, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            (result,) = Path(cwd).rglob("result.json")
            medians.append(json.loads(result.read_text())["metrics"]["time/step_s"])
    cv = statistics.stdev(medians) / statistics.fmean(medians)
    print(" ".join(args.overrides))
    print("median step time per invocation (s): " + ", ".join(f"{m:.4f}" for m in medians))
    print(f"coefficient of variation across {args.runs} invocations: {cv:.2%}")


if __name__ == "__main__":
    main()
