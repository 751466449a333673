"""What the module profile's hooks cost: the forward latency the profile reads for the whole model (hooks on
every module) against the same job's forward time from the step timings (no hooks), on the CPU.

    .venv/bin/python benchmarks/bench_profile.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

from omegaconf import OmegaConf

from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.core.text import seconds
from flopsweep.run.job import run_job

CASES = {"gpt2_small b2 s128": ["model=gpt2_small", "batch.size=2", "batch.seq_len=128"],
         "gpt2 2 layers d128 b2 s64": ["model=gpt2_small", "model.n_layer=2", "model.d_model=128", "model.n_head=4",
                                       "batch.size=2", "batch.seq_len=64"],
         "bert_base b1 s128": ["model=bert_base", "batch.size=1", "batch.seq_len=128"],
         "vit_b16 b1": ["model=vit_b16", "batch.size=1"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print("| model | modules | forward (step timing) | forward (profile, hooks) | ratio | job without / with profile |")
    print("|---|---|---|---|---|---|")
    for name, overrides in CASES.items():
        walls = {}
        for profile in (False, True):
            cfg = compose_config(*overrides, "device=cpu", "tracking=none", f"measure.repeats={args.repeats}",
                                 f"measure.profile={str(profile).lower()}")
            start = time.perf_counter()
            result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
            walls[profile] = time.perf_counter() - start
        assert result.status == "ok", result.error
        rows = result.breakdown["profile"]
        plain, hooked = result.metrics["time/forward_s"], rows[0]["forward_latency_s"]
        print(f"| {name} | {len(rows) - 1} | {seconds(plain)} | {seconds(hooked)} | {hooked / plain:.2f} | "
              f"{walls[False]:.1f} s / {walls[True]:.1f} s |")


if __name__ == "__main__":
    main()
