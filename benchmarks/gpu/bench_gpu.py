"""The GPU figures of docs/benchmarks.md, in one run on a machine with a CUDA GPU (``benchmarks/gpu/run.sh`` calls
it after ``pytest -m cuda``): GPT-2 small and BERT-base training steps in bf16 with AdamW, each as the ``flopsweep``
command would run it (``run_job``: the memory pre-check, build, count, size, time), and for each

- step time (median and its spread), achieved TFLOP/s and MFU against the GPU's bf16 dense peak;
- the FLOPs counted on cuda against the same job counted on meta (they must be equal: same ops, same formulas);
- the measured peak memory (``torch.cuda.max_memory_allocated``) against the estimates made on meta
  (``size/train_peak_bytes``: static sizes + saved activations; ``size/step_peak_bytes``: a simulated step);
- and LLaMA-2 7B generating (``workload=generate``, bf16): time to first token and per output token against the
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
DRY = ["model.n_layer=2", "batch.size=1", "batch.seq_len=32"]  # --dry-run: the same jobs, tiny, on the CPU
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
    parser.add_argument("--skip-generation", action="store_true", help="the training rows only")
    parser.add_argument("--dry-run", action="store_true", help="the code paths on the CPU with tiny models (no GPU)")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here", file=sys.stderr)
        return 2
    jobs = {name: overrides + (DRY if args.dry_run else []) for name, overrides in JOBS.items()}
    common = COMMON + (["measure.warmup=1", "measure.repeats=2"] if args.dry_run else [])
    rows = {}
    for name, overrides in jobs.items():
        cuda, meta = measure(overrides, device, common), measure(overrides, "meta", common)
        compiled = measure(overrides + ["measure.compile=true"], device, common)
        rows[name] = {
            "step_s": cuda[M.TIME_STEP], "step_iqr_s": cuda.get(M.TIME_STEP_SPREAD),
            "tflop_per_s": cuda[M.FLOPS_PER_S] / 1e12, "mfu": cuda.get(M.MFU),
            "tokens_per_s": cuda[M.TOKENS_PER_S],
            "counts_equal_meta": {key: cuda[key] == meta[key] for key in COUNTS},
            "flops_step": cuda[M.FLOPS_STEP],
            "measured_peak_bytes": cuda.get(M.MEASURED_PEAK_BYTES),
            "train_peak_estimate_bytes": meta[M.TRAIN_PEAK_BYTES],
            "step_peak_estimate_bytes": meta.get(M.STEP_PEAK_BYTES),
            "predicted": _predicted(cuda), "compiled": {
                "step_s": compiled[M.TIME_STEP], "mfu": compiled.get(M.MFU), "compile_s": compiled.get(M.TIME_COMPILE),
                "counts_equal_eager": all(compiled[k] == cuda[k] for k in COUNTS), **_predicted(compiled)},
        }
        print(f"{name}: done", flush=True)
    generation = {}
    for name, overrides in ({} if args.skip_generation or args.dry_run else GENERATION).items():
        generation[name] = serve(overrides)
        print(f"{name}: done", flush=True)
    machine = {"gpu": torch.cuda.get_device_name(0) if not args.dry_run else "cpu (dry run)",
               "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows, "generation": generation}, indent=2))
    print(f"\n{machine['gpu']}, torch {machine['torch']} (CUDA {machine['cuda']}), bf16, AdamW\n")
    print("| job | step (median) | TFLOP/s | MFU | tokens/s | counts cuda = meta | measured peak | "
          "estimate (static + saved) | estimate (simulated step) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
        equal = "yes" if all(r["counts_equal_meta"].values()) else \
            "NO: " + ", ".join(k for k, v in r["counts_equal_meta"].items() if not v)
        print(f"| {name} | {r['step_s'] * 1e3:.1f} ms | {r['tflop_per_s']:.1f} | {_pct(r['mfu'])} | "
              f"{r['tokens_per_s']:,.0f} | {equal} | {gib(r['measured_peak_bytes'])} | "
              f"{gib(r['train_peak_estimate_bytes'])} | {gib(r['step_peak_estimate_bytes'])} |")
    print("\n| job | eager: measured | predicted (ratio) | bound | MFU | compiled: measured | "
          "predicted fused (ratio) | MFU | compile | counts = eager |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        p, c = r["predicted"], r["compiled"]
        print(f"| {name} | {r['step_s'] * 1e3:.1f} ms | {_ms(p.get('step_s_predicted'))} ({_ratio(p.get('ratio'))}) | "
              f"{p.get('shares', '')} | {_pct(r['mfu'])} | {c['step_s'] * 1e3:.1f} ms | "
              f"{_ms(c.get('step_s_predicted'))} ({_ratio(c.get('ratio'))}) | {_pct(c['mfu'])} | "
              f"{c['compile_s'] or 0:.0f} s | {'yes' if c['counts_equal_eager'] else 'NO'} |")
    print("\n| generation (bf16) | TTFT | TPOT first / last | tokens/s | roofline TTFT | roofline TPOT | "
          "counts cuda = meta |")
    print("|---|---|---|---|---|---|---|")
    for name, g in generation.items():
        print(f"| {name} | {g['ttft_s'] * 1e3:.1f} ms | {g['tpot_s'] * 1e3:.2f} / {g['tpot_last_s'] * 1e3:.2f} ms | "
              f"{g['output_tokens_per_s']:,.0f} | {g['roofline_ttft_s'] * 1e3:.1f} ms | "
              f"{g['roofline_tpot_s'] * 1e3:.2f} ms | {'yes' if g['counts_equal_meta'] else 'NO'} |")
    equal = all(all(r["counts_equal_meta"].values()) and r["compiled"]["counts_equal_eager"] for r in rows.values()) \
        and all(g["counts_equal_meta"] for g in generation.values())
    return 0 if equal else 1


def _predicted(m: dict) -> dict:
    """The step's predicted time beside the measured one (the job's calibration profile, or the part's default)."""
    if m.get(M.TIME_STEP_PREDICTED) is None:
        return {}
    shares = {k: m[key] for k, key in (("compute", M.PREDICTED_SHARE_COMPUTE), ("memory", M.PREDICTED_SHARE_MEMORY),
                                       ("launch", M.PREDICTED_SHARE_LAUNCH))}
    return {"step_s_predicted": m[M.TIME_STEP_PREDICTED],
            "ratio": m.get(M.TIME_STEP_PREDICTED_RATIO), "mfu_predicted": m.get(M.MFU_PREDICTED),
            "phases": {k: m.get(k) for k in (M.TIME_FORWARD_PREDICTED, M.TIME_BACKWARD_PREDICTED,
                                             M.TIME_OPTIMIZER_PREDICTED, M.TIME_FORWARD, M.TIME_BACKWARD,
                                             M.TIME_OPTIMIZER)},
            "shares": " / ".join(f"{k} {v:.0%}" for k, v in shares.items())}


def _ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def serve(overrides: list[str]) -> dict:
    """A generation timed on cuda, beside the roofline of its counted figures on this GPU (efficiency 1)."""
    from flopsweep.core.hardware import accelerator
    from flopsweep.projection.serving import Generation, Serving, at_batch

    common = ["dtype=bfloat16", "workload=generate", "tracking=none", "measure.warmup=3", "measure.repeats=10"]
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
