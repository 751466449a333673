"""The GPU figures of docs/benchmarks.md, in one run on a machine with a CUDA GPU (``benchmarks/gpu/run.sh`` calls
it after ``pytest -m cuda``): GPT-2 small and BERT-base training steps in bf16 with AdamW, each as the ``flopsweep``
command would run it (``run_job``: the memory pre-check, build, count, size, time), and for each

- step time (median and its spread), achieved TFLOP/s and MFU against the GPU's bf16 dense peak;
- the FLOPs counted on cuda against the same job counted on meta (they must be equal: same ops, same formulas);
- the measured peak memory (``torch.cuda.max_memory_allocated``) against the estimates made on meta
  (``size/train_peak_bytes``: static sizes + saved activations; ``size/step_peak_bytes``: a simulated step);
- and LLaMA-2 7B generating (``train=generate``, bf16): time to first token and per output token against the
  roofline of its counted figures on this GPU (``flopsweep.projection.serving``), the counts against meta's.

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


def measure(overrides: list[str], device: str, common: list[str] = COMMON) -> dict:
    spec = resolve(compose_config(*overrides, *common, f"device={device}"))
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
    generation = {}
    for name, overrides in GENERATION.items():
        generation[name] = serve(overrides)
        print(f"{name}: done", flush=True)
    machine = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
               "python": platform.python_version()}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows, "generation": generation}, indent=2))
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
    print("\n| generation (bf16) | TTFT | TPOT first / last | tokens/s | roofline TTFT | roofline TPOT | "
          "counts cuda = meta |")
    print("|---|---|---|---|---|---|---|")
    for name, g in generation.items():
        print(f"| {name} | {g['ttft_s'] * 1e3:.1f} ms | {g['tpot_s'] * 1e3:.2f} / {g['tpot_last_s'] * 1e3:.2f} ms | "
              f"{g['output_tokens_per_s']:,.0f} | {g['roofline_ttft_s'] * 1e3:.1f} ms | "
              f"{g['roofline_tpot_s'] * 1e3:.2f} ms | {'yes' if g['counts_equal_meta'] else 'NO'} |")
    equal = all(all(r["counts_equal_meta"].values()) for r in rows.values()) and \
        all(g["counts_equal_meta"] for g in generation.values())
    return 0 if equal else 1


def serve(overrides: list[str]) -> dict:
    """A generation timed on cuda, beside the roofline of its counted figures on this GPU (efficiency 1)."""
    from flopsweep.core.hardware import accelerator
    from flopsweep.projection.serving import Generation, Serving, at_batch

    common = ["dtype=bfloat16", "train=generate", "tracking=none", "measure.warmup=3", "measure.repeats=10"]
    cuda = measure(overrides, "cuda", common)
    meta = measure(overrides, "meta", common)
    counts = (M.FLOPS_PREFILL, M.FLOPS_DECODE, M.KV_CACHE_BYTES)
    row = {"ttft_s": cuda[M.TIME_TTFT], "tpot_s": cuda[M.TIME_TPOT], "tpot_last_s": cuda[M.TIME_TPOT_LAST],
           "output_tokens_per_s": cuda[M.OUTPUT_TOKENS_PER_S],
           "counts_equal_meta": all(cuda[k] == meta[k] for k in counts)}
    gpu = accelerator(torch.cuda.get_device_name(0))
    if gpu is not None:
        from flopsweep.core.result import Result

        result = Result("ok", None, {"dtype": {"params": "bfloat16"}}, cuda)
        roof = at_batch(Generation.from_result(result, "bench"), Serving(gpu, "bfloat16"), int(cuda[M.BATCH_SIZE]))
        row.update({"roofline_ttft_s": roof.ttft_s, "roofline_tpot_s": roof.tpot_s, "bound": roof.decode_bound})
    return row


GENERATION = {  # our decoder (no transformers needed there): a 7B model, a prompt of 512, 128 new tokens
    "llama2_7b b1 p512+128": ["model=llama2_7b", "batch.size=1", "batch.seq_len=512", "generate.new_tokens=128"],
    "llama2_7b b16 p512+128": ["model=llama2_7b", "batch.size=16", "batch.seq_len=512", "generate.new_tokens=128"],
    # a Hugging Face model, its own cache (needs transformers there)
    "llama3_2_1b (HF) b1 p512+128": ["model=llama3_2_1b", "batch.size=1", "batch.seq_len=512",
                                     "generate.new_tokens=128"],
}


if __name__ == "__main__":
    sys.exit(main())
