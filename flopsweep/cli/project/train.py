"""flopsweep-project train: what training a measured model will cost (or running it forward over tokens, for an
inference run).

    flopsweep-project train outputs/sweeps/.../3_llama2_7b --tokens 2T --gpu H100 --gpus 512 --mfu 0.4 --price 2.5
    flopsweep-project train --model gpt3_13b --compute-optimal --gpus 1024 --mfu 0.45 --watts 700
    flopsweep-project train --model llama2_7b --inference --tokens 1T --gpus 8 --mfu 0.4
    flopsweep-project train outputs/runs/.../gpt3_175b --tokens 300B --dp 16 --tp 8 --pp 8 --zero 1 \\
        --micro-batches 96 --gpu A100 --gpu-memory 80 --mfu 0.4

The model comes from a measured job (its folder, or its MLflow run id) or from a preset, counted on meta here at
batch 1 (--batch when given) and the preset's sequence length (--seq-len to change it). Without --mfu or
--mfu-from, the MFU is the run's predicted one (speed/mfu_predicted). Amounts take K, M, B/G, T, P.
--dp --tp --pp --zero --micro-batches split the measured step over dp·tp·pp GPUs (the measured batch is the global
batch): per-device figures, and time divided by (1 - pipeline bubble). With --model, --batch (the global batch) and
no --mfu, the layout is counted rank by rank on a fake process group and its step predicted on --gpu
(docs/parallel.md): the MFU is that step's, with its communication and bubble, and its memory a GPU is printed.
"""

from __future__ import annotations

import argparse
import dataclasses

from flopsweep.cli.project import arguments as A
from flopsweep.cli.project.accelerators import training_inputs
from flopsweep.cli.project.common import check_source, layout_line, log_projection, write_json
from flopsweep.core import metrics as M
from flopsweep.core.errors import require


def register(subparsers) -> None:
    p = A.add_subcommand(subparsers, "train", __doc__, "a training run's cost (or an inference run's, over tokens)")
    A.add_training_source(p)
    plan = p.add_argument_group("plan (one of --tokens, --steps with --batch, --compute-optimal)")
    plan.add_argument("--tokens", type=A.amount, help="training tokens")
    plan.add_argument("--steps", type=A.amount, help="optimizer steps (with --batch; tokens = steps x batch x seq)")
    plan.add_argument("--batch", type=A.amount, help="global batch, in sequences (with --steps; with --model, the "
                      "batch it is counted at: a layout's global batch)")
    plan.add_argument("--compute-optimal", action="store_true", help="20 tokens per parameter (Chinchilla)")
    plan.add_argument("--recompute", action="store_true", help="full activation recomputation (one more forward)")
    A.add_training_part(p)
    A.add_output(p)
    p.set_defaults(command=command)


def command(args: argparse.Namespace) -> int:
    from flopsweep.projection import training as P
    from flopsweep.projection.parallel import per_device
    from flopsweep.projection.records import training_record

    check_source(args)
    A.require_finite(args, "tokens", "steps", "batch", "price", "watts")
    A.require_whole(args, "steps", "batch")
    plans = [n for n in ("tokens", "steps") if getattr(args, n) is not None] + (["compute_optimal"]
                                                                                if args.compute_optimal else [])
    require(len(plans) == 1, "plan", "+".join(plans) or None,
            "give exactly one of --tokens, --steps (with --batch) or --compute-optimal")
    require(args.steps is None or args.batch is not None, "batch", None,
            "--steps needs --batch (tokens = steps x batch x sequence length)")
    result, source, cost, hardware, split, counted = training_inputs(args, int(args.batch) if args.batch else 1)
    per_step = float(args.batch) * (args.seq_len or cost.seq_len) if args.batch and cost.seq_len else None
    if args.tokens is not None:  # with --batch, the step is known: its optimizer's FLOPs count once a step
        plan = P.Plan.of_tokens(args.tokens, recompute=args.recompute, tokens_per_step=per_step)
    elif args.steps is not None:
        plan = P.Plan.of_steps(int(args.steps), int(args.batch), args.seq_len or cost.seq_len, args.recompute)
    else:
        require(cost.training, "compute-optimal", True, f"is a training plan; {source} was measured forward "
                "only (inference): give --tokens or --steps")
        plan = P.Plan.compute_optimal(cost.params, args.recompute)
    devices = per_device(result, split, source) if split else None
    if devices is not None and counted is not None:  # beside the even split, the peak counted rank by rank
        devices = dataclasses.replace(devices, counted_peak_bytes=counted.metrics.get(M.PARALLEL_MEMORY_PER_GPU))
    projection = P.project(cost, plan, hardware, devices)
    print(projection.table())
    if counted is not None:
        print(layout_line(counted))
    write_json(args.json, projection.to_dict())
    log_projection(args, training_record(projection), result)
    return 0
