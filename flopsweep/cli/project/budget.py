"""flopsweep-project budget: what a budget buys: the tokens it trains a measured model on (or, for an inference
run, the tokens it processes), by method, and which presets it trains compute-optimally.

    flopsweep-project budget --model llama2_7b --usd 1M --gpus 256 --mfu 0.4 --price 2.5
    flopsweep-project budget outputs/sweeps/.../7_gpt3_175b --gpu-hours 2M --gpu A100 --mfu 0.4
    flopsweep-project budget --model gpt2_small --flops 5.88e23 --mfu 0.4 --inference-tokens 1T

Give one budget: --flops, --gpu-hours, --days (wall-clock, on all --gpus) or --usd (with --price). Amounts take
K, M, B/G, T, P. Without --mfu or --mfu-from, the MFU is the run's predicted one (speed/mfu_predicted); a --flops
budget, whose tokens do not depend on it (only the hours it prints do), takes 40% where the run predicted none.
"""

from __future__ import annotations

import argparse

from flopsweep.cli.project import arguments as A
from flopsweep.cli.project.accelerators import training_inputs
from flopsweep.cli.project.common import check_source, log_projection, write_json
from flopsweep.core.console import say
from flopsweep.core.errors import install_extra, require
from flopsweep.core.progress import throttled

BUDGETS = {"flops": "FLOPs", "gpu_hours": "GPU-hours", "days": "wall-clock days on all GPUs",
           "usd": "dollars (needs --price)"}  # the keys are projection.budget's BUDGET_KINDS


def register(subparsers) -> None:
    p = A.add_subcommand(subparsers, "budget", __doc__,
                         "what a budget buys: tokens for a measured model, compute-optimal presets")
    A.add_training_source(p)
    budget = p.add_argument_group("budget (one of)")
    for kind, what in BUDGETS.items():
        budget.add_argument(f"--{kind.replace('_', '-')}", type=A.amount, help=what)
    rules = p.add_argument_group("the training bought")
    rules.add_argument("--tokens-per-param", type=float, default=20.0, help="tokens per parameter of the rule of "
                       "thumb (default 20, Chinchilla; more for over-trained, LLaMA-style models)")
    rules.add_argument("--inference-tokens", type=A.amount, help="the tokens the model will serve in its life, "
                       "added to each compute-optimal answer at 2N FLOPs a token")
    rules.add_argument("--recompute", action="store_true", help="full activation recomputation (one more forward)")
    A.add_training_part(p)
    A.add_output(p)
    p.set_defaults(command=command)


PACE_S = 5.0  # the presets' build says how far it is this often (it was silent for some 20 s)


def command(args: argparse.Namespace) -> int:
    from flopsweep.projection import budget as B
    from flopsweep.projection import training as P
    from flopsweep.projection.parallel import per_device
    from flopsweep.projection.records import budget_record
    from flopsweep.projection.scaling import check_tokens_per_param

    check_source(args)
    A.require_finite(args, *BUDGETS, "price", "watts", "inference_tokens", "tokens_per_param")
    require(args.inference_tokens is None or args.inference_tokens >= 0, "inference-tokens", args.inference_tokens,
            "must be >= 0 (the tokens the model serves in its life)")
    check_tokens_per_param(args.tokens_per_param)  # before anything is counted
    given = {kind: value for kind in BUDGETS if (value := getattr(args, kind)) is not None}
    require(len(given) == 1, "budget", "+".join(given) or None,
            "give exactly one of --flops, --gpu-hours, --days or --usd")
    (kind, value), = given.items()
    require(value > 0, kind.replace("_", "-"), value, "must be > 0")
    result, source, cost, hardware, split, _ = training_inputs(args, default_mfu=B.DEFAULT_MFU if kind == "flops"
                                                               else None)
    devices = per_device(result, split, source) if split else None
    flops = B.budget_flops(kind, value, hardware, devices.bubble if devices else 0.0)
    presets = []
    if cost.training:
        from flopsweep.run.presets import language_model_presets

        line = throttled(say, PACE_S)

        def building(done: int, total: int, found: int) -> None:  # where they are not in the cache yet
            if done == 0:
                say("building every language-model preset on meta to rank them (some seconds, once: they are kept "
                    "for the next budget)...")
            line(f"  ... {done} of {total} model presets read, {found} of them language models")

        read, unbuilt = language_model_presets(building)
        if unbuilt:  # the ranking is of fewer models than it says: said
            from flopsweep.models.hf import EXTRA

            say(f"note: {len(unbuilt)} Hugging Face presets left out (their language models not ranked): "
                f"transformers is not installed ({install_extra(EXTRA)})")
        presets = [P.of_preset(p.name, p.params, p.seq_len, p.model) for p in read]
    report = B.budget_report(flops, kind, value, cost, hardware, presets, args.recompute, devices,
                             args.tokens_per_param, args.inference_tokens)
    print(report["text"])
    write_json(args.json, {k: v for k, v in report.items() if k != "text"})
    log_projection(args, budget_record(report, cost, hardware), result)
    return 0
