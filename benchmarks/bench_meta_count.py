"""Count gpt3_175b (forward + backward + AdamW step) on meta, as a whole `flopsweep` process, N times:
median wall time and peak RSS; and, in-process, flopsweep's counter against PyTorch's FlopCounterMode.

    .venv/bin/python benchmarks/bench_meta_count.py [--runs 5] [--model gpt3_175b] [--seq-len N] [--tracking none|local]

``--model resnet_bk_baseline --seq-len 4096``: a model of many small ops (its O(N) recurrence runs some 660k ops
per step), where the counter's cost per op, not the model's size, is what takes the time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from flopsweep.cli.flopsweep import _room_for_deep_graphs
import progress  # benchmarks/progress.py, beside this script


def whole_process(model: str, runs: int, tracking: str, extra: list[str]) -> tuple[list[float], list[float]]:
    walls, rss = [], []
    for _ in progress.runs(runs, f"flopsweep model={model} device=meta, a process"):
        with tempfile.TemporaryDirectory() as cwd:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", "from flopsweep.cli.flopsweep import entry; entry()",
                                   f"model={model}", "device=meta", "batch.size=1", f"tracking={tracking}", *extra],
                                  cwd=cwd, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            # ru_maxrss of the children reaped so far is the largest child's: each run must be a new max
            rss.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)
    return walls, rss


def in_process(model: str, extra: list[str]) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from flopsweep.build.model import build
    from flopsweep.config.compose import compose_config
    from flopsweep.config.resolve import resolve
    from flopsweep.measure.count import count_step
    from flopsweep.measure.meta import MetaLikeCPU

    spec = resolve(compose_config(f"model={model}", "device=meta", "batch.size=1", *extra))
    from flopsweep.measure import meta

    limit, meta._CACHE_LIMIT = meta._CACHE_LIMIT, 0  # first without the meta kernel cache, then with it (cold)
    with MetaLikeCPU():
        built = build(spec)
        start = time.perf_counter()
        count_step(built.model, built.inputs, built.optimizer)
        uncached_s = time.perf_counter() - start
    meta._CACHE_LIMIT = limit
    built = build(spec)
    with MetaLikeCPU():
        start = time.perf_counter()
        ours = count_step(built.model, built.inputs, built.optimizer)
        ours_s = time.perf_counter() - start
        built.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with FlopCounterMode(display=False) as theirs:
            built.model(**built.inputs).backward()
        theirs_s = time.perf_counter() - start
    return {"flopsweep fwd+bwd+AdamW, meta kernel cache off (s)": uncached_s, "flopsweep fwd+bwd+AdamW (s)": ours_s,
            "FlopCounterMode fwd+bwd (s)": theirs_s,
            "flopsweep fwd+bwd matmul FLOPs": ours.forward.matmul + ours.backward.matmul,
            "FlopCounterMode fwd+bwd FLOPs": theirs.get_total_flops()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="gpt3_175b")
    parser.add_argument("--seq-len", type=int, help="batch.seq_len (default: the preset's)")
    parser.add_argument("--tracking", default="none", help="none, or local: a new MLflow store per run")
    args = parser.parse_args()
    extra = [f"batch.seq_len={args.seq_len}"] if args.seq_len else []
    _room_for_deep_graphs()  # as the flopsweep command does: ResNet-BK's long autograd chains
    walls, rss = whole_process(args.model, args.runs, args.tracking, extra)
    print(f"whole process, tracking={args.tracking}, {args.runs} runs: wall median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f}); peak RSS {max(rss):.2f} GiB")
    for key, value in in_process(args.model, extra).items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
