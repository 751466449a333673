"""The flags the subcommands of ``flopsweep-project`` share, each group added by one function, and what they
become: an amount, a parallel layout."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional

from flopsweep.core.errors import require
from flopsweep.core.hardware import DTYPE_SPELLINGS
from flopsweep.core.hardware import names as hardware_names
from flopsweep.core.text import plain

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}
PARALLEL = ("dp", "tp", "pp", "zero", "micro_batches")
EXPERIMENT = "projections"  # the default experiment of a projection's own run


def amount(text: str) -> float:
    """``2T`` -> 2e12, ``1.5e9`` -> 1.5e9, ``300B`` -> 3e11 (also ``$1M``, ``1,000``)."""
    raw = text.strip().lstrip("$").replace(",", "").replace("_", "")
    scale = SUFFIXES.get(raw[-1:].upper(), 1.0) if raw[-1:].isalpha() else 1.0
    try:
        value = float(raw[:-1] if scale != 1.0 else raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount (examples: 2e12, 300B, 1.5T)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: an amount is 0 or more (examples: 2e12, 300B, 1.5T)")
    return value


def add_subcommand(subparsers, name: str, doc: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand's parser: ``doc`` (its module's docstring, examples kept as written) for ``--help``, ``summary``
    for the command's list."""
    return subparsers.add_parser(name, description=plain(doc), help=summary)  # the command's OneLineParser


def add_source(p: argparse.ArgumentParser, measured: str) -> None:
    """The model: a measured run (``measured`` says which kind) or a preset counted on meta."""
    p.add_argument("run", nargs="?", help=f"{measured}: its job folder (with result.json) or its MLflow run id")
    p.add_argument("--model", help="a model preset to count on meta here instead of a measured run")


def add_training_source(p: argparse.ArgumentParser) -> None:
    """A training projection's model (``train``, ``budget``): a measured job, or ``--model`` counted at a sequence
    length, a forward pass only with ``--inference``."""
    add_source(p, "a measured job")
    p.add_argument("--seq-len", type=int, help="with --model: the sequence length (default: the preset's)")
    p.add_argument("--inference", action="store_true",
                   help="with --model: count a forward pass only (workload=inference) and project the tokens processed;"
                        " a measured inference run is projected so by itself")


def dtype_name(text: str) -> str:
    """A flag's number format by its usual spellings (``bf16``, ``float8``, ``e4m3``, any case): the table's name; an
    unknown one as given, for the flag's own check to refuse with the names it takes."""
    key = text.strip().lower()
    return DTYPE_SPELLINGS.get(key, key)


def add_hardware(p: argparse.ArgumentParser, dtype_help: str, gpus_help: str, memory_help: str):
    """The part, how many, their price and power; returns the group, for a subcommand's own flags of the part."""
    hw = p.add_argument_group("hardware")
    hw.add_argument("--gpu", default="H100", help=f"a part of the hardware table ({', '.join(hardware_names())}; "
                    "docs/serving.md gives their figures and sources); default H100")
    hw.add_argument("--hardware", type=Path, help="a YAML file describing your own part instead: name, peak_tflops "
                    "(by dtype), memory_gb, bandwidth_gbs")
    hw.add_argument("--dtype", default="bfloat16", type=dtype_name, help=dtype_help)
    hw.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s per GPU (overrides the table)")
    hw.add_argument("--gpus", type=int, help=gpus_help)
    hw.add_argument("--gpu-memory", type=float, help=memory_help)
    hw.add_argument("--price", type=amount, help="dollars per GPU-hour")
    hw.add_argument("--watts", type=amount, help="power per GPU in watts, for energy")
    return hw


def add_training_part(p: argparse.ArgumentParser) -> None:
    """The hardware, MFU and parallel layout of a training projection (``train``, ``budget``)."""
    hw = add_hardware(p, "training compute dtype for the peak (default bfloat16)",
                      "number of GPUs (default dp x tp x pp, else 1)",
                      "GiB per GPU: a parallel layout warns when a device needs more")
    hw.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation, e.g. 0.4 (default: the run's "
                    "predicted MFU, speed/mfu_predicted, where it has one)")
    hw.add_argument("--mfu-from", help="take MFU from a measured GPU run (folder or run id) on this GPU model")
    par = p.add_argument_group("parallelism (docs/projection.md, 'Parallelism and ZeRO')")
    par.add_argument("--dp", type=int, help="data-parallel replicas: each runs batch / dp of the measured batch")
    par.add_argument("--tp", type=int, help="tensor-parallel size")
    par.add_argument("--pp", type=int, help="pipeline-parallel stages")
    par.add_argument("--zero", type=int, help="ZeRO stage 0-3: shard optimizer state / + gradients / + parameters")
    par.add_argument("--micro-batches", type=int, help="micro-batches per replica, 1F1B schedule (default pp)")


def add_output(p: argparse.ArgumentParser) -> None:
    """``--json``, where runs are read from, and where the projection's own run goes."""
    out = p.add_argument_group("output and tracking")
    out.add_argument("--json", type=Path, help="also write the projection as JSON here")
    out.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else the local store)")
    out.add_argument("--store-dir", help="the local store's folder (default: outputs, unless "
                     "MLFLOW_TRACKING_URI is set)")
    out.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default: {EXPERIMENT})")
    out.add_argument("--no-log", action="store_true", help="do not log the projection to MLflow")


def require_finite(args: argparse.Namespace, *keys: str) -> None:
    for key in keys:
        value = getattr(args, key)
        require(value is None or math.isfinite(value), key.replace("_", "-"), value, "must be a finite number")


def require_whole(args: argparse.Namespace, *keys: str, at_least: Optional[int] = None) -> None:
    """Counts given as amounts (``1K``: a float): whole numbers where given (``at_least`` or more), kept as ints."""
    for key in keys:
        value = getattr(args, key)
        value = int(value) if value is not None and float(value).is_integer() else value
        require(value is None or (isinstance(value, int) and (at_least is None or value >= at_least)),
                key.replace("_", "-"), value, "must be a whole number" + (f" >= {at_least}" if at_least else ""))
        setattr(args, key, value)


def require_positive(args: argparse.Namespace, *keys: str) -> None:
    """A part's figures (``--peak-tflops``, ``--bandwidth``, ``--gpu-memory``): finite numbers > 0 where given."""
    for key in keys:
        value = getattr(args, key)
        require(value is None or (math.isfinite(value) and value > 0), key.replace("_", "-"), value,
                "must be a number > 0")


def layout(args: argparse.Namespace):
    """The parallel layout when any of --dp --tp --pp --zero --micro-batches is given, else None."""
    from flopsweep.projection.parallel import Parallelism

    given = {k: v for k in PARALLEL if (v := getattr(args, k)) is not None}
    if not given:
        return None
    split = Parallelism(**given)
    if args.gpus is not None:
        split.check_gpus(args.gpus)
    return split
