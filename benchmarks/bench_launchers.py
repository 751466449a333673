"""A 200-job ``meta`` sweep with Hydra's basic launcher (one job after another, in the sweep's process) against the
same sweep with the joblib launcher and 2 workers, each logging every job to the local MLflow store.

    .venv/bin/python benchmarks/bench_launchers.py [--rounds 3]            # alternate the two, report medians
    .venv/bin/python benchmarks/bench_launchers.py --one joblib --dir DIR  # one sweep, to time from outside

The sweep: a tiny GPT-2 (d_model 64, 2 heads, vocabulary 1000, sequence 32) with 1 to 10 layers x batch 1 to 20,
counted and sized on ``meta``. Each launcher has a folder of its own whose store exists before the first timed
sweep (a first sweep creates it), so both pay for opening a store, not for creating one. After each sweep the
script counts the job runs under that sweep's parent run: every job must be logged, once.
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
EXPERIMENT = "bench_launchers"
SWEEP = ["-m", "model=gpt2_small", "model.n_layer=range(1,11)", "model.d_model=64", "model.n_head=2",
         "model.vocab_size=1000", "batch.seq_len=32", "batch.size=range(1,21)", "device=meta",
         f"tracking.experiment={EXPERIMENT}"]
JOBS = 10 * 20
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def run_sweep(launcher: str, cwd: Path) -> tuple[float, tuple[float, float, float]]:
    """The sweep's wall time and its phases: command start to the first job, seconds per job, last job to exit."""
    start, start_wall = time.perf_counter(), time.time()
    proc = subprocess.run([*FLOPSWEEP, *SWEEP, *LAUNCHERS[launcher]], cwd=cwd, capture_output=True, text=True)
    wall, end = time.perf_counter() - start, time.time()
    if proc.returncode != 0:
        raise SystemExit(f"the {launcher} sweep failed:\n{proc.stderr[-2000:]}")
    return wall, phases(max((cwd / "outputs" / "sweeps").glob("*/*")), start_wall, end)


def phases(sweep_dir: Path, start: float, end: float) -> tuple[float, float, float]:
    """From the job folders: Hydra writes a job's config as it starts, flopsweep its result.json as it ends."""
    first = min(p.stat().st_mtime for p in sweep_dir.glob("*/.hydra/config.yaml"))
    last = max(p.stat().st_mtime for p in sweep_dir.glob("*/result.json"))
    return first - start, (last - first) / JOBS, end - last


def logged_runs_of_last_sweep(cwd: Path) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], "tags.`flopsweep.kind` = 'sweep'", max_results=1,
                                   order_by=["attributes.start_time DESC"])
    return len(client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                                                 "attributes.status = 'FINISHED'", max_results=10000))


def prepare(cwd: Path) -> None:
    """Create the store with one small job, so that timed sweeps open an existing store."""
    subprocess.run([*FLOPSWEEP, "model=gpt2_small", "model.n_layer=1", "device=meta",
                    f"tracking.experiment={EXPERIMENT}"], cwd=cwd, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of sweeps, alternating (default 3)")
    parser.add_argument("--one", choices=sorted(LAUNCHERS), help="run one sweep in --dir and report its runs")
    parser.add_argument("--dir", type=Path, help="with --one: the folder to run in (its store is created once)")
    args = parser.parse_args()
    if args.one:
        cwd = (args.dir or Path.cwd()).resolve()
        cwd.mkdir(parents=True, exist_ok=True)
        if not (cwd / "outputs" / "mlflow.db").exists():
            prepare(cwd)
        wall, (before, per_job, after) = run_sweep(args.one, cwd)
        print(f"{args.one}: {JOBS} jobs in {wall:.1f} s, {logged_runs_of_last_sweep(cwd)} runs logged; first job "
              f"after {before:.1f} s, {per_job:.3f} s a job, exit {after:.1f} s after the last")
        return

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}")
    walls: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    parts: dict[str, list[tuple[float, float, float]]] = {name: [] for name in LAUNCHERS}
    logged: dict[str, list[int]] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: Path(tmp, name) for name in LAUNCHERS}
        for cwd in dirs.values():
            cwd.mkdir()
            prepare(cwd)
        for _ in runs(args.rounds, "a sweep under each launcher"):
            for name in LAUNCHERS:
                wall, phase = run_sweep(name, dirs[name])
                walls[name].append(wall)
                parts[name].append(phase)
                logged[name].append(logged_runs_of_last_sweep(dirs[name]))
    for name in LAUNCHERS:
        before, per_job, after = (statistics.median(p) for p in zip(*parts[name]))
        print(f"  {name:7s} wall median {statistics.median(walls[name]):6.1f} s  (min {min(walls[name]):.1f}, max "
              f"{max(walls[name]):.1f}); runs logged per sweep: {logged[name]}")
        print(f"          medians: first job after {before:.1f} s, {per_job:.3f} s a job, exit {after:.1f} s after "
              "the last")
    pairs = [b / j for b, j in zip(walls["basic"], walls["joblib"])]
    ratio = statistics.median(walls["basic"]) / statistics.median(walls["joblib"])
    print(f"  basic / joblib: ratio of medians {ratio:.2f}x, pairs {', '.join(f'{p:.2f}' for p in pairs)}")


if __name__ == "__main__":
    main()
