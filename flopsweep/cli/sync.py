"""``flopsweep-sync PATH``: log to MLflow the jobs under PATH (a sweep or run folder, or ``outputs/``) that are
not in the store yet: those whose store was down or failing. Each job goes to the store it was meant for (the
one its ``result.json`` records) unless ``--uri`` names another. Runs are matched by fingerprint, so running it
twice logs nothing the second time; a sweep's jobs go under one parent run for that sweep folder."""

from __future__ import annotations

import sys
from pathlib import Path

from flopsweep.cli.parser import OneLineParser
from flopsweep.core.console import error, run_command
from flopsweep.core.text import counted, plain


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="flopsweep-sync", description=plain(__doc__))
    parser.add_argument("path", type=Path, help="a run or sweep folder, or a folder holding many")
    parser.add_argument("--uri", help="tracking URI (default: the store each job recorded, else MLFLOW_TRACKING_URI, "
                                      "else the local store under outputs/)")
    parser.add_argument("--store-dir", help="log to the local store in this folder instead of each job's own")
    parser.add_argument("--experiment", help="experiment (default: each job's tracking.experiment)")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        error(f"{args.path}: not a folder", "flopsweep-sync")
        return 2
    from flopsweep.core.errors import ConfigError, masked
    from flopsweep.sinks.sync import sync
    from flopsweep.sinks.target import check_uri

    def failed(folder: Path, why: str) -> None:
        print(f"flopsweep-sync: {folder}: not logged: {why}", file=sys.stderr)

    try:
        if args.uri:  # one that can never work (a path for a URI) is said once, not for each job
            check_uri(args.uri, "uri")
        done = sync(args.path, args.uri, args.store_dir, args.experiment, on_failure=failed)
    except ConfigError as err:
        error(str(err), "flopsweep-sync")
        return 2
    if not (done.logged or done.present or done.failed):  # it said 0 logged, 0 already in the store, 0 failed
        print(f"flopsweep-sync: no job folder (one with result.json) in {args.path}: nothing to log")
        return 0
    closed = f"; {counted(done.closed, 'run')} of a sweep whose process is gone closed, with what its folder holds" \
        if done.closed else ""  # a SIGKILLed sweep's, left RUNNING
    print(f"flopsweep-sync: {done.logged} logged, {done.present} already in the store, {done.failed} failed{closed}  "
          f"({', '.join(sorted(masked(u) for u in done.uris))})")
    return 1 if done.failed else 0


def entry() -> None:
    run_command(main)


if __name__ == "__main__":
    entry()
