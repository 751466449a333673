"""How close flopsweep's memory estimates, made on ``meta``, come to what a real training job on this machine's CPU
takes: GPT-2 small with 2 layers, sequence 64, float32, AdamW, at a few batch sizes.

    .venv/bin/python benchmarks/bench_memory_estimate.py [--batches 8,32,64]

For each batch: ``size/train_peak_bytes`` (the static sum: weights, gradients, optimizer state and every saved
activation) and the simulated step's peak (``MetaEstimate(spec).at(B).step_peak_bytes``), both counted on meta in
this process; then the same job run for real on the CPU (``flopsweep.run.job.run_job``: the memory pre-check, build,
counted step, timed steps) in a fresh process, whose resident-memory high-water mark is reset just before the job
(``/proc/self/clear_refs``, Linux): the growth is ``VmHWM`` after the job minus ``VmRSS`` before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from progress import runs  # benchmarks/progress.py, beside this script

JOB = ["model=gpt2_small", "model.n_layer=2", "batch.seq_len=64", "dtype=float32", "optimizer=adamw",
       "tracking=none"]
MIB = 2**20

CHILD = """
import json, re, sys
from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.run.job import run_job

def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

cfg = compose_config(*sys.argv[1:])
spec = resolve(cfg)
config = {"model": {}, "batch": {}}
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again from what is resident now
before = status("VmRSS")
result = run_job(spec, config)
print(json.dumps({"status": result.status, "error": result.error, "growth": status("VmHWM") - before}))
"""


def real_growth(batch: int) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, *JOB, f"batch.size={batch}", "device=cpu"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["status"] != "ok":
        raise SystemExit(f"the CPU job at batch {batch} ended {out['status']}: {out['error']}")
    return out["growth"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="8,32,64", help="comma-separated batch sizes (default 8,32,64)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import torch

    from flopsweep.config.compose import compose_config
    from flopsweep.config.resolve import resolve
    from flopsweep.run.fit import MetaEstimate

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}; {' '.join(JOB)}")
    estimate = MetaEstimate(resolve(compose_config(*JOB, "batch.size=1", "device=cpu")))
    print("| batch | `size/train_peak_bytes` | simulated step peak | resident memory growth |")
    print("|---:|---:|---:|---:|")
    for i in runs(len(batches), f"batch {', '.join(map(str, batches))}: the estimate and the real job"):
        batch = batches[i]  # each batch's real job some 20 to 90 s: said as it starts (it was silent for 94 s)
        at = estimate.at(batch)
        growth = real_growth(batch)
        print(f"| {batch} | {at.size.train_peak_bytes / MIB:.0f} MiB | {at.step_peak_bytes / MIB:.0f} MiB | "
              f"{growth / MIB:.0f} MiB |")


if __name__ == "__main__":
    main()
