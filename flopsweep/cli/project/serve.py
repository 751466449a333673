"""flopsweep-project serve: the roofline of a counted generation (a workload=generate run, or a preset counted on
meta here) on a part of the hardware table: time to first token, time per output token, tokens/s per GPU at each
batch up to the largest that fits, dollars and kWh per million tokens (docs/serving.md).

    flopsweep-project serve outputs/runs/.../llama3_1_8b --gpu H200 --price 3.5
    flopsweep-project serve --model llama3_1_70b --prompt-tokens 2048 --new-tokens 512 --gpu H100 --tp 4
    flopsweep-project serve --model llama3_1_8b --prompt-tokens 512 --new-tokens 128 --hardware my_asic.yaml
"""

from __future__ import annotations

import argparse

from flopsweep.cli.project import arguments as A
from flopsweep.cli.project.accelerators import serving_part
from flopsweep.cli.project.common import check_source, log_projection, measured_or_counted, write_json
from flopsweep.core.console import warning
from flopsweep.core.errors import require

WEIGHT_DTYPES = ("float32", "bfloat16", "float16")  # a preset's weights as counted; another --dtype: bfloat16


def register(subparsers) -> None:
    p = A.add_subcommand(subparsers, "serve", __doc__,
                         "a generation's roofline: latency, throughput, cost per million tokens")
    A.add_source(p, "a measured workload=generate job")
    gen = p.add_argument_group("the generation (with --model)")
    gen.add_argument("--prompt-tokens", type=A.amount, help="the prompt's tokens (K, M as train's amounts)")
    gen.add_argument("--new-tokens", type=A.amount, help="the tokens generated")
    part = A.add_hardware(p, "the dtype of the peak, and of a preset's weights (default bfloat16)",
                          "GPUs in the fleet, a multiple of --tp: its tokens/s", "GiB per GPU (overrides the table's)")
    part.add_argument("--bandwidth", type=float, help="memory bandwidth, GB/s per GPU (overrides the table)")
    plan = p.add_argument_group("the plan")
    plan.add_argument("--tp", type=int, help="tensor-parallel GPUs per replica (default 1)")
    plan.add_argument("--ep", type=int, help="a mixture of experts: expert-parallel GPUs per replica, each holding "
                      "experts/ep whole experts; a multiple of --tp, attention data-parallel over ep/tp groups "
                      "(default 1)")
    plan.add_argument("--batch", type=A.amount, help="the batch per replica to report alone (default: each up to "
                      "the largest that fits)")
    plan.add_argument("--compute-efficiency", type=float, default=1.0, help="share of the peak FLOP/s reached "
                      "(default 1: the roofline's bound)")
    plan.add_argument("--memory-efficiency", type=float, default=1.0, help="share of the bandwidth reached "
                      "(default 1)")
    plan.add_argument("--weights-dtype", type=A.dtype_name, help="the weights as served: float32, bfloat16, "
                      "float16, fp8, int8 or int4 (default: as counted; --dtype stays the compute's, for the peak)")
    plan.add_argument("--kv-dtype", type=A.dtype_name, help="the KV cache as served: float32, bfloat16, float16 or "
                      "fp8 (default: as counted)")
    plan.add_argument("--expert-skew", type=float, help="a mixture of experts' routing: the exponent of a Zipf law "
                      "over its experts (default 0: uniform, the fewest tokens an expert)")
    A.add_output(p)
    p.set_defaults(command=command)


def command(args: argparse.Namespace) -> int:
    from flopsweep.projection import serving as S
    from flopsweep.projection.records import serving_record

    check_source(args)
    missing = [f"--{key.replace('_', '-')}" for key in ("prompt_tokens", "new_tokens") if getattr(args, key) is None]
    require(args.model is None or not missing, " and ".join(missing), None, "must be given with --model (the "
            "prompt's tokens and those generated after it)")
    A.require_finite(args, "price", "watts")
    # the part and the plan first: checked before a preset is counted
    serving = S.Serving(serving_part(args), args.dtype, 1 if args.tp is None else args.tp, args.compute_efficiency,
                        args.memory_efficiency, price_per_gpu_hour=args.price, watts_per_gpu=args.watts,
                        gpus=args.gpus, expert_skew=args.expert_skew or 0.0, weights_dtype=args.weights_dtype,
                        kv_dtype=args.kv_dtype, ep=1 if args.ep is None else args.ep)
    A.require_whole(args, "batch", "prompt_tokens", "new_tokens", at_least=1)
    extra, counted = [], ""
    if args.model is not None:
        dtype = args.dtype if args.dtype in WEIGHT_DTYPES else "bfloat16"
        extra = ["workload=generate", f"generate.new_tokens={args.new_tokens}", f"dtype={dtype}"]
        counted = f"{args.model} (counted on meta in {dtype})"
    result, source = measured_or_counted(args, args.prompt_tokens, extra=extra, counted=counted)
    generation = S.Generation.from_result(result, source)
    for key, measured, setting in (("prompt_tokens", generation.prompt, "batch.seq_len"),
                                   ("new_tokens", generation.new_tokens, "generate.new_tokens")):
        given = getattr(args, key)  # a run is served as it was measured: not another length said to be served
        require(args.model is not None or given is None or given == measured, key.replace("_", "-"), given,
                f"differs from the {measured:,} that {source} was measured at: measure it at {setting}={given}")
    require(args.expert_skew is None or generation.experts is not None, "expert-skew", args.expert_skew,
            f"is for a mixture of experts: {source} has no routed experts counted")
    plan = S.plan(generation, serving, args.batch)
    print(plan.table())
    if args.batch and args.batch > plan.largest:  # its row is a roofline's, for memory the replica does not have
        warning(f"--batch={args.batch:,} does not fit: its weights and KV cache need more than "
                f"{serving.memory_share:.0%} of the replica's memory, which holds {plan.largest:,} sequences",
                "flopsweep-project")
    write_json(args.json, plan.to_dict())
    log_projection(args, serving_record(plan), result)
    return 0
