"""Parallel layouts predicted against published figures (issue 27): each case run as the ``flopsweep`` command runs a
``parallel.*`` job on meta (the layout counted rank by rank, its step predicted on the part's default profile and
interconnect), beside what its source measured.

    .venv/bin/python benchmarks/bench_parallel.py [--out parallel.json] [--only torchtitan]

- Narayanan et al. 2021 (sections 2.2.1-2.2.2): the pipeline bubble, (p - 1) / m of the ideal step under 1F1B,
  (p - 1) / (v m) interleaved;
- the Megatron-LM README (Training Speed and Scalability): GPT-3 175B strong-scaled on H100 from 96 GPUs, batch 1,152,
  MFU 47% at 96 (the README gives no layout in its text: t4 p8 d3, and t8 p12 d1 beside it; vocabulary 131,072
  and sequence 4,096 as the README's GPT models; Transformer Engine's fused kernels, so predict.fused=true);
- torchtitan's docs/performance.md, table 1: Llama 3.1 8B on 8 H100, FSDP, local batch 2, sequence 8,192, selective
  activation checkpointing: 5,762 tokens/s a GPU eager, 6,667 with torch.compile;
- Llama 3's long-context stage (Dubey et al. 2024, table 4; Balaji, SC'24): Llama 3.1 405B on 16,384 H100, TP 8,
  CP 16, PP 16, DP 4, sequences of 131,072 tokens, 16M tokens a batch: 380 TFLOP/s a GPU, 38% MFU (its pipeline
  schedule and recomputation are not given: here interleaved over 2 chunks a stage, full recomputation);
- GPT-3 175B on 1,024 H100 (t8 p8 d16, docs/parallel.md's worked example): no published figure, the whole job's time;
- DeepSeek-V3's pre-training (DeepSeek-AI 2024, sections 3.2 and 5.1 and table 1): 2,048 H800 (the H100's compute,
  400 GB/s NVLink), PP 16, EP 64 over 8 nodes, ZeRO-1 data parallelism, sequences of 4,096, batches of 15,360 at the
  end; 14.8T tokens in 2.664M GPU hours: 1,543 tokens/s a GPU. Under 1F1B (the all-to-alls on the critical path) and
  under its own DualPipe (``parallel.schedule=dualpipe``: the all-to-alls and sends under the chunk beside them, its
  bubble); its FP8 matmuls are not modelled (bfloat16).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import job_config, resolve
from flopsweep.core import metrics as M
from flopsweep.run.job import run_job

COMMON = ["device=meta", "tracking=none", "predict.hardware=H100"]
MEGATRON = ["model=gpt3_175b", "model.vocab_size=131072", "model.max_positions=4096", "dtype=mixed_bf16",
            "batch.seq_len=4096", "parallel.sequence_parallel=true", "parallel.recompute=selective", "parallel.zero=1",
            "predict.fused=true"]
TITAN = ["model=llama3_1_8b", "dtype=mixed_bf16", "batch.size=16", "batch.seq_len=8192", "parallel.dp=8",
         "parallel.zero=3", "parallel.micro_batch_size=2", "parallel.recompute=selective"]
BUBBLE = ["model=gpt3_xl", "model.n_layer=8", "batch.seq_len=512", "parallel.pp=4"]
CASES = {  # name -> (overrides, what the source reports, the metric compared)
    "bubble 1F1B p4 m8": ([*BUBBLE, "batch.size=8"], 3 / 8, "bubble"),
    "bubble 1F1B p4 m16": ([*BUBBLE, "batch.size=16"], 3 / 16, "bubble"),
    "bubble interleaved p4 v2 m8": ([*BUBBLE, "batch.size=8", "parallel.vpp=2"], 3 / 16, "bubble"),
    "Megatron-LM GPT-3 175B, 96 H100 (t4 p8 d3)": ([*MEGATRON, "batch.size=1152", "parallel.tp=4", "parallel.pp=8",
                                                  "parallel.dp=3"], 0.47, M.MFU_PREDICTED),
    # one data-parallel rank: no FSDP to keep float32 weights beside the bfloat16 compute (memory as bfloat16's)
    "Megatron-LM GPT-3 175B, 96 H100 (t8 p12 d1)": ([*MEGATRON, "batch.size=1152", "parallel.tp=8", "parallel.pp=12",
                                                   "parallel.dp=1", "parallel.zero=0", "dtype=bfloat16"], 0.47,
                                                  M.MFU_PREDICTED),
    "torchtitan Llama 3.1 8B, 8 H100, eager": ([*TITAN, "predict.fused=false"], 5762,
                                               M.TOKENS_PER_S_PER_GPU_PREDICTED),
    "torchtitan Llama 3.1 8B, 8 H100, compiled": ([*TITAN, "predict.fused=true"], 6667,
                                                  M.TOKENS_PER_S_PER_GPU_PREDICTED),
    "Llama 3 405B, 131k context, 16,384 H100 (t8 c16 p16 d4)": (
        ["model=llama3_1_405b", "dtype=mixed_bf16", "batch.size=128", "batch.seq_len=131072", "parallel.tp=8",
         "parallel.cp=16", "parallel.pp=16", "parallel.vpp=2", "parallel.dp=4", "parallel.zero=1",
         "parallel.sequence_parallel=true", "parallel.recompute=full", "predict.fused=true"], 0.38, M.MFU_PREDICTED),
    "GPT-3 175B, 1,024 H100 (t8 p8 d16)": (["model=gpt3_175b", "dtype=mixed_bf16", "batch.size=1536",
                                            "batch.seq_len=2048", "parallel.tp=8", "parallel.pp=8", "parallel.dp=16",
                                            "parallel.zero=1", "parallel.sequence_parallel=true",
                                            "parallel.recompute=selective", "predict.fused=true"], None,
                                           M.MFU_PREDICTED),
    "DeepSeek-V3, 2,048 H800 (p16 e64 d128)": (["model=deepseek_v3", "dtype=mixed_bf16", "batch.size=15360",
                                                "batch.seq_len=4096", "parallel.pp=16", "parallel.ep=64",
                                                "parallel.dp=128", "parallel.zero=1"], 1543,
                                               M.TOKENS_PER_S_PER_GPU_PREDICTED),
    "DeepSeek-V3, 2,048 H800 (p16 e64 d128), DualPipe": (
        ["model=deepseek_v3", "dtype=mixed_bf16", "batch.size=15360", "batch.seq_len=4096", "parallel.pp=16",
         "parallel.ep=64", "parallel.dp=128", "parallel.zero=1", "parallel.schedule=dualpipe"], 1543,
        M.TOKENS_PER_S_PER_GPU_PREDICTED),
}


def run(overrides: list[str], metric: str) -> dict:
    start = time.perf_counter()
    cfg = compose_config(*overrides, *COMMON)
    spec = resolve(cfg)
    result = run_job(spec, job_config(cfg, spec))
    wall = time.perf_counter() - start
    if result.status != "ok":
        return {"status": result.status, "error": result.error, "wall_s": wall}
    m, step = result.metrics, result.info["parallel"].get("step", {})
    if metric == "bubble":  # of the ideal step: m micro-batches of the slowest stage
        slowest = max(r["compute_s"] + r["tp_s"] + r["cp_s"] + r["pp_s"] for r in step["ranks"])
        value = m[M.TIME_BUBBLE] / (m[M.PARALLEL_MICRO_BATCHES] * slowest)
    else:
        value = m.get(metric)
    keys = (M.TIME_STEP_PREDICTED, M.MFU_PREDICTED, M.TOKENS_PER_S_PER_GPU_PREDICTED, M.PARALLEL_MEMORY_PER_GPU,
            M.TIME_COMM_EXPOSED, M.TIME_BUBBLE)
    return {"status": "ok", "value": value, "metrics": {k: m.get(k) for k in keys}, "wall_s": wall,
            "bottleneck": result.info["parallel"].get("bottleneck")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--only", help="cases whose name contains this")
    args = parser.parse_args(argv)
    rows = {}
    print("| case | published | predicted | predicted / published | memory a GPU (GiB) | job (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (overrides, published, metric) in CASES.items():
        if args.only and args.only not in name:
            continue
        row = rows[name] = {**run(overrides, metric), "published": published}
        if row["status"] != "ok":
            print(f"| {name} | {published} | {row['status']}: {row['error']} | | | {row['wall_s']:.1f} |")
            continue
        ratio = f"{row['value'] / published:.2f}" if published else ""
        memory = row["metrics"][M.PARALLEL_MEMORY_PER_GPU] / 2**30
        value = f"{row['value']:,.0f}" if row["value"] >= 10 else f"{row['value']:.4g}"
        print(f"| {name} | {published if published is not None else ''} | {value} | {ratio} | "
              f"{memory:.1f} | {row['wall_s']:.1f} |", flush=True)
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    for name, row in rows.items():
        print(f"{name}: {row.get('bottleneck')}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
