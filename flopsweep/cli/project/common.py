"""What every ``flopsweep-project`` subcommand does alike: read a measured run (its folder or MLflow run id), count a
preset in its place, write the JSON, and log the projection to MLflow, saying where in one line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from flopsweep.cli.project.arguments import EXPERIMENT
from flopsweep.core.console import say, warning
from flopsweep.core.errors import ConfigError, require
from flopsweep.core.result import Result


def load_run(ref: str, args: argparse.Namespace) -> tuple[Result, str]:
    """A measured job's result from its folder or its MLflow run id in the store ``--uri``/``--store-dir`` name (a
    skipped job's folder followed to the run that measured it), and what the projection calls it."""
    from flopsweep.sinks.reader import load_measured
    from flopsweep.sinks.target import target_at

    result, followed = load_measured(ref, target_at(args.uri, args.store_dir, EXPERIMENT).uri)
    return result, ref if followed is None else f"{ref} (skipped: measured by run {followed})"


def check_source(args: argparse.Namespace) -> None:
    """What a subcommand projects, first of all its flags: a measured run or ``--model``, and the preset's name (a
    mistyped one was said only once the plan's flags were right)."""
    require((args.run is None) != (args.model is None), "RUN", None,
            f"give a measured run or --model, not both (--model={args.model!r})" if args.run else
            "give a measured run (its job folder or MLflow run id) or --model PRESET")
    if args.model is not None:
        from flopsweep.run.presets import check_preset

        check_preset(args.model)


def measured_or_counted(args: argparse.Namespace, seq_len: Optional[int], batch: int = 1, inference: bool = False,
                        extra: Sequence[str] = (), counted: str = "the preset, counted on meta") -> tuple[Result, str]:
    """The result to project and where it came from (:func:`check_source` has checked which): ``args.run`` read
    back, or the preset ``args.model`` counted on meta (``counted`` says so) at ``batch`` and ``seq_len`` (None: the
    preset's), a forward only with ``inference``, ``extra`` overrides (a generation)."""
    if args.run is not None:
        return load_run(args.run, args)
    from flopsweep.run.presets import measure_preset

    say(f"counting {args.model} on meta (some seconds)...")  # a 70B preset's count is silent for some 10 s else
    return measure_preset(args.model, seq_len, batch, inference, extra), counted


def write_json(path: Optional[Path], payload: Any) -> None:
    """``payload`` as JSON at ``path`` (``--json``; nothing when None)."""
    if path is None:
        return
    try:
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    except OSError as err:
        raise ConfigError("json", str(path), f"cannot be written: {err.strerror}") from None


def log_projection(args: argparse.Namespace, record: dict, result: Result) -> None:
    """Log a projection's record to ``--experiment`` (unless ``--no-log``), tagged with the run it came from, and say
    where, or why not, in one line."""
    if args.no_log:
        return
    from flopsweep.sinks import projections
    from flopsweep.sinks.target import target_at

    target = target_at(args.uri, args.store_dir, args.experiment)
    logged = projections.log_projection(target, record, _measured_run_id(result, args.run))
    if logged.startswith("run "):
        print(f"\nMLflow: {logged}")
    else:
        warning(logged, "flopsweep-project")


def _measured_run_id(result: Result, ref: Optional[str]) -> Optional[str]:
    run_id = result.tracking.run_id if result.tracking else None
    return run_id or (ref if ref and not Path(ref).exists() else None)


def layout_line(counted: Result) -> str:
    """A layout counted rank by rank, in words: its predicted step, MFU, memory a GPU and bottleneck."""
    from flopsweep.core import metrics as M
    from flopsweep.core.text import format_metric

    m = counted.metrics
    figures = ", ".join(f"{what} {format_metric(key, m.get(key))}" for what, key in (
        ("step", M.TIME_STEP_PREDICTED), ("MFU", M.MFU_PREDICTED), ("memory a GPU", M.PARALLEL_MEMORY_PER_GPU)))
    return f"\nlayout counted rank by rank (docs/parallel.md): {figures}; {counted.bottleneck or '-'}"
