"""``flopsweep-project --serve``: its parts of the command line (the parser is ``flopsweep.cli.project``'s)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable

from flopsweep.core.errors import ConfigError, one_line, require
from flopsweep.core.result import Result


def serve(args: argparse.Namespace, load: Callable[[str, str], Result], target: Callable[[argparse.Namespace], Any],
          write_json: Callable[[Path, Any], None], log: Callable[[argparse.Namespace, dict, Result], None]) -> int:
    """``flopsweep-project --serve``: the roofline of a counted generation (a ``train=generate`` run, or ``--model``
    counted on meta) on a part of the hardware table, printed (and written with ``--json``), logged to MLflow."""
    from flopsweep.projection import serving as S

    require((args.run is None) != (args.model is None), "run", args.run or args.model,
            "give either a measured run or --model, not both" if args.run else "give a train=generate run or --model")
    if args.model:
        for key in ("prompt_tokens", "new_tokens"):
            value = getattr(args, key)
            require(value is not None and value >= 1, key.replace("_", "-"), value, "must be given, >= 1, with --model")
        from flopsweep.run.presets import measure_preset

        dtype = args.dtype if args.dtype in ("float32", "bfloat16", "float16") else "bfloat16"
        result = measure_preset(args.model, args.prompt_tokens, 1, extra=[
            "train=generate", f"generate.new_tokens={args.new_tokens}", f"dtype={dtype}"])
        source = f"{args.model} (counted on meta, {dtype} weights)"
    else:
        result, source = load(args.run, target(args).uri), args.run
    require(args.batch is None or (args.batch >= 1 and float(args.batch).is_integer()), "batch", args.batch,
            "must be a whole number >= 1")
    serving = S.Serving(accelerator(args), args.dtype, args.tp or 1, args.compute_efficiency,
                        args.memory_efficiency, price_per_gpu_hour=args.price, watts_per_gpu=args.watts,
                        gpus=args.gpus)
    plan = S.plan(S.Generation.from_result(result, source), serving, int(args.batch) if args.batch else None)
    print(plan.table())
    if args.json:
        write_json(args.json, plan.to_dict())
    if not args.no_log:
        from flopsweep.projection.records import serving_record

        log(args, serving_record(plan), result)
    return 0


def accelerator(args: argparse.Namespace):
    """The part to project on: --hardware FILE, else --gpu from the table; --peak-tflops, --bandwidth and
    --gpu-memory override its figures."""
    import dataclasses

    from flopsweep.core import hardware

    if args.hardware is not None:
        import yaml

        try:
            fields = yaml.safe_load(args.hardware.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError("hardware", str(args.hardware), f"cannot be read: {one_line(err, 200)}") from None
        acc = hardware.from_fields(fields, str(args.hardware))
    else:
        acc = hardware.accelerator(args.gpu)
        require(acc is not None, "gpu", args.gpu, f"is not in the table ({', '.join(hardware.names())}): give "
                "--hardware FILE, or --peak-tflops, --bandwidth and --gpu-memory with a --gpu of the table")
    for key, value in (("peak-tflops", args.peak_tflops), ("bandwidth", args.bandwidth),
                       ("gpu-memory", args.gpu_memory)):
        require(value is None or (math.isfinite(value) and value > 0), key, value, "must be a number > 0")
    if args.peak_tflops is not None:
        acc = dataclasses.replace(acc, peak_tflops={**acc.peak_tflops, args.dtype: args.peak_tflops})
    if args.bandwidth is not None:
        acc = dataclasses.replace(acc, bandwidth_gbs=args.bandwidth)
    if args.gpu_memory is not None:
        acc = dataclasses.replace(acc, memory_gb=args.gpu_memory * 2**30 / 1e9)
    return acc
