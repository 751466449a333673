"""Log to MLflow the job folders that are not in their store yet (their store was down or failing), each to the
store its ``result.json`` records unless another is named; runs are matched by fingerprint, so a second sync logs
nothing, and a sweep's jobs go under one parent run for that sweep folder."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from flopsweep.core.errors import ConfigError, masked, one_line, require
from flopsweep.core.files import locked
from flopsweep.core.result import Result, Tracking
from flopsweep.sinks.health import StoreUnusable
from flopsweep.sinks.identity import fingerprint_of
from flopsweep.sinks.record import record
from flopsweep.sinks.store import FINGERPRINT_TAG, LOGGED, failed, store
from flopsweep.sinks.sweep_run import SweepRun, job_folders
from flopsweep.sinks.target import URI_ENV, Target, target_at, target_of_uri, unmasked


@dataclass
class Synced:
    """What a sync did: jobs logged now, jobs already in their store, jobs that could not be logged, the stores."""

    logged: int = 0
    present: int = 0
    failed: int = 0
    uris: set[str] = field(default_factory=set)
    down: dict[str, str] = field(default_factory=dict)  # the stores that cannot be used now, and why
    closed: int = 0     # runs of sweeps whose process is gone (SIGKILL), left RUNNING, closed with what they hold


def sync(path: Path, uri: Optional[str] = None, store_dir: Optional[str] = None, experiment: Optional[str] = None,
         on_failure: Callable[[Path, str], None] = lambda folder, why: None) -> Synced:
    """Log every job under ``path`` that its store lacks: to ``uri``, else ``store_dir``'s local store, else the store
    the job recorded; into ``experiment``, else the job's own. ``on_failure`` hears of each job not logged, and why.
    Each sweep folder (or single run's folder) is synced under a lock of its own: two syncs started at once log each
    job once, under one parent run."""
    done = Synced()
    for group, folders in _by_sweep(job_folders(path.resolve())).items():  # parents are tagged with absolute paths
        with _folder_lock(group):
            _sync_group(folders, uri, store_dir, experiment, on_failure, done)
    if not done.uris:  # no job recorded a result: a sweep cut before any did may have left its run open
        target = target_at(uri, store_dir, "")
        done.uris.add(target.uri)
        if target.uri.startswith("sqlite:///") and not Path(target.uri[len("sqlite:///"):]).exists():
            return done  # no store to look in: none is made
        try:
            done.closed += SweepRun.close_dead_under(target, path.resolve())
        except Exception as err:  # noqa: BLE001 - an untidy run, not a lost result
            on_failure(path, f"could not close the runs of sweeps that ended: {one_line(err)}")
    return done


def _by_sweep(folders: list[Path]) -> dict[Path, list[Path]]:
    """Job folders grouped by their sweep folder (a single run's folder is a group of its own)."""
    groups: dict[Path, list[Path]] = {}
    for folder in folders:
        groups.setdefault(_sweep_dir(folder) or folder, []).append(folder)
    return groups


def _sweep_dir(folder: Path) -> Optional[Path]:
    return folder.parent if folder.name.split("_", 1)[0].isdigit() else None


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``.flopsweep-sync.lock`` in ``folder``, held while it is synced; none where the folder
    cannot be written (read-only: its jobs cannot record that they were logged either)."""
    lock = folder / ".flopsweep-sync.lock"
    if not os.access(folder, os.W_OK):
        yield
        return
    with locked(lock):
        yield


def _sync_group(folders: list[Path], uri: Optional[str], store_dir: Optional[str], experiment: Optional[str],
                on_failure: Callable[[Path, str], None], done: Synced) -> None:
    parents: dict[tuple[str, str, Path], SweepRun] = {}
    targets: set[Target] = set()
    for folder in folders:
        try:
            result = Result.read_measured(folder / "result.json")
        except (OSError, ValueError) as err:
            done.failed += 1
            on_failure(folder, one_line(err, kind=False))
            continue
        name = experiment or (result.config.get("tracking") or {}).get("experiment") or "flopsweep"
        try:
            target = _target(uri, store_dir, result, name)
        except ConfigError as err:
            done.failed += 1
            on_failure(folder, str(err))
            continue
        done.uris.add(target.uri)
        # a job that names a store of its own keeps it where --uri or --store-dir sent it elsewhere: a copy there, and
        # a later sync without them still logs it to its own (it named the other store for good, a server never got it)
        own = bool(uri or store_dir) and result.tracking is not None and result.tracking.uri is not None and \
            result.tracking.uri != masked(target.uri)  # its own store, given: noted as logged there
        try:
            runs = store(target)
        except StoreUnusable as err:  # said once per store; its jobs wait for the next sync
            done.failed += 1
            if target.uri not in done.down:
                done.down[target.uri] = str(err)
                on_failure(folder, str(err))
            continue
        targets.add(target)
        started = time.monotonic()
        try:
            fp = fingerprint_of(result)
            existing = runs.find_run(FINGERPRINT_TAG, fp, where=LOGGED)
            if existing:
                done.present += 1
                if not (result.tracking and result.tracking.logged) and not own:  # logged by an earlier sync
                    _record_logged(result, folder, target, existing)
                continue
            runs.delete_unfinished(fp)
            parent = None
            sweep_dir = _sweep_dir(folder)
            if sweep_dir is not None:
                key = (target.uri, name, sweep_dir)
                if key not in parents:
                    parents[key] = SweepRun.of_folder(runs, sweep_dir)
                parent = parents[key].run_id
        except Exception as err:  # noqa: BLE001 - report and go on with the other jobs
            done.failed += 1
            on_failure(folder, failed(target.uri, err, started))
            continue
        try:
            logged = record(result, folder, target, {"synced": True}, parent, folder_written=True, noted=not own)
        except OSError as err:  # the next sync finds its run, and says so in its result.json
            done.logged += 1
            on_failure(folder, f"logged, but its result.json cannot say so: {one_line(err)}")
            continue
        if not logged.logged:
            done.failed += 1
            on_failure(folder, logged.error or "not logged")
            continue
        done.logged += 1
    try:
        for parent in parents.values():
            done.closed += parent.close_if_done()
        for target in targets:
            done.closed += SweepRun.close_dead(store(target))
    except Exception as err:  # noqa: BLE001 - an untidy run, not a lost result
        on_failure(folders[0].parent, f"could not close the runs of sweeps that ended: {one_line(err)}")


def _target(uri: Optional[str], store_dir: Optional[str], result: Result, experiment: str) -> Target:
    """``uri``, else ``store_dir``'s local store, else the store the job recorded that it logged or tried to log to,
    else the environment's or the local one under outputs/: a job of a server sweep goes back to that server, a local
    sweep's to its own store, wherever this runs."""
    if uri or store_dir:
        return target_at(uri, store_dir, experiment, environment=False)
    recorded = result.tracking.uri if result.tracking else None
    if recorded:  # recorded with its password masked: the job's config or the environment gives it back
        real = unmasked(recorded, (result.config.get("tracking") or {}).get("uri"), os.environ.get(URI_ENV))
        require(real is not None, "uri", recorded, f"was recorded without its password: give --uri or {URI_ENV}")
        return target_of_uri(real, experiment)
    return target_at(None, None, experiment)


def _record_logged(result: Result, folder: Path, target: Target, run_id: str) -> None:
    """A job found in its store (logged by an earlier sync elsewhere): its ``result.json`` says where."""
    result.tracking = Tracking(True, masked(target.uri), target.experiment, run_id, synced=True)
    result.write(folder / "result.json")
