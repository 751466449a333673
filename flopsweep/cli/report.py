"""``flopsweep-report EXPERIMENT [--sweep SWEEP | --all]``: a folder with the runs of one sweep (the latest, unless
told) as CSV and Markdown and the plots that answer the usual questions, also logged to the sweep's parent run so that
they show in the MLflow UI.

Plots (each drawn when the runs have its data): FLOPs against sequence length on log-log axes with the fitted
slope per model, step time against batch size per dtype, the training memory of each run as stacked bars,
the FLOPs shares of the costliest run's modules, and MFU by dtype and device.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from flopsweep.cli.parser import OneLineParser
from flopsweep.core.console import error, run_command
from flopsweep.core.text import counted, plain
from flopsweep.core.errors import ConfigError, one_line, require
from flopsweep.sinks.health import StoreUnusable


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineParser(prog="flopsweep-report", description=plain(__doc__))
    parser.add_argument("experiment", nargs="?",
                        help="the MLflow experiment (a sweep preset's name, or tracking.experiment)")
    parser.add_argument("--profile", metavar="RUN", help="instead: the module profile of one run (its job folder "
                        "or MLflow run id), printed and written with profile.png")
    parser.add_argument("--top", type=int, default=12, help="--profile: modules in the plot (default 12)")
    which = parser.add_mutually_exclusive_group()  # its usage said [--sweep SWEEP | --all] and took both
    which.add_argument("--sweep", help="this sweep: its folder or the folder's name (2026-11-22/14-03-07); "
                       "default: the experiment's latest")
    which.add_argument("--all", action="store_true", help="every run of the experiment, all its sweeps together")
    parser.add_argument("--out", type=Path, help="where to write (default: outputs/reports/EXPERIMENT[_SWEEP])")
    parser.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else the local store)")
    parser.add_argument("--store-dir", help="the local store's folder (default: outputs, unless "
                        "MLFLOW_TRACKING_URI is set)")
    args = parser.parse_args(argv)
    if not args.experiment and not args.profile:
        parser.error("give an EXPERIMENT, or --profile RUN")
    from flopsweep.core.errors import masked
    from flopsweep.sinks.target import target_at

    try:
        target = target_at(args.uri, args.store_dir, args.experiment or "")
        require(args.top >= 1, "top", args.top, "must be >= 1")
        return _profile(args, target.uri) if args.profile else _experiment(args, target)
    except (ConfigError, StoreUnusable) as err:
        error(str(err), "flopsweep-report")
    except OSError as err:  # a folder that cannot be made or written (--out)
        error(f"{err.filename or args.out}: cannot be written ({err.strerror or err})", "flopsweep-report")
    except Exception as err:  # noqa: BLE001 - the store's own errors (MLflow's), in one line; others are bugs
        if not type(err).__module__.startswith("mlflow"):  # no mlflow import for a job folder's --profile
            raise
        error(f"the store {masked(target.uri)} cannot be read: {one_line(err, kind=False)}", "flopsweep-report")
    return 2


def _profile(args: argparse.Namespace, uri: str) -> int:
    from flopsweep.analysis.report import write_profile_report

    out = write_profile_report(args.profile, args.out, uri, args.top)
    print((out / "profile.txt").read_text(), end="")
    print(f"profile: {out}  (profile.txt, profile.csv, profile_depth.csv, profile.png)")
    return 0


def _experiment(args: argparse.Namespace, target) -> int:
    from flopsweep.analysis.report import write_report
    from flopsweep.sinks.reader import load_runs
    from flopsweep.sinks.store import log_to_sweep_run
    from flopsweep.core.errors import masked

    try:
        df = load_runs(experiment=args.experiment, sweep=args.sweep, uri=target.uri)
    except LookupError as err:
        error(str(err).removeprefix('load_runs: '), "flopsweep-report")
        return 2
    if df.empty:
        where = f" sweep {args.sweep!r} of" if args.sweep else ""
        known = sorted({_when(s) for s in load_runs(experiment=args.experiment, uri=target.uri)["sweep"].dropna()}) \
            if args.sweep else []  # the sweeps it has, as --sweep takes them: the latest five
        error(f"no runs in{where} experiment {args.experiment!r} ({masked(target.uri)})"
              + (f"; its sweeps: {', '.join(known[-5:])}" + (f" (the latest 5 of {len(known)})" if len(known) > 5
                                                               else "") if known else ""), "flopsweep-report")
        return 2
    sweeps = sorted(df["sweep"].dropna().unique(), key=_when)
    chosen = args.sweep
    if not args.sweep and not args.all and sweeps:  # one sweep at a time: runs of several sweeps make no one fit
        chosen = _when(sweeps[-1])
        df = df[df["sweep"] == sweeps[-1]]
        others = f"the latest of {len(sweeps)} sweeps" if len(sweeps) > 1 else "its only sweep"
        print(f"report of sweep {chosen}: {counted(len(df), 'run')} ({others} in {args.experiment!r}; --sweep NAME "
              "for another, --all for every run)")
    else:
        print(f"report of {counted(len(df), 'run')}" + (f" of sweep {chosen}" if chosen else
                                                         f" of {args.experiment!r}"))
    name = args.experiment + (f"_{chosen.rstrip('/').replace('/', '_')}" if chosen else "")
    out = args.out or Path(args.store_dir or "outputs") / "reports" / name
    label = f"experiment {args.experiment}" + (f", sweep {chosen}" if chosen else ", every sweep")
    drawn = write_report(df, out, f"flopsweep report: {name}", target.uri, label)
    print(f"report: {out}  ({counted(sum(v == 'drawn' for v in drawn.values()), 'plot')}; runs.csv, runs.md)")
    for plot, why in drawn.items():
        if why != "drawn":
            print(f"  {plot} not drawn: {why}")
    sweeps = df["sweep"].dropna().unique()
    if len(sweeps) == 1:  # one sweep: its parent run carries the report
        run_id = log_to_sweep_run(target, sweeps[0], out, "report")
        if run_id is not None:
            print(f"logged to the sweep's run {run_id} under artifacts/report")
    return 0


def _when(sweep: str) -> str:
    """A sweep's folder as its name sorts by time: ``2026-12-04/17-35-17`` (the date's and time's folders)."""
    return "/".join(str(sweep).rstrip("/").split("/")[-2:])


def entry() -> None:
    run_command(main)


if __name__ == "__main__":
    entry()
