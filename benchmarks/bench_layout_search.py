"""The layout search's speed (issue 27: at least 300 layouts of a 70B model in under 10 minutes), and what one 70B
layout costs to count from samples of its stages' layers against counting every layer.

    .venv/bin/python benchmarks/bench_layout_search.py jobs              # a few layouts, sampled and whole: ~2 min
    .venv/bin/python benchmarks/bench_layout_search.py search [-- overrides...]   # the README's search: ~8 min
    .venv/bin/python benchmarks/bench_layout_search.py leftovers         # what each count leaves held: ~1 min

``jobs`` counts each layout twice in one warm process (after one warm-up job), as a ``parallel.*`` job on meta and
with ``count_layout(sample=False)``, and checks that both give the same figures. ``search`` runs the README's
command (tracking to the local store under ``outputs/``) and reports how many jobs had written their result after 5
and 10 minutes of the command, and when the last one did. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import progress  # benchmarks/progress.py, beside this script

MODEL = ["model=llama3_1_70b", "dtype=mixed_bf16", "batch.size=64", "batch.seq_len=4096"]
SEARCH = [".venv/bin/flopsweep", "+sweep=layouts", *MODEL, "parallel.gpus=32", "predict.hardware=H100",
          "hydra/launcher=joblib"]
LAYOUTS = {"d32 zero3 full": ["parallel.dp=32", "parallel.zero=3", "parallel.recompute=full"],
           "d4 t8 zero2": ["parallel.dp=4", "parallel.tp=8", "parallel.zero=2"],
           "d2 t8 p2 zero2 selective": ["parallel.dp=2", "parallel.tp=8", "parallel.pp=2", "parallel.zero=2",
                                        "parallel.recompute=selective"]}


def jobs() -> None:
    from flopsweep.config.compose import compose_config
    from flopsweep.config.resolve import job_config, resolve
    from flopsweep.core import metrics as M
    from flopsweep.measure import ranks
    from flopsweep.run import parallel
    from flopsweep.run.job import run_job

    counted = ranks.count_layout

    def timed(overrides: list[str], sample: bool) -> tuple[float, dict]:
        parallel.count_layout = lambda *a, **k: counted(*a, **k, sample=sample)
        cfg = compose_config(*MODEL, *overrides, "device=meta", "tracking=none", "predict.hardware=H100")
        spec = resolve(cfg)
        start = time.perf_counter()
        result = run_job(spec, job_config(cfg, spec))
        assert result.status == "ok", result.error
        return time.perf_counter() - start, result.metrics

    timed(LAYOUTS["d32 zero3 full"], True)  # warm-up: imports, the first build of the model
    print("| layout | sampled (s) | whole (s) | same figures |")
    print("|---|---:|---:|---|")
    for name, overrides in LAYOUTS.items():
        (fast, a), (slow, b) = timed(overrides, True), timed(overrides, False)
        keys = (M.PARALLEL_MEMORY_PER_GPU, M.FLOPS_STEP_PER_GPU, M.TOKENS_PER_S_PER_GPU_PREDICTED)
        print(f"| {name} | {fast:.2f} | {slow:.1f} | {all(a[k] == b[k] for k in keys)} |", flush=True)


def search(overrides: list[str]) -> None:
    start = time.time()
    done = subprocess.run([*SEARCH, *overrides], capture_output=True, text=True)
    wall = time.time() - start
    folder = next((line.split("results: ")[1].split()[0] for line in done.stdout.splitlines()[::-1]
                   if "jobs:" in line and "results: " in line), None)
    if done.returncode != 0 or folder is None:
        sys.exit(f"the search failed ({done.returncode}): {done.stderr[-2000:]}")
    times = sorted(p.stat().st_mtime - start for p in Path(folder).glob("*/result.json"))
    print(f"{len(times)} layouts in {folder}: {sum(t <= 300 for t in times)} done in 5 min, "
          f"{sum(t <= 600 for t in times)} in 10 min, the last at {times[-1]:.0f} s; the command {wall:.0f} s; "
          f"a worker's wait between jobs {waits(Path(folder)):.2f} s (median)")


def waits(folder: Path) -> float:
    """The median time a worker spent between the end of one job (``info.job``: what run_one timed) and the start of
    its next: each job's start matched to the latest end before it of a worker free then."""
    spans = sorted((r["info"]["job"]["start"], r["info"]["job"]["end"])
                   for r in map(json.loads, (p.read_text() for p in folder.glob("*/result.json"))))
    free, gaps = [], []
    for begin, end in spans:
        ready = [e for e in free if e <= begin]
        if ready:
            gaps.append(begin - max(ready))
            free.remove(max(ready))
        free.append(end)
    return statistics.median(gaps)


def leftovers(runs: int = 12) -> None:
    """What rank-by-rank layout counts leave held in one process, job after job: the objects the garbage collector
    tracks (after a collection, the first job's frozen as a sweep's worker does) and the resident memory."""
    import gc

    from flopsweep.config.compose import compose_config
    from flopsweep.config.resolve import job_config, resolve
    from flopsweep.run.job import run_job

    layouts = [["parallel.dp=16", "parallel.zero=3", "parallel.recompute=full"],
               ["parallel.dp=8", "parallel.tp=2", "parallel.zero=3"]]
    print("| job | objects tracked | RSS (MiB) |")
    print("|---:|---:|---:|")
    for i in progress.runs(runs, "a layout job in this process"):
        cfg = compose_config(*MODEL, *layouts[i % 2], "device=meta", "tracking=none", "predict.hardware=H100")
        spec = resolve(cfg)
        assert run_job(spec, job_config(cfg, spec)).status == "ok"
        gc.collect()
        if i == 0:
            gc.freeze()
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
        print(f"| {i + 1} | {len(gc.get_objects()):,} | {rss:.0f} |", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("jobs", "search", "leftovers"))
    parser.add_argument("overrides", nargs="*", help="search: more overrides (hydra.sweeper.zero=[1,2,3])")
    args = parser.parse_args(argv)
    {"jobs": jobs, "leftovers": leftovers}.get(args.what, lambda: search(args.overrides))()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
