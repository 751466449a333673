"""The GPU figures of docs/benchmarks.md, in one run on a machine with a CUDA GPU (``benchmarks/gpu/run.sh`` calls
it after ``pytest -m cuda``): GPT-2 small and BERT-base training steps in bf16 with AdamW, each as the ``flopsweep``
command would run it (``run_job``: the memory pre-check, build, count, size, time), and for each

- step time (median and its spread), achieved TFLOP/s and MFU against the GPU's bf16 dense peak;
- the FLOPs counted on cuda against the same job counted on meta (they must be equal: same ops, same formulas);
- the measured peak memory (``torch.cuda.max_memory_allocated``) against the estimates made on meta
  (``size/train_peak_bytes``: static sizes + saved activations; ``size/step_peak_bytes``: a simulated step).

    .venv/bin/python benchmarks/gpu/bench_gpu.py --out results/gpu.json   # also prints a Markdown table
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.core import metrics as M
from flopsweep.run.job import run_job

JOBS = {  # name -> overrides: the models' usual training shapes, small enough for any datacenter GPU
    "gpt2_small b8 s1024": ["model=gpt2_small", "batch.size=8", "batch.seq_len=1024"],
    "bert_base b32 s512": ["model=bert_base", "batch.size=32", "batch.seq_len=512"],
}
COMMON = ["dtype=bfloat16", "optimizer=adamw", "tracking=none", "measure.warmup=5", "measure.repeats=20"]
COUNTS = (M.FLOPS_FORWARD, M.FLOPS_BACKWARD, M.FLOPS_OPTIMIZER, M.FLOPS_FORWARD_ELEMENTWISE,
          M.FLOPS_BACKWARD_ELEMENTWISE)


def measure(overrides: list[str], device: str) -> dict:
    spec = resolve(compose_config(*overrides, *COMMON, f"device={device}"))
    result = run_job(spec, {})
    if result.status != "ok":
        raise SystemExit(f"{' '.join(overrides)} on {device}: {result.status}: {result.error}\n"
                         f"{result.info.get('traceback', '')}")
    return result.metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_figures.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here", file=sys.stderr)
        return 2
    rows = {}
    for name, overrides in JOBS.items():
        cuda, meta = measure(overrides, "cuda"), measure(overrides, "meta")
        rows[name] = {
            "step_s": cuda[M.TIME_STEP], "step_iqr_s": cuda.get(M.TIME_STEP_SPREAD),
            "tflop_per_s": cuda[M.FLOPS_PER_S] / 1e12, "mfu": cuda[M.MFU],
            "tokens_per_s": cuda[M.TOKENS_PER_S],
            "counts_equal_meta": {key: cuda[key] == meta[key] for key in COUNTS},
            "flops_step": cuda[M.FLOPS_STEP],
            "measured_peak_bytes": cuda.get(M.MEASURED_PEAK_BYTES),
            "train_peak_estimate_bytes": meta[M.TRAIN_PEAK_BYTES],
            "step_peak_estimate_bytes": meta.get(M.STEP_PEAK_BYTES),
        }
        print(f"{name}: done", flush=True)
    machine = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
               "python": platform.python_version()}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"\n{machine['gpu']}, torch {machine['torch']} (CUDA {machine['cuda']}), bf16, AdamW\n")
    print("| job | step (median) | TFLOP/s | MFU | tokens/s | counts cuda = meta | measured peak | "
          "estimate (static + saved) | estimate (simulated step) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
        equal = "yes" if all(r["counts_equal_meta"].values()) else \
            "NO: " + ", ".join(k for k, v in r["counts_equal_meta"].items() if not v)
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"| {name} | {r['step_s'] * 1e3:.1f} ms | {r['tflop_per_s']:.1f} | {mfu} | "
              f"{r['tokens_per_s']:,.0f} | {equal} | {gib(r['measured_peak_bytes'])} | "
              f"{gib(r['train_peak_estimate_bytes'])} | {gib(r['step_peak_estimate_bytes'])} |")
    return 0 if all(all(r["counts_equal_meta"].values()) for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
