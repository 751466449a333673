"""The serving targets of issue 17: a 32k-token generation plan for a 70B-class model counted on meta (a prompt of
1,024 tokens, 31,744 generated: the prefill, two decode steps, and the check at context 32,767), and a serving
projection over 12 batch sizes of that plan on an H100, each timed in this process N times (median, min, max).

    .venv/bin/python benchmarks/bench_generation.py [--runs 5] [--model llama3_1_70b] [--prompt 1024] \
        [--new-tokens 31744]
    .venv/bin/python benchmarks/bench_generation.py --model gemma2_2b --prompt 4000 --new-tokens 200   # past a window
"""

from __future__ import annotations

import argparse
import statistics
import time

from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.core.hardware import accelerator
from flopsweep.core.result import Result
from flopsweep.core.text import size_bytes
from flopsweep.projection.serving import Generation, Serving, at_batch
from flopsweep.run.job import run_job
from progress import runs  # benchmarks/progress.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="llama3_1_70b")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=31744)
    args = parser.parse_args()
    overrides = [f"model={args.model}", "device=meta", "dtype=bfloat16", "batch.size=1", f"batch.seq_len={args.prompt}",
                 "workload=generate", f"generate.new_tokens={args.new_tokens}", "tracking=none"]
    counts, projections, result = [], [], None
    for _ in runs(args.runs, f"counting {args.model} and projecting it"):
        start = time.perf_counter()
        result = run_job(resolve(compose_config(*overrides)), {})
        counts.append(time.perf_counter() - start)
        assert result.status == "ok", result.error
        gen = Generation.from_result(Result("ok", None, {"dtype": {"params": "bfloat16"}}, result.metrics), "bench")
        serving = Serving(accelerator("H100"), "bfloat16", tp=8)
        start = time.perf_counter()
        rows = [at_batch(gen, serving, 2 ** k) for k in range(12)]
        projections.append(time.perf_counter() - start)
    m = result.metrics
    print(f"{args.model}: prompt {args.prompt:,} + {args.new_tokens:,} new tokens: {m['flops/generation']:.4e} FLOPs, "
          f"{size_bytes(m['size/kv_cache_bytes'])} of KV cache at the end; {result.info['generation']['counted']}")
    for name, times in (("count on meta (whole job)", counts), ("serving projection, 12 batches", projections)):
        print(f"{name}: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
              f"{len(times)} runs)")
    print(f"(batch 2048 on 8 x H100: TPOT {rows[-1].tpot_s * 1e3:.1f} ms, {rows[-1].decode_bound}-bound)")


if __name__ == "__main__":
    main()
