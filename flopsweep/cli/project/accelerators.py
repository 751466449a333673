"""The part a projection runs on, from the flags: for training, its peak and the MFU it reaches (assumed, measured
in a GPU run, or predicted in the run projected), with the measured cost ``train`` and ``budget`` put on it; for
serving, its row of the hardware table or a YAML file."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, NamedTuple, Optional

from flopsweep.cli.project.arguments import layout, require_positive
from flopsweep.cli.project.common import load_run, measured_or_counted
from flopsweep.core.errors import ConfigError, one_line, require
from flopsweep.core.hardware import unknown_part
from flopsweep.core.result import Result
from flopsweep.core.shape import shape_of

if TYPE_CHECKING:  # imported where used: --help stays fast
    from flopsweep.projection.parallel import Parallelism
    from flopsweep.projection.training import Hardware, PerToken

COUNTED_DTYPES = ("float32", "bfloat16", "float16")  # what a preset is counted in for a layout (--dtype)
NO_MFU = ("give --mfu (assumed), --mfu-from (a measured GPU run), or a run with a predicted MFU "
          "(speed/mfu_predicted: a timed job, or a meta job with predict.hardware=<part>)")


class TrainingInputs(NamedTuple):
    result: Result      # the run measured, or the preset counted
    source: str         # where it came from, as the projection prints it
    cost: PerToken
    hardware: Hardware
    split: Optional[Parallelism]  # the parallel layout, when one is given
    counted_layout: Optional[Result] = None  # the layout counted rank by rank, where its MFU is the projection's


def training_inputs(args: argparse.Namespace, batch: int = 1, default_mfu: Optional[float] = None) -> TrainingInputs:
    """What ``train`` and ``budget`` project: the part (checked before anything is counted), the parallel layout,
    and the run's cost a token; ``--model`` counted at ``batch`` sequences of ``--seq-len``, a forward only with
    ``--inference``; the MFU ``default_mfu`` where none is given or predicted (a FLOPs budget's), if not None."""
    from flopsweep.projection.training import PerToken

    split = layout(args)
    why_not = _not_counted(args, split)  # the MFU is the counted layout's where a preset's is and none is given
    by_layout = why_not is None and args.model is not None and args.mfu is None and args.mfu_from is None
    part = _training_part(args, by_layout or default_mfu is not None, why_not or "")
    require(args.model is not None or not args.inference, "inference", True,
            "goes with --model: a measured run is projected as it was measured (training, or inference)")
    require(args.seq_len is None or args.seq_len >= 1, "seq_len", args.seq_len, "must be >= 1")
    require(args.mfu is None or 0 < args.mfu <= 1, "mfu", args.mfu, "must be in (0, 1]: a fraction (0.4 for 40%)")
    extra, counted_as = [], "the preset, counted on meta"
    if split is not None and args.model is not None and args.dtype in COUNTED_DTYPES:  # a device's memory in --dtype
        dtype = _layout_dtype(args, split)
        extra, counted_as = [f"dtype={dtype}"], f"{counted_as} in {dtype}"
    result, source = measured_or_counted(args, args.seq_len, batch, args.inference, extra, counted_as)
    try:
        cost = PerToken.from_result(result, source)
    except ConfigError as err:  # of the preset asked for: --model, not a run the user never gave
        if args.model is None:
            raise
        raise ConfigError("model", args.model, err.problem) from None
    require(args.seq_len is None or args.seq_len == cost.seq_len, "seq_len", args.seq_len,
            f"differs from the {cost.seq_len} that {source} was measured at: measure it at {args.seq_len}")
    counted = _layout_counted(args, split, batch, shape_of(result).layers) if by_layout else None
    mfu_from, mfu_source = (counted, f"{args.model} counted as {_words(split)}") if counted else (result, source)
    hardware = _training_hardware(args, part, split, mfu_from, mfu_source, default_mfu)
    if counted is not None:
        hardware = dataclasses.replace(hardware, mfu_of_layout=True)
    return TrainingInputs(result, source, cost, hardware, split, counted)


def _not_counted(args: argparse.Namespace, split: Optional[Parallelism]) -> Optional[str]:
    """Why a preset's layout is not counted rank by rank here, in the words of the refusal that then asks for an MFU
    (what to give or change); None where it is: a layout, at a global batch (``train``'s ``--batch``), on a part with
    an interconnect in the table (docs/parallel.md)."""
    from flopsweep.core.hardware import accelerator

    part = accelerator(args.gpu) if args.gpu else None
    if split is None:
        return ("a preset counted here has none outside a layout counted rank by rank (train's --dp --tp --pp --zero "
                "with --batch, on a --gpu with an interconnect in the table)")
    if args.inference:
        return "an inference (--inference) is not counted rank by rank: only a training step's layout is"
    if not hasattr(args, "batch"):
        return f"{args.subcommand} counts no layout rank by rank (train does, with --batch)"
    if args.batch is None:
        return "its layout is counted rank by rank at a global batch: give --batch"
    if args.hardware is not None or part is None or part.interconnect is None:  # a user's file: no interconnect
        return f"--gpu {args.gpu} has no interconnect in the hardware table to predict the layout's step on"
    return None


def _layout_counted(args: argparse.Namespace, split: Parallelism, batch: int, layers: Optional[int]) -> Result:
    """``--model`` (of ``layers`` blocks, where known) at the global batch ``batch`` counted in ``split`` rank by
    rank, its step predicted on ``--gpu`` (a ``parallel.*`` job on meta): computing in ``--dtype``, with float32
    weights and optimizer state where ZeRO shards them (FSDP's mixed precision), else all in ``--dtype``."""
    from flopsweep.run.presets import measure_preset

    require(layers is None or split.pp <= layers, "pp", split.pp,  # said before the batch it also sets
            f"leaves a pipeline stage without a layer: {args.model} has {layers} layers")
    per_replica = batch // split.dp if batch % split.dp == 0 else 0
    require(per_replica and per_replica % split.m == 0, "batch", batch, f"must be a multiple of dp x micro-batches "
            f"= {split.dp * split.m} to count the layout (--micro-batches sets how many, default --pp)")
    require(args.dtype in COUNTED_DTYPES, "dtype", args.dtype, "a layout counted rank by rank "
            "computes in float32, bfloat16 or float16, and its predicted MFU is of that dtype's peak: give --mfu to "
            "project this one")
    dtype = _layout_dtype(args, split)
    extra = [f"parallel.dp={split.dp}", f"parallel.tp={split.tp}", f"parallel.pp={split.pp}",
             f"parallel.zero={split.zero}", f"parallel.micro_batch_size={per_replica // split.m}",
             f"parallel.recompute={'full' if getattr(args, 'recompute', False) else 'none'}",  # its step and memory
             f"predict.hardware={args.gpu}", f"dtype={dtype}"]
    return measure_preset(args.model, args.seq_len, batch, extra=extra)


def _layout_dtype(args: argparse.Namespace, split: Parallelism) -> str:
    """The dtype a preset is counted in for a layout (``--dtype``, one of :data:`COUNTED_DTYPES`): FSDP's mixed
    precision where ZeRO shards over replicas (float32 weights and optimizer state, computing in ``--dtype``), else
    all in ``--dtype``; the layout counted rank by rank and the per-device table's whole model alike."""
    if args.dtype != "float32" and split.zero >= 1 and split.dp > 1:
        return {"bfloat16": "mixed_bf16", "float16": "mixed_fp16"}[args.dtype]
    return args.dtype


def _words(split: Parallelism) -> str:
    batches = f"{split.m} micro-batch" + ("es" if split.m != 1 else "")
    return f"{split.name}, {batches}, on a fake process group"


class TrainingPart(NamedTuple):
    """The part a training projection runs on: ``--hardware FILE``'s, else ``--gpu``'s row of the table."""

    name: str
    peak: float                     # FLOP/s per GPU in the training dtype
    memory_bytes: Optional[float]   # per GPU, where known: a parallel layout warns above it


def _training_part(args: argparse.Namespace, mfu_later: bool = False, why: str = "") -> TrainingPart:
    """The part, its peak in the training dtype and its memory, checked before anything is counted, with the MFU
    where no run can predict one (``--model`` outside a layout counted rank by rank: ``why``) and none comes later
    (``mfu_later``: the layout's, or a default)."""
    from flopsweep.core.hardware import DTYPES, accelerator, peak_flops

    require(args.dtype in DTYPES, "dtype", args.dtype, f"must be one of {', '.join(DTYPES)}")
    require_positive(args, "peak_tflops", "gpu_memory")
    memory = args.gpu_memory * 2**30 if args.gpu_memory is not None else None
    file = hardware_file(args)
    if file is not None:  # the part is the file's: named by it, its peak unless --peak-tflops, its memory unless given
        peak = args.peak_tflops * 1e12 if args.peak_tflops is not None else file.peak(args.dtype)
        require(peak is not None, "hardware", str(args.hardware),
                f"has no {args.dtype} peak: give it, or --peak-tflops")
        part = TrainingPart(file.name, peak, memory if memory is not None else file.memory_bytes)
    else:
        peak = peak_flops(args.gpu, args.dtype, args.peak_tflops)
        require(peak is not None or accelerator(args.gpu) is not None, "gpu", args.gpu,
                unknown_part(args.gpu) + ": give a part of the table, or --hardware FILE, or --peak-tflops")
        require(peak is not None, "gpu", args.gpu, f"has no {args.dtype} peak in the table: give --peak-tflops")
        row = accelerator(args.gpu)  # its memory, where --gpu-memory does not say: a layout over it is warned of
        part = TrainingPart(args.gpu, peak, memory if memory is not None or row is None else row.memory_bytes)
    require(args.mfu is None or args.mfu_from is None, "mfu", args.mfu, "give --mfu or --mfu-from, not both")
    require(args.model is None or mfu_later or args.mfu is not None or args.mfu_from is not None, "mfu", None,
            f"{NO_MFU}; {why}")
    return part


def _training_hardware(args: argparse.Namespace, part: TrainingPart, split: Optional[Parallelism], result: Result,
                       source: str, default_mfu: Optional[float] = None) -> Hardware:
    """The GPUs a training projection runs on (``split``: the parallel layout, or None)."""
    from flopsweep.projection.training import Hardware

    mfu, mfu_source = _mfu(args, part.name, result, source, default_mfu)
    require(args.gpus is None or args.gpus >= 1, "gpus", args.gpus, "must be >= 1")
    gpus = args.gpus or (split.devices if split else 1)
    return Hardware(part.name, gpus, part.peak, mfu, args.price, args.watts, mfu_source, part.memory_bytes)


def _mfu(args: argparse.Namespace, gpu: str, result: Result, source: str,
         default_mfu: Optional[float] = None) -> tuple[float, str]:
    """MFU and what it is on the part ``gpu``: ``--mfu``; else measured in ``--mfu-from``; else predicted in the run
    projected; else ``default_mfu``, where not None."""
    from flopsweep.core.metrics import MFU, MFU_PREDICTED

    if args.mfu is not None:
        return args.mfu, "assumed"
    if args.mfu_from is not None:
        measured, named = load_run(args.mfu_from, args)
        if measured.metrics.get(MFU) is None and measured.metrics.get(MFU_PREDICTED) is not None:
            part = predicted_for(measured)  # a layout's job, a meta job's with predict.hardware: for its part
            require(part is None or same_part(part, gpu), "mfu-from", args.mfu_from,
                    f"predicts its MFU for {part}, not for --gpu {gpu}: give --gpu {part}, or --mfu")
            return measured.metrics[MFU_PREDICTED], "predicted" + (f" for {part}" if part else "") + f" in {named}"
        device = measured.device_name or ""
        require(measured.metrics.get(MFU) is not None, "mfu-from", args.mfu_from,
                "has no MFU, measured or predicted (time it on the GPU, or count it with predict.hardware=<part>)")
        require(same_part(device, gpu), "mfu-from", args.mfu_from, f"ran on {device!r}, not on --gpu {gpu}")
        return measured.metrics[MFU], f"measured in {named}"
    predicted = result.metrics.get(MFU_PREDICTED)
    if predicted is None and default_mfu is not None:
        return default_mfu, f"a default: no --mfu, and none predicted in {source}"
    require(predicted is not None, "mfu", None, f"{NO_MFU}; {source} has none")
    part = predicted_for(result)
    require(part is None or same_part(part, gpu), "mfu", None, f"{source}'s MFU was predicted for {part}, "
            f"not for --gpu {gpu}: give --gpu {part}, or --mfu")
    return predicted, "predicted" + (f" for {part}" if part else "") + f" from {source}"


def predicted_for(result: Result) -> Optional[str]:
    """The part a run's MFU was predicted for: what the prediction records (``info.prediction.part``), else
    ``predict.hardware`` where it names a part of the table, else the device that timed the job."""
    from flopsweep.core.hardware import accelerator

    recorded = result.predicted_by.part if result.predicted_by else None
    if recorded:  # the device's name, as the job recorded it: the table's, as --gpu takes it
        row = accelerator(str(recorded))
        return row.name if row is not None else str(recorded)
    predict = result.config.get("predict")
    part = predict.get("hardware") if isinstance(predict, dict) else None
    if part is not None:
        return None if str(part).endswith(".json") else str(part)
    return result.device_name or None


def same_part(name: str, gpu: str) -> bool:
    """Whether ``name`` (a device's name, a part of the table) is a ``gpu`` (``--gpu``): ``gpu`` inside the name (an
    A100 40GB is an A100), or the same row of the hardware table (an alias)."""
    from flopsweep.core.hardware import accelerator

    row = accelerator(name)
    return gpu.lower() in name.lower() or (row is not None and row is accelerator(gpu))


def hardware_file(args: argparse.Namespace):
    """The part ``--hardware FILE`` describes (checked as the shipped table is), or None without one."""
    from flopsweep.core import hardware

    if args.hardware is None:
        return None
    import yaml

    try:
        fields = yaml.safe_load(args.hardware.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError("hardware", str(args.hardware), f"cannot be read: {one_line(err, 200)}") from None
    return hardware.from_fields(fields, str(args.hardware))


def serving_part(args: argparse.Namespace):
    """The part to serve on: --hardware FILE, else --gpu from the table; --peak-tflops, --bandwidth and
    --gpu-memory override its figures."""
    from flopsweep.core import hardware

    acc = hardware_file(args)
    if acc is None:
        acc = hardware.accelerator(args.gpu)
        require(acc is not None, "gpu", args.gpu, unknown_part(args.gpu) + ": give --hardware FILE, or "
                "--peak-tflops, --bandwidth and --gpu-memory with a --gpu of the table")
    require_positive(args, "peak_tflops", "bandwidth", "gpu_memory")
    if args.peak_tflops is not None:
        acc = dataclasses.replace(acc, peak_tflops={**acc.peak_tflops, args.dtype: args.peak_tflops})
    if args.bandwidth is not None:
        acc = dataclasses.replace(acc, bandwidth_gbs=args.bandwidth)
    if args.gpu_memory is not None:
        acc = dataclasses.replace(acc, memory_gb=args.gpu_memory * 2**30 / 1e9)
    given = [f"--{key.replace('_', '-')}" for key in ("peak_tflops", "bandwidth", "gpu_memory")
             if getattr(args, key) is not None]
    return dataclasses.replace(acc, source=f"{', '.join(given)} as given; else {acc.source}") if given else acc
