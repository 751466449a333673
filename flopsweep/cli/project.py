"""``flopsweep-project``: what training a measured model will cost (or running it forward over tokens, for an
inference run), or what a budget buys.

    flopsweep-project outputs/sweeps/.../3_llama2_7b --tokens 2T --gpu H100 --gpus 512 --mfu 0.4 --price 2.5
    flopsweep-project --model gpt3_13b --compute-optimal --gpus 1024 --mfu 0.45 --watts 700
    flopsweep-project --model llama2_7b --inference --tokens 1T --gpus 8 --mfu 0.4
    flopsweep-project --model llama2_7b --budget-usd 1M --gpus 256 --mfu 0.4 --price 2.5
    flopsweep-project outputs/runs/.../gpt3_175b --tokens 300B --dp 16 --tp 8 --pp 8 --zero 1 --micro-batches 96 \
        --gpu A100 --gpu-memory 80 --mfu 0.4

The model comes from a measured job (its folder, or its MLflow run id) or from a preset, counted on ``meta``
here at batch 1 (``--batch`` when given) and the preset's sequence length (``--seq-len`` to change it). Amounts
take K, M, B/G, T, P. ``--dp --tp --pp --zero --micro-batches`` split the measured step over dp·tp·pp GPUs (the
measured batch is the global batch): per-device figures, and time divided by (1 − pipeline bubble).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

from flopsweep.core.console import exit_command
from flopsweep.core.errors import ConfigError, require
from flopsweep.core.result import Result

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}


def amount(text: str) -> float:
    """``2T`` -> 2e12, ``1.5e9`` -> 1.5e9, ``300B`` -> 3e11 (also ``$1M``, ``1,000``)."""
    raw = text.strip().lstrip("$").replace(",", "").replace("_", "")
    scale = SUFFIXES.get(raw[-1:].upper(), 1.0) if raw[-1:].isalpha() else 1.0
    try:
        return float(raw[:-1] if scale != 1.0 else raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount (examples: 2e12, 300B, 1.5T)") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flopsweep-project", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a measured job: its folder (with result.json) or its MLflow run id")
    p.add_argument("--model", help="a model preset to count on meta instead of a measured run")
    p.add_argument("--seq-len", type=int, help="with --model: the sequence length (default: the preset's)")
    p.add_argument("--inference", action="store_true",
                   help="with --model: count a forward pass only (train=inference) and project the tokens processed;"
                        " a measured inference run is projected so by itself")
    plan = p.add_argument_group("training plan (one of)")
    plan.add_argument("--tokens", type=amount, help="training tokens")
    plan.add_argument("--steps", type=amount, help="optimizer steps (with --batch; tokens = steps x batch x seq)")
    plan.add_argument("--batch", type=amount, help="global batch, in sequences")
    plan.add_argument("--compute-optimal", action="store_true", help="20 tokens per parameter (Chinchilla)")
    plan.add_argument("--tokens-per-param", type=float, default=20.0, help="a budget's rule of thumb: tokens per "
                      "parameter (default 20, Chinchilla; more for over-trained, LLaMA-style models)")
    plan.add_argument("--inference-tokens", type=amount, help="with a budget: the tokens the model will serve in "
                      "its life, added to each compute-optimal answer at 2N FLOPs a token")
    plan.add_argument("--recompute", action="store_true", help="full activation recomputation (one more forward)")
    budget = p.add_argument_group("budget (instead of a plan: what it buys)")
    for kind, what in (("flops", "FLOPs"), ("gpu-hours", "GPU-hours"), ("days", "wall-clock days on all GPUs"),
                       ("usd", "dollars (needs --price)")):
        budget.add_argument(f"--budget-{kind}", type=amount, help=what)
    hw = p.add_argument_group("hardware")
    hw.add_argument("--gpu", default="H100", help="a part of the hardware table (docs/serving.md: V100, A10G, L4, "
                    "L40S, A100, H100, H200, B200, GB200, MI300X, TPU v5e, ...); default H100")
    hw.add_argument("--dtype", default="bfloat16", help="training compute dtype for the peak (default bfloat16)")
    hw.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s per GPU (overrides the table)")
    hw.add_argument("--gpus", type=int, help="number of GPUs (default dp x tp x pp, else 1)")
    hw.add_argument("--gpu-memory", type=float, help="GiB per GPU: a parallel layout warns when a device needs more")
    hw.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation, e.g. 0.4")
    hw.add_argument("--mfu-from", help="take MFU from a measured GPU run (folder or run id) on this GPU model")
    hw.add_argument("--price", type=amount, help="dollars per GPU-hour")
    hw.add_argument("--watts", type=amount, help="power per GPU in watts, for energy")
    hw.add_argument("--bandwidth", type=float, help="memory bandwidth, GB/s per GPU (overrides the table)")
    hw.add_argument("--hardware", type=Path, help="a YAML file describing your own part: name, peak_tflops (by "
                                                 "dtype), memory_gb, bandwidth_gbs")
    serve = p.add_argument_group("serving (--serve: a roofline over a counted generation, docs/serving.md)")
    serve.add_argument("--serve", action="store_true", help="project serving: TTFT, time per output token, "
                       "tokens/s, largest batch, $ and kWh per million tokens")
    serve.add_argument("--prompt-tokens", type=int, help="with --model: the prompt's tokens")
    serve.add_argument("--new-tokens", type=int, help="with --model: the tokens generated")
    serve.add_argument("--compute-efficiency", type=float, default=1.0, help="share of the peak FLOP/s reached "
                       "(default 1: the roofline's bound)")
    serve.add_argument("--memory-efficiency", type=float, default=1.0, help="share of the bandwidth reached "
                       "(default 1)")
    par = p.add_argument_group("parallelism (see docs/projection.md, 'Parallelism and ZeRO')")
    par.add_argument("--dp", type=int, help="data-parallel replicas: each runs batch / dp of the measured batch")
    par.add_argument("--tp", type=int, help="tensor-parallel size")
    par.add_argument("--pp", type=int, help="pipeline-parallel stages")
    par.add_argument("--zero", type=int, help="ZeRO stage 0-3: shard optimizer state / + gradients / + parameters")
    par.add_argument("--micro-batches", type=int, help="micro-batches per replica, 1F1B schedule (default pp)")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="also write the projection as JSON here")
    out.add_argument("--experiment", default="projections", help="MLflow experiment (default: projections)")
    out.add_argument("--no-log", action="store_true", help="do not log the projection to MLflow")
    out.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else the local store)")
    out.add_argument("--store-dir", default="outputs", help="the local store's folder (default: outputs)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as err:
        print(f"flopsweep-project: error: {err}", file=sys.stderr)
        return 2


def _target(args: argparse.Namespace):
    from flopsweep.sinks.target import target_at

    return target_at(args.uri, args.store_dir, args.experiment)


def _run(args: argparse.Namespace) -> int:
    from flopsweep.projection import budget as B
    from flopsweep.projection import training as P
    from flopsweep.projection.parallel import per_device

    if args.serve:
        from flopsweep.cli.serving import serve

        return serve(args, _load, _target, _write_json, _log)
    budgets = {k: v for k in B.BUDGET_KINDS if (v := getattr(args, f"budget_{k}")) is not None}
    plans = [n for n in ("tokens", "steps") if getattr(args, n) is not None] + (["compute_optimal"]
                                                                                if args.compute_optimal else [])
    for key in ("tokens", "steps", "batch", "price", "watts", "inference_tokens",
                *(f"budget_{k}" for k in B.BUDGET_KINDS)):
        value = getattr(args, key)
        require(value is None or math.isfinite(value), key.replace("_", "-"), value, "must be a finite number")
    for key in ("steps", "batch"):
        value = getattr(args, key)
        require(value is None or float(value).is_integer(), key, value, "must be a whole number")
    require((args.run is None) != (args.model is None), "run", args.run or args.model,
            "give either a measured run or --model, not both" if args.run else "give a measured run or --model")
    require(len(plans) + (1 if budgets else 0) == 1 and len(budgets) <= 1, "plan", "+".join(plans + list(budgets))
            or None, "give exactly one of --tokens, --steps, --compute-optimal or one --budget-*")
    require((args.steps is None) == (args.batch is None), "batch" if args.steps is not None else "steps", None,
            "--steps and --batch go together (tokens = steps x batch x sequence length)")
    require(args.model is not None or not args.inference, "inference", True,
            "goes with --model: a measured run is projected as it was measured (training, or inference)")
    layout = _layout(args)
    hardware = _hardware(args, layout)
    if args.model:
        from flopsweep.run.presets import measure_preset

        result = measure_preset(args.model, args.seq_len, int(args.batch) if args.batch else 1, args.inference)
        source = "the preset, counted on meta"
    else:
        result, source = _load(args.run, _target(args).uri), args.run
    cost = P.PerToken.from_result(result, source)
    devices = per_device(result, layout, source) if layout else None
    require(args.seq_len is None or args.seq_len == cost.seq_len, "seq_len", args.seq_len,
            f"differs from the {cost.seq_len} that {args.run} was measured at: measure it at {args.seq_len}")
    if budgets:
        (kind, value), = budgets.items()
        flops = B.budget_flops(kind, value, hardware, devices.bubble if devices else 0.0)
        presets = []
        if cost.training:
            from flopsweep.run.presets import language_model_presets

            presets = [P.of_preset(p.name, p.params, p.seq_len, p.model) for p in language_model_presets()]
        report = B.budget_report(flops, kind, value, cost, hardware, presets, args.recompute, devices,
                                 args.tokens_per_param, args.inference_tokens)
        print(report["text"])
        payload = {k: v for k, v in report.items() if k != "text"}
    else:
        if args.tokens is not None:
            plan = P.Plan.of_tokens(args.tokens, recompute=args.recompute)
        elif args.steps is not None:
            plan = P.Plan.of_steps(int(args.steps), int(args.batch), args.seq_len or cost.seq_len, args.recompute)
        else:
            require(cost.training, "compute-optimal", True, f"is a training plan; {source} was measured forward "
                    "only (inference): give --tokens or --steps")
            plan = P.Plan.compute_optimal(cost.params, args.recompute)
        proj = P.project(cost, plan, hardware, devices)
        print(proj.table())
        payload = proj.to_dict()
        if not args.no_log:
            from flopsweep.projection.records import training_record

            _log(args, training_record(proj), result)
    if args.json:
        _write_json(args.json, payload)
    return 0


def _log(args: argparse.Namespace, record: dict, result: Result) -> None:
    """Log a projection's record to MLflow and say where, or why not, in one line."""
    from flopsweep.sinks.projections import log_projection

    logged = log_projection(_target(args), record, _measured_run_id(result, args.run))
    print(f"\nMLflow: {logged}" if logged.startswith("run ") else f"\nflopsweep-project: warning: {logged}",
          file=sys.stdout if logged.startswith("run ") else sys.stderr)


def _write_json(path: Path, payload) -> None:
    try:
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    except OSError as err:
        raise ConfigError("json", str(path), f"cannot be written: {err.strerror}") from None


def _layout(args: argparse.Namespace):
    """The parallel layout when any of --dp --tp --pp --zero --micro-batches is given, else None."""
    from flopsweep.projection.parallel import Parallelism

    given = {k: getattr(args, k) for k in ("dp", "tp", "pp", "zero", "micro_batches")}
    if all(v is None for v in given.values()):
        return None
    layout = Parallelism(**{k: v for k, v in given.items() if v is not None})
    if args.gpus is not None:
        layout.check_gpus(args.gpus)
    return layout


def _hardware(args: argparse.Namespace, layout=None):
    from flopsweep.core.hardware import DTYPES, peak_flops
    from flopsweep.projection.training import Hardware

    require(args.dtype in DTYPES, "dtype", args.dtype, f"must be one of {', '.join(DTYPES)}")
    peak = peak_flops(args.gpu, args.dtype, args.peak_tflops)
    require(peak is not None, "gpu", args.gpu, f"has no {args.dtype} peak in the table: give --peak-tflops")
    require((args.mfu is None) != (args.mfu_from is None), "mfu", args.mfu,
            "give --mfu (assumed) or --mfu-from (a measured GPU run), one of them")
    mfu, source = args.mfu, "assumed"
    if args.mfu_from:
        measured = _load(args.mfu_from, _target(args).uri)
        device = ((measured.info.get("timing") or {}).get("device_name")) or ""
        require(measured.metrics.get("speed/mfu") is not None, "mfu-from", args.mfu_from, "has no measured MFU")
        require(args.gpu in device, "mfu-from", args.mfu_from, f"ran on {device!r}, not on a {args.gpu}")
        mfu, source = measured.metrics["speed/mfu"], f"measured in {args.mfu_from}"
    require(args.gpus is None or args.gpus >= 1, "gpus", args.gpus, "must be >= 1")
    gpus = args.gpus or (layout.devices if layout else 1)
    require(args.gpu_memory is None or args.gpu_memory > 0, "gpu_memory", args.gpu_memory, "must be > 0 (GiB)")
    memory = args.gpu_memory * 2**30 if args.gpu_memory is not None else None
    return Hardware(args.gpu, gpus, peak, mfu, args.price, args.watts, source, memory)


def _load(ref: str, uri: str) -> Result:
    from flopsweep.sinks.reader import load_result

    return load_result(ref, uri)


def _measured_run_id(result: Result, ref: Optional[str]) -> Optional[str]:
    run_id = (result.info.get("tracking") or {}).get("run_id")
    return run_id or (ref if ref and not Path(ref).exists() else None)


def entry() -> None:
    exit_command(main())


if __name__ == "__main__":
    entry()
