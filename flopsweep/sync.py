"""``flopsweep-sync PATH``: log to MLflow the jobs under PATH (a sweep or run folder, or ``outputs/``) that are
not in the store yet: those whose store was down or failing. Each job goes to the store it was meant for (the
one its ``result.json`` records) unless ``--uri`` names another. Runs are matched by fingerprint, so running it
twice logs nothing the second time; a sweep's jobs go under one parent run for that sweep folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flopsweep.result import Result


def job_folders(path: Path) -> list[Path]:
    found = [path] if (path / "result.json").exists() else [p.parent for p in path.rglob("result.json")]
    return sorted(p for p in found if "mlartifacts" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flopsweep-sync", description=__doc__)
    parser.add_argument("path", type=Path, help="a run or sweep folder, or a folder holding many")
    parser.add_argument("--uri", help="tracking URI (default: the store each job recorded, else MLFLOW_TRACKING_URI, "
                                      "else the local store under outputs/)")
    parser.add_argument("--store-dir", help="log to the local store in this folder instead of each job's own")
    parser.add_argument("--experiment", help="experiment (default: each job's tracking.experiment)")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        print(f"flopsweep-sync: error: {args.path}: not a folder", file=sys.stderr)
        return 2
    from flopsweep.tracking import FINGERPRINT_TAG, LOGGED, SWEEP_TAG, fingerprint, target_at, target_of_uri
    from flopsweep.tracking import store as store_for

    logged = present = failed = 0
    parents: dict[tuple[str, str, Path], str] = {}
    uris: set[str] = set()
    for folder in job_folders(args.path.resolve()):  # sweeps' parent runs are tagged with absolute paths
        try:
            result = Result.read(folder / "result.json")
        except (OSError, ValueError) as err:
            failed += 1
            print(f"flopsweep-sync: {folder}: not logged: {' '.join(str(err).split())[:300]}", file=sys.stderr)
            continue
        experiment = args.experiment or (result.config.get("tracking") or {}).get("experiment") or "flopsweep"
        target = _target(args, result, experiment)
        uri = target.uri
        uris.add(uri)
        store = store_for(target)
        try:
            fp = result.info.get("fingerprint") or fingerprint(result.config, result.info.get("device"))
            existing = store.find_run(FINGERPRINT_TAG, fp, where=LOGGED)
            if existing:
                present += 1
                if not (result.info.get("tracking") or {}).get("logged"):  # logged by an earlier sync elsewhere
                    _record_logged(result, folder, uri, experiment, existing)
                continue
            store.delete_unfinished(fp)
            parent = None
            sweep_dir = folder.parent if folder.name.split("_", 1)[0].isdigit() else None
            if sweep_dir is not None:
                key = (uri, experiment, sweep_dir)
                if key not in parents:
                    parents[key] = (store.find_run(SWEEP_TAG, str(sweep_dir))
                                    or store.find_run(SWEEP_TAG, _relative(sweep_dir))  # as sweeps tagged it before
                                    or store.start_parent(sweep_dir, []))
                parent = parents[key]
            run_id = store.log_job(result, folder, {"synced": True}, parent)
        except Exception as err:  # noqa: BLE001 - report and go on with the other jobs
            failed += 1
            print(f"flopsweep-sync: {folder}: not logged: {' '.join(str(err).split())[:300]}", file=sys.stderr)
            continue
        _record_logged(result, folder, uri, experiment, run_id)
        logged += 1
    for (uri, experiment, sweep_dir), parent in parents.items():
        store = store_for(target_of_uri(uri, experiment))
        if store.client.get_run(parent).info.status == "RUNNING":
            results = [(f.name, r) for f in job_folders(sweep_dir)  # unreadable ones are reported above
                       if (r := Result.read_or_none(f / "result.json")) is not None]
            store.finish_parent(parent, results, sweep_dir / "summary.csv")
    where = ", ".join(sorted(uris)) or target_at(args.uri, args.store_dir or "outputs", "").uri
    print(f"flopsweep-sync: {logged} logged, {present} already in the store, {failed} failed  ({where})")
    return 1 if failed else 0


def _target(args: argparse.Namespace, result: Result, experiment: str):
    """``--uri``, else ``--store-dir``'s local store, else the store the job recorded that it logged or tried to log
    to, else the environment's or the local one under outputs/: a job of a server sweep goes back to that server,
    a local sweep's to its own store, wherever this runs."""
    from flopsweep.tracking import target_at, target_of_uri

    if args.uri or args.store_dir:
        return target_at(args.uri, args.store_dir or "outputs", experiment, environment=False)
    recorded = (result.info.get("tracking") or {}).get("uri")
    if recorded:
        return target_of_uri(recorded, experiment)
    return target_at(None, "outputs", experiment)


def _record_logged(result: Result, folder: Path, uri: str, experiment: str, run_id: str) -> None:
    result.info["tracking"] = {"logged": True, "uri": uri, "experiment": experiment, "run_id": run_id, "synced": True}
    result.write(folder / "result.json")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def entry() -> None:
    from flopsweep.console import exit_command

    exit_command(main())


if __name__ == "__main__":
    entry()
