"""What MLflow tracking costs a sweep, and what one sweep saves over one process per configuration.

    .venv/bin/python benchmarks/bench_tracking.py [--rounds 3] [--part overhead|sweep48|all]

overhead: a 30-job ``meta`` sweep (a 1-3 layer GPT-2 x batch 1..10) with ``tracking=local`` against the same
  sweep with ``tracking=none``, alternating, in a folder whose store already exists (created by a first,
  uncounted sweep). Per-job overhead = (tracked wall - untracked wall) / 30, for each pair; the median is
  quoted. It includes everything tracking adds to a sweep: importing mlflow, opening the store, the parent
  run, each child run with its params, metrics, tags and artifacts, and closing the parent.
sweep48: 4 families x 3 sizes x 4 sequence lengths (48 jobs) on ``meta`` with tracking, as one multirun
  (``--rounds`` times) against the same 48 configurations run as 48 separate ``flopsweep`` processes (once).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from progress import runs  # benchmarks/progress.py, beside this script

FLOPSWEEP = [sys.executable, "-m", "flopsweep"]
OVERHEAD_SWEEP = ["model=gpt2_small", "model.n_layer=1,2,3", "batch.size=1,2,3,4,5,6,7,8,9,10", "batch.seq_len=64",
                  "device=meta", "tracking.experiment=bench_overhead"]
FAMILIES = {"GPT-2": ["gpt2_small", "gpt2_medium", "gpt2_large"], "GPT-3": ["gpt3_small", "gpt3_medium", "gpt3_large"],
            "T5": ["t5_small", "t5_base", "t5_large"], "LLaMA-style": ["qwen2_5_0_5b", "llama2_7b", "qwen2_5_7b"]}
SEQ_LENS = [64, 128, 256, 512]


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return wall


def overhead(rounds: int) -> None:
    jobs = 3 * 10
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        timed([*FLOPSWEEP, "-m", *OVERHEAD_SWEEP], cwd)  # creates the store: the figure is for an existing one
        tracked, untracked = [], []
        for _ in runs(rounds, "a meta sweep tracked and untracked"):
            tracked.append(timed([*FLOPSWEEP, "-m", *OVERHEAD_SWEEP], cwd))
            untracked.append(timed([*FLOPSWEEP, "-m", *OVERHEAD_SWEEP, "tracking=none"], cwd))
    per_job = [(t - u) / jobs * 1e3 for t, u in zip(tracked, untracked)]
    print(f"overhead: {jobs}-job meta sweep, {rounds} pairs")
    print(f"  tracking=local  wall median {statistics.median(tracked):.2f} s  (min {min(tracked):.2f}, "
          f"max {max(tracked):.2f})")
    print(f"  tracking=none   wall median {statistics.median(untracked):.2f} s  (min {min(untracked):.2f}, "
          f"max {max(untracked):.2f})")
    print(f"  tracking overhead per job: median {statistics.median(per_job):.0f} ms  "
          f"(pairs: {', '.join(f'{x:.0f}' for x in per_job)} ms)")


def sweep48(rounds: int) -> None:
    models = [m for sizes in FAMILIES.values() for m in sizes]
    configs = [(m, s) for m in models for s in SEQ_LENS]
    sweep = ["-m", f"model={','.join(models)}", f"batch.seq_len={','.join(map(str, SEQ_LENS))}", "device=meta",
             "tracking.experiment=bench_sweep48"]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        timed([*FLOPSWEEP, "model=gpt2_small", "device=meta", "tracking.experiment=bench_sweep48"], cwd)  # the store
        multirun = [timed([*FLOPSWEEP, *sweep], cwd) for _ in runs(rounds, "the 48-job multirun")]
        separate = sum(timed([*FLOPSWEEP, f"model={m}", f"batch.seq_len={s}", "device=meta",
                              "tracking.experiment=bench_sweep48"], cwd) for m, s in configs)
    best = statistics.median(multirun)
    print(f"sweep48: {len(configs)} jobs ({len(FAMILIES)} families x 3 sizes x {len(SEQ_LENS)} sequence lengths), "
          f"meta, tracking=local")
    print(f"  one multirun: wall median {best:.1f} s over {rounds} (min {min(multirun):.1f}, max {max(multirun):.1f})")
    print(f"  {len(configs)} separate processes: {separate:.1f} s in all ({separate / len(configs):.2f} s each)")
    print(f"  separate / multirun: {separate / best:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=["overhead", "sweep48", "all"], default="all")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}")
    if args.part in ("overhead", "all"):
        overhead(args.rounds)
    if args.part in ("sweep48", "all"):
        sweep48(args.rounds)


if __name__ == "__main__":
    main()
