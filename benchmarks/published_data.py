"""Rebuild flopsweep/measure/data/published.json from the public repositories it quotes (see that folder's README).

    .venv/bin/python benchmarks/published_data.py --llmcompass DIR --vidur DIR --calculon DIR [--out PATH]

Each DIR is a git clone (or bare git directory) of PrincetonUniversity/LLMCompass, microsoft/vidur and
calculon-ai/calculon; files are read with ``git show COMMIT:PATH`` at the commits below, so the result does not
depend on what is checked out. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import math
import statistics
import subprocess
from pathlib import Path

LLMCOMPASS = "2e015fd2ee750e6cad8d7152df52551e5b41ef20"
VIDUR = "7d47513363ec447a741ac5e47241580b47724fbf"
CALCULON = "caa4b11f8fe1fee3ba57adaacb7590d7deabd053"

LC_MATMUL = "ae/figure5/ab/real_hardware/matmul_A100.csv"
LC_GELU = "ae/figure5/g/real_hardware/gelu_A100.csv"
LC_ALLREDUCE = "ae/figure5/h/test_allreduce.py"
LC_PREFILL = "ae/figure5/ijkl/real_hardware/transformer_A100.csv"
LC_DECODE = "ae/figure5/ijkl/real_hardware/transformerAR_A100.csv"
VIDUR_MLP = "data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/mlp.csv"
VIDUR_NET = "data/profiling/network/a100_dgx/{}.csv"
CALCULON_SYSTEM = "systems/a100_80g.json"

# Vidur's token counts kept (of 261 from 1 to 4096), log-spaced; every one is in its profiling grid.
VIDUR_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
NET_POINTS = 64  # message sizes kept per GPU count, nearest to a log-spaced grid over the measured range


def show(repo: Path, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(_git_dir(repo)), "show", f"{commit}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def _git_dir(repo: Path) -> Path:
    return repo / ".git" if (repo / ".git").exists() else repo


def sig(x: float, digits: int = 6) -> float:
    """Round to significant digits: the files print at most that precision; float noise goes."""
    return float(f"{x:.{digits}g}")


def llmcompass_matmul(text: str) -> list[list[float]]:
    """Rows 'M, N, K, 0.1900ms, 101.7124Tflops' (test_matmul.py writes M, N, K in that order; N == K in every row)."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            m, n, k, ms, _ = (field.strip() for field in line.split(","))
            rows.append([int(m), int(k), int(n), sig(float(ms.removesuffix("ms")) / 1e3)])
    return rows


def llmcompass_gelu(text: str) -> list[list[float]]:
    """Rows 'elements, Gelem/s' of a float16 tanh-GELU; one read and one write of 2 bytes an element."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            elements, rate = (float(f) for f in line.split(","))
            rows.append([int(4 * elements), sig(elements / (rate * 1e9))])
    return rows


def llmcompass_allreduce(source: str) -> list[list[float]]:
    """The measured A100 curve written into test_allreduce.py as two lists: bytes and microseconds, 4 GPUs."""
    lists = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            lists[node.targets[0].id] = [ast.literal_eval(e) for e in node.value.elts]
    return [[4, int(b), sig(us / 1e6)] for b, us in zip(lists["size_list"], lists["gpu_latency_list"])]


def gpt3_layer(prefill_text: str, decode_text: str) -> dict:
    """The 12 per-op times of one GPT-3 175B layer at TP4 (test_transformer.py: batch 8, prompt 2048, d 12288,
    96 heads, 4 devices; decode at 3072 cached tokens), with the shapes transformer.py gives each op."""
    b, s, d, h, tp = 8, 2048, 12288, 96, 4
    heads, dh = b * h // tp, d // h
    layers = {}
    for name, text, q, kv in (("prefill", prefill_text, s, s), ("decode", decode_text, 1, s + 1024 + 1)):
        tokens = b * q
        ops = [("Q_K_V", "matmul", "bfloat16", [tokens, d, d // tp], 3),
               ("Q_mul_K", "bmm", "float16", [heads, q, dh, kv], 1),
               ("A_mul_V", "bmm", "float16", [heads, q, kv, dh], 1),
               ("Wo_proj", "matmul", "bfloat16", [tokens, d // tp, d], 1),
               ("W1_proj", "matmul", "bfloat16", [tokens, d, 4 * d // tp], 1),
               ("W2_proj", "matmul", "bfloat16", [tokens, 4 * d // tp, d], 1),
               ("Softmax", "softmax", "float16", [heads * q, kv], 1),
               ("LayerNorm_MHA", "layernorm", "float16", [tokens, d], 1),
               ("LayerNorm_FFN", "layernorm", "float16", [tokens, d], 1),
               ("GeLU", "gelu", "float16", [tokens * 4 * d // tp], 1),
               ("AllReduce_MHA", "all_reduce", "float16", [tp, tokens * d * 2], 1),
               ("AllReduce_FFN", "all_reduce", "float16", [tp, tokens * d * 2], 1)]
        seconds = [float(line) for line in text.split()]
        assert len(seconds) == len(ops), name
        layers[f"gpt3_175b_tp4_{name}"] = {
            "batch": b, "q_len": q, "kv_len": kv, "d_model": d, "heads": h, "tp": tp,
            "ops": [{"name": n, "kind": kind, "dtype": dtype, "shape": shape, "count": count, "seconds": sig(t)}
                    for (n, kind, dtype, shape, count), t in zip(ops, seconds)]}
    return layers


def vidur_matmuls(text: str) -> list[list[float]]:
    """The four projections of mlp.csv (float16 F.linear, y = x W^T), median kernel time in ms, at the kept token
    counts; repeated (M, K, N) rows (the token counts 2048 and 4096 are profiled twice) are averaged."""
    points: dict[tuple[int, int, int], list[float]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        m, t = int(row["num_tokens"]), int(row["num_tensor_parallel_workers"])
        if m not in VIDUR_TOKENS:
            continue
        d, ff = int(row["n_embd"]), int(row["n_expanded_embd"])
        dh = d // int(row["n_head"])
        qkv = (int(row["n_head"]) + 2 * int(row["n_kv_head"])) * dh
        up = ff * (2 if row["use_gated_mlp"] == "True" else 1)
        shapes = {"attn_pre_proj": (m, d, qkv // t), "attn_post_proj": (m, d // t, d),
                  "mlp_up_proj": (m, d, up // t), "mlp_down_proj": (m, ff // t, d)}
        for op, shape in shapes.items():
            points.setdefault(shape, []).append(float(row[f"time_stats.{op}.median"]) / 1e3)
    return [[*shape, sig(statistics.mean(ts))] for shape, ts in sorted(points.items())]


def vidur_network(text: str, op: str) -> tuple[list[list[float]], list[list[float]]]:
    """Rows of all_reduce.csv / send_recv.csv: size is bytes (the profiler stores 2 x float16 elements), the median
    of per-launch NCCL kernel times in ms. Returns (within one node: gpus, bytes, s) and (across nodes: gpus,
    gpus per node, bytes, s), a log-spaced subset per GPU count, repeated sizes averaged."""
    series: dict[tuple[int, int], dict[int, list[float]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        key = (int(row["num_workers"]), int(row["devices_per_node"]))
        series.setdefault(key, {}).setdefault(int(row["size"]), []).append(
            float(row[f"time_stats.{op}.median"]) / 1e3)
    one_node, across = [], []
    for (gpus, per_node), by_size in sorted(series.items()):
        for size in log_spaced(sorted(by_size), NET_POINTS):
            seconds = sig(statistics.mean(by_size[size]))
            (one_node.append([gpus, size, seconds]) if gpus == per_node
             else across.append([gpus, per_node, size, seconds]))
    return one_node, across


def log_spaced(sizes: list[int], n: int) -> list[int]:
    """The sizes nearest (in log) to n points spaced evenly in log between the smallest and the largest."""
    lo, hi = math.log(sizes[0]), math.log(sizes[-1])
    kept = {min(sizes, key=lambda s: abs(math.log(s) - (lo + (hi - lo) * i / (n - 1)))) for i in range(n)}
    return sorted(kept)


def calculon_network(text: str) -> dict:
    """systems/a100_80g.json's two network tiers: bandwidth GB/s a GPU, efficiency, latency s, domain size in GPUs,
    and each op's (scalar, offset): time = latency + bytes * scalar * (1 + offset / n) / (bandwidth * efficiency)."""
    tiers = json.loads(text)["networks"]
    return {name: {"bandwidth_gbs": t["bandwidth"], "efficiency": t["efficiency"], "latency_s": t["latency"],
                   "domain": t["size"], "ops": t["ops"], "processor_usage": t["processor_usage"]}
            for name, t in zip(("scale_up", "scale_out"), tiers)}


def build(llmcompass: Path, vidur: Path, calculon: Path) -> dict:
    lc = lambda path: show(llmcompass, LLMCOMPASS, path)  # noqa: E731
    vd = lambda path: show(vidur, VIDUR, path)  # noqa: E731
    all_reduce, all_reduce_across = vidur_network(vd(VIDUR_NET.format("all_reduce")), "all_reduce")
    send_recv, send_recv_across = vidur_network(vd(VIDUR_NET.format("send_recv")), "send_recv")
    vidur_sizes = {size for _, size, _ in all_reduce}
    extra = [row for row in llmcompass_allreduce(lc(LC_ALLREDUCE))
             if not min(vidur_sizes) <= row[1] <= max(vidur_sizes)]
    at = lambda repo, commit, path: f"{repo} {path} (commit {commit})"  # noqa: E731
    sources = {
        "matmul.bfloat16": at("LLMCompass", LLMCOMPASS, LC_MATMUL) + ": all 20 rows; torch.matmul of bfloat16 "
        "(software_model/matmul.py Matmul.run_on_gpu), median of 50 wall-clock times (time.time around the call and "
        "torch.cuda.synchronize), so each includes a launch and a synchronize",
        "matmul.float16": at("Vidur", VIDUR, VIDUR_MLP) + ": the four projections (attn_pre_proj, attn_post_proj, "
        "mlp_up_proj, mlp_down_proj) at tensor parallel 1, 2, 4, 8; column time_stats.<op>.median (ms, CUDA kernel "
        "time from the profiler trace, no launch); num_tokens is M; kept " + str(len(VIDUR_TOKENS)) + " of 261 "
        "token counts " + str(list(VIDUR_TOKENS)) + "; 2048 and 4096 are profiled twice: averaged; dropped the other "
        "token counts and the non-matmul columns",
        "collectives.all_reduce": at("Vidur", VIDUR, VIDUR_NET.format("all_reduce")) + ": rows with devices_per_node "
        f"== num_workers (one DGX A100 node), the sizes nearest {NET_POINTS} log-spaced points per GPU count (of "
        "993), repeated sizes averaged; time_stats.all_reduce.median (ms, NCCL kernel time); plus, at 4 GPUs "
        "below and above Vidur's 2 KiB-64 MiB range only, " + at("LLMCompass", LLMCOMPASS, LC_ALLREDUCE)
        + " (gpu_latency_list in microseconds over size_list in bytes)",
        "collectives.send_recv": at("Vidur", VIDUR, VIDUR_NET.format("send_recv")) + ": 2 GPUs in one node, subset "
        "as for all_reduce",
        "collectives.all_reduce_across_nodes": "the same file's rows with devices_per_node < num_workers "
        "(rows gpus, gpus_per_node, bytes, seconds)",
        "collectives.send_recv_across_nodes": "the same send_recv file's rows across 2 nodes",
        "collectives.all_gather": "none: no A100 all_gather measurement in the three repositories",
        "attention": "none: Vidur's compute/a100/*/attention.csv were not readable (absent from the repository "
        "snapshot read, which leaves out its largest files); LLMCompass's unfused attention ops are under layers",
        "memory": at("LLMCompass", LLMCOMPASS, LC_GELU) + ": all 20 rows of a torch.compile'd float16 tanh-GELU "
        "(software_model/gelu.py), column 2 is elements/s / 1e9; bytes = 4 x elements (read and write), median "
        "wall-clock time with its launch",
        "network": at("Calculon", CALCULON, CALCULON_SYSTEM) + ": networks[0] NVLink (scale_up), networks[1] "
        "InfiniBand (scale_out); model parameters from Calculon's authors, not a measurement here",
        "layers": at("LLMCompass", LLMCOMPASS, LC_PREFILL) + " and " + LC_DECODE + ": one row each in "
        "plot_transformer.py's order; shapes from ae/figure5/ijkl/test_transformer.py and "
        "software_model/transformer.py; Q_K_V is 3 identical matmuls; matmuls bfloat16, bmm, softmax, layernorm "
        "and gelu float16 (each op's run_on_gpu); layernorm has a launch subtracted by the code, the others do "
        "not; the all-reduce rows are not timed by run_on_gpu: the file's authors entered them",
    }
    return {"parts": {"A100": {
        "matmul": {"bfloat16": llmcompass_matmul(lc(LC_MATMUL)), "float16": vidur_matmuls(vd(VIDUR_MLP))},
        "collectives": {"all_reduce": sorted(all_reduce + extra), "send_recv": send_recv,
                        "all_reduce_across_nodes": all_reduce_across, "send_recv_across_nodes": send_recv_across},
        "memory": llmcompass_gelu(lc(LC_GELU)),
        "network": calculon_network(show(calculon, CALCULON, CALCULON_SYSTEM)),
        "layers": gpt3_layer(lc(LC_PREFILL), lc(LC_DECODE)),
        "sources": sources,
    }}}


def dumps(value, indent: int = 0) -> str:
    """JSON with one line per row: a list of numbers, or a short dict of them, stays on one line."""
    pad, flat = " " * (indent + 1), json.dumps(value)
    if isinstance(value, dict) and (len(flat) > 160 or any(isinstance(v, dict) or _nested(v) for v in value.values())):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if _nested(value):
        return "[\n" + ",\n".join(pad + dumps(v, indent + 1) for v in value) + "\n" + " " * indent + "]"
    return flat


def _nested(value) -> bool:
    return isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("llmcompass", "vidur", "calculon"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("flopsweep/measure/data/published.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(build(args.llmcompass, args.vidur, args.calculon)) + "\n")


if __name__ == "__main__":
    main()
