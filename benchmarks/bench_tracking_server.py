"""What tracking costs a sweep per job through the PostgreSQL-backed MLflow server, next to the local SQLite store.

    .venv/bin/python benchmarks/bench_tracking_server.py [--rounds 5] [--uri http://host:5000]

The same 30-job ``meta`` sweep as ``bench_tracking.py --part overhead`` (a 1-3 layer GPT-2 x batch 1..10, basic
launcher) run three ways in turn, ``tracking=none``, ``tracking=local`` (an existing SQLite store) and
``tracking=server`` (an existing experiment on the server), ``--rounds`` times, after one uncounted sweep of each
(which creates the store and the experiment). Per-job overhead = (tracked wall - untracked wall of the same round)
/ 30; the medians are quoted. It includes everything tracking adds to a sweep: importing mlflow, opening the store
or reaching the server, the parent run, each child run with its params, metrics, tags and artifacts (uploaded
through the server to its artifact store), and closing the parent.

Without ``--uri`` it starts a server of its own with ``flopsweep-server`` (a new PostgreSQL cluster and
``mlflow server --workers 1`` on free ports of 127.0.0.1, in a temporary folder) and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from progress import runs  # benchmarks/progress.py, beside this script

from flopsweep.core.text import counted

FLOPSWEEP = [sys.executable, "-m", "flopsweep"]
SERVER = [sys.executable, "-m", "flopsweep_server"]
SWEEP = ["-m", "model=gpt2_small", "model.n_layer=1,2,3", "batch.size=1,2,3,4,5,6,7,8,9,10", "batch.seq_len=64",
         "device=meta", "tracking.experiment=bench_overhead"]
JOBS = 3 * 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(args: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or "not logged to MLflow" in proc.stderr:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return wall


def measure(uri: str, rounds: int) -> None:
    kinds = {"none": ["tracking=none"], "local": ["tracking=local"],
             "server": ["tracking=server", f"tracking.uri={uri}"]}
    walls: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for extra in kinds.values():  # the store and the experiment exist before anything is counted
            timed([*FLOPSWEEP, *SWEEP, *extra], cwd)
        for _ in runs(rounds, "a meta sweep untracked, local and to the server"):
            for kind, extra in kinds.items():
                walls[kind].append(timed([*FLOPSWEEP, *SWEEP, *extra], cwd))
    print(f"{JOBS}-job meta sweep, basic launcher, {counted(rounds, 'round')} of none / local / server in turn; "
          f"server {uri}")
    for kind, values in walls.items():
        print(f"  tracking={kind:<7} wall median {statistics.median(values):6.2f} s  (min {min(values):.2f}, "
              f"max {max(values):.2f})")
    for kind in ("local", "server"):
        per_job = [(t - u) / JOBS * 1e3 for t, u in zip(walls[kind], walls["none"])]
        print(f"  {kind} overhead per job: median {statistics.median(per_job):4.0f} ms  "
              f"(rounds: {', '.join(f'{x:.0f}' for x in per_job)} ms)")
    ratio = [(s - u) / (lo - u) for s, lo, u in zip(walls["server"], walls["local"], walls["none"]) if lo > u]
    if ratio:
        print(f"  server / local overhead: median {statistics.median(ratio):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--uri", help="an existing tracking server (default: start one with flopsweep-server)")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}")
    if args.uri:
        measure(args.uri, args.rounds)
        return
    with tempfile.TemporaryDirectory(prefix="flopsweep-bench-server-") as tmp:
        os.chmod(tmp, 0o755)  # as root, PostgreSQL runs as another account, which must reach the folder
        folder, port = Path(tmp) / "server", free_port()
        started = subprocess.run([*SERVER, "start", "--dir", str(folder), "--port", str(port),
                                  "--db-port", str(free_port()), "--workers", "1"], capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(started.stderr.strip() or started.stdout)
        try:
            measure(f"http://127.0.0.1:{port}", args.rounds)
        finally:
            subprocess.run([*SERVER, "stop", "--dir", str(folder)], capture_output=True, text=True)


if __name__ == "__main__":
    main()
