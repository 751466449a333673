"""What counting costs on real CPU tensors: one training step counted vs the same step uncounted, in one
process, alternating, several rounds; prints the medians and their ratio.

    .venv/bin/python benchmarks/bench_count_overhead.py [--model bert_base --batch 8 --seq 128 --rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from flopsweep.build.model import build
from flopsweep.config.compose import register_configs
from flopsweep.config.resolve import resolve
from flopsweep.config.schema import CONF_DIR
from flopsweep.measure.count import count_step
from progress import runs  # benchmarks/progress.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bert_base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"model={args.model}", f"batch.size={args.batch}",
                                           f"batch.seq_len={args.seq}", "device=cpu"])
    built = build(resolve(cfg))
    model, inputs, opt = built.model, built.inputs, built.optimizer

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        model(**inputs).backward()
        opt.step()

    def counted() -> None:
        count_step(model, inputs, opt)

    plain(), counted()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "counted": []}
    for _ in runs(args.rounds, "a plain step and a counted one"):
        for name, fn in (("plain", plain), ("counted", counted)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    p, c = statistics.median(times["plain"]), statistics.median(times["counted"])
    ratios = [b / a for a, b in zip(times["plain"], times["counted"])]
    print(f"{args.model} batch {args.batch} seq {args.seq}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"uncounted step median {p:.3f} s, counted step median {c:.3f} s, ratio of medians {c / p:.3f}, "
          f"median of paired ratios {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
