"""What each trainable-parameter mode changes, counted on meta (a table for docs/train_modes.md).

    .venv/bin/python benchmarks/train_modes.py [--model bert_base --model llama2_7b]
"""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from flopsweep.config import compose_config, resolve
from flopsweep.console import human, size_bytes
from flopsweep.job import run_job

MODES = {"full": [], "frozen_backbone": ["train=frozen_backbone"],
         "frozen_backbone, last 2 layers": ["train=frozen_backbone", "train.trainable_layers=2"],
         "lora r=8 (qkv, out)": ["train=lora"],
         "lora r=16 (all linears)": ["train=lora", "train.rank=16", "train.targets=[qkv,out,gate,up,down]"],
         "inference": ["train=inference"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    print("| model | mode | trainable params | forward FLOPs | backward FLOPs | optimizer FLOPs | gradients | "
          "optimizer state | training peak (estimate) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.model or ["bert_base", "llama2_7b"]:
        for mode, overrides in MODES.items():
            if model.startswith("bert") and "all linears" in mode:
                overrides = ["train=lora", "train.rank=16", "train.targets=[qkv,out,up,down]"]
            cfg = compose_config(f"model={model}", "device=meta", "batch.size=1", f"batch.seq_len={args.seq_len}",
                                 "tracking=none", *overrides)
            result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
            m = result.metrics
            if result.status != "ok":
                print(f"| {model} | {mode} | {result.error} |")
                continue
            print(f"| {model} | {mode} | {human(m.get('size/params_trainable'))} | {human(m.get('flops/forward'))} | "
                  f"{human(m.get('flops/backward'))} | {human(m.get('flops/optimizer'))} | "
                  f"{size_bytes(m.get('size/grads_bytes'))} | {size_bytes(m.get('size/optimizer_state_bytes'))} | "
                  f"{size_bytes(m.get('size/train_peak_bytes'))} |")


if __name__ == "__main__":
    main()
