"""What each trainable-parameter mode changes, counted on meta (a table for docs/train_modes.md), and the
decoder's closed-form LoRA estimate beside the counted one (a second table).

    .venv/bin/python benchmarks/train_modes.py [--model bert_base --model llama2_7b]
"""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from flopsweep.build.spec import JobSpec
from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.core.text import human, size_bytes
from flopsweep.run.job import run_job
from flopsweep.models import decoder
from flopsweep.core.result import Result

MODES = {"full": [], "frozen_backbone": ["train=frozen_backbone"],
         "frozen_backbone, last 2 layers": ["train=frozen_backbone", "train.trainable_layers=2"],
         "lora r=8 (qkv, out)": ["train=lora"],
         "lora r=16 (all linears)": ["train=lora", "train.rank=16", "train.targets=[qkv,out,gate,up,down]"],
         "dora r=8 (qkv, out)": ["train=dora"],
         "inference": ["workload=inference"]}
LORA = {mode: overrides for mode, overrides in MODES.items() if mode.startswith("lora")}
# the LLaMA-style decoder of tests/build/test_train.py: grouped-query heads (8 query, 2 KV), SwiGLU, untied head
TINY_DECODER = ["model=llama2_7b", "model.d_model=64", "model.n_layer=2", "model.n_head=8", "model.n_kv_head=2",
                "model.d_ff=160", "model.vocab_size=97"]


def run(overrides: list[str], seq_len: int) -> tuple[JobSpec, Result]:
    cfg = compose_config("device=meta", "batch.size=1", f"batch.seq_len={seq_len}", "tracking=none", *overrides)
    spec = resolve(cfg)
    return spec, run_job(spec, OmegaConf.to_container(cfg, resolve=True))


def modes_table(models: list[str], seq_len: int) -> None:
    print("| model | mode | trainable params | forward FLOPs | backward FLOPs | optimizer FLOPs | gradients | "
          "optimizer state | training peak (estimate) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in models:
        for mode, overrides in MODES.items():
            if model.startswith("bert") and "all linears" in mode:
                overrides = ["train=lora", "train.rank=16", "train.targets=[qkv,out,up,down]"]
            _, result = run([f"model={model}", *overrides], seq_len)
            m = result.metrics
            if result.status != "ok":
                print(f"| {model} | {mode} | {result.error} |")
                continue
            print(f"| {model} | {mode} | {human(m.get('size/params_trainable'))} | {human(m.get('flops/forward'))} | "
                  f"{human(m.get('flops/backward'))} | {human(m.get('flops/optimizer'))} | "
                  f"{size_bytes(m.get('size/grads_bytes'))} | {size_bytes(m.get('size/optimizer_state_bytes'))} | "
                  f"{size_bytes(m.get('size/train_peak_bytes'))} |")


def lora_table(seq_len: int) -> None:
    """Counted against ``decoder.analytic_forward_flops``, ``analytic_backward_flops`` and ``lora_params``."""
    print("| model | mode | quantity | counted | closed form | counted - closed form |")
    print("|---|---|---|---|---|---|")
    for model, overrides in (("llama2_7b", ["model=llama2_7b"]), ("tiny decoder", TINY_DECODER)):
        for mode, lora in LORA.items():
            spec, result = run([*overrides, *lora], seq_len)
            if result.status != "ok":
                print(f"| {model} | {mode} | {result.error} |")
                continue
            m = result.metrics
            closed = {"trainable params": decoder.lora_params(spec.model, spec.train),
                      "forward FLOPs": decoder.analytic_forward_flops(spec.model, spec.batch, spec.train),
                      "backward FLOPs": decoder.analytic_backward_flops(spec.model, spec.batch, spec.train)}
            counted = {"trainable params": m["size/params_trainable"], "forward FLOPs": m["flops/forward"],
                       "backward FLOPs": m["flops/backward"]}
            for quantity, value in closed.items():
                print(f"| {model} | {mode} | {quantity} | {counted[quantity]:,} | {value:,} | "
                      f"{counted[quantity] - value:,} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    modes_table(args.model or ["bert_base", "llama2_7b"], args.seq_len)
    print()
    lora_table(args.seq_len)


if __name__ == "__main__":
    main()
