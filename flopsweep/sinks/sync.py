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
from flopsweep.sinks.store import FINGERPRINT_TAG, LOGGED, PID_TAG, SWEEP_TAG, UNFINISHED, Store, failed, store
from flopsweep.sinks.target import URI_ENV, Target, target_at, target_of_uri, unmasked


@dataclass
class Synced:
    """What a sync did: jobs logged now, jobs already in their store, jobs that could not be logged, the stores."""

    logged: int = 0
    present: int = 0
    failed: int = 0
    uris: set[str] = field(default_factory=set)
    down: dict[str, str] = field(default_factory=dict)  # the stores that cannot be used now, and why


def job_folders(path: Path) -> list[Path]:
    """The job folders at or under ``path`` (those with a ``result.json``), not the copies MLflow keeps."""
    found = [path] if (path / "result.json").exists() else [p.parent for p in path.rglob("result.json")]
    return sorted(p for p in found if "mlartifacts" not in p.parts)


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
    if not done.uris:
        done.uris.add(target_at(uri, store_dir or "outputs", "").uri)
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
    parents: dict[tuple[str, str, Path], str] = {}
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
                if not (result.tracking and result.tracking.logged):  # logged by an earlier sync elsewhere
                    _record_logged(result, folder, target, existing)
                continue
            runs.delete_unfinished(fp)
            parent = None
            sweep_dir = _sweep_dir(folder)
            if sweep_dir is not None:
                key = (target.uri, name, sweep_dir)
                if key not in parents:
                    parents[key] = (runs.sweep_run(sweep_dir) or runs.start_parent(sweep_dir, []))
                parent = parents[key]
            run_id = runs.log_job(result, folder, {"synced": True}, parent)
        except Exception as err:  # noqa: BLE001 - report and go on with the other jobs
            failed(target.uri, err, started)
            done.failed += 1
            on_failure(folder, one_line(err, kind=False))
            continue
        _record_logged(result, folder, target, run_id)
        done.logged += 1
    try:
        for (run_uri, name, sweep_dir), parent in parents.items():
            _close_parent(store(target_of_uri(run_uri, name)), parent, sweep_dir)
        for target in targets:
            close_dead_sweeps(target)
    except Exception as err:  # noqa: BLE001 - an untidy run, not a lost result
        on_failure(folders[0].parent, f"could not close the runs of sweeps that ended: {one_line(err)}")


def _close_parent(runs: Store, parent: str, sweep_dir: Path) -> None:
    """Close the sweep's run if this sync opened it, or if its sweep's process is gone, with the counts of what the
    folder holds."""
    run = runs.client.get_run(parent)
    pid = int(run.data.tags.get(PID_TAG) or 0)
    opened_here = pid in (0, os.getpid())  # by this sync (or an older one, which recorded no process)
    if run.info.status == "RUNNING" and (opened_here or not _alive(pid)):  # a sweep that runs closes its own
        runs.finish_parent(parent, _folder_results(sweep_dir), sweep_dir / "summary.csv",
                           status=None if opened_here else _ended_status(sweep_dir))


def close_dead_sweeps(target: Target) -> int:
    """Close each sweep run of the target's experiment left RUNNING by a process of this host that is gone (SIGKILL
    leaves no chance to close it), with the counts of what its folder holds: KILLED, or as its jobs say where the sweep
    reached its end; how many were closed."""
    import socket

    runs = store(target)
    here = socket.gethostname()
    dead = [(run.info.run_id, Path(run.data.tags[SWEEP_TAG])) for run in runs.client.search_runs(
                [runs.experiment_id()], f"tags.`flopsweep.kind` = 'sweep' and {UNFINISHED}", max_results=1000)
            if run.data.tags.get("host") == here and SWEEP_TAG in run.data.tags
            and not _alive(int(run.data.tags.get(PID_TAG) or 0))]
    for run_id, sweep_dir in dead:
        runs.finish_parent(run_id, _folder_results(sweep_dir), sweep_dir / "summary.csv",
                           status=_ended_status(sweep_dir))
    return len(dead)


def _folder_results(sweep_dir: Path) -> list[tuple[str, Result]]:
    """The readable results of a sweep folder's jobs (none if the folder is gone; unreadable ones are reported where
    their jobs are synced), for the counts its run is closed with."""
    return [(f.name, r) for f in (job_folders(sweep_dir) if sweep_dir.is_dir() else [])
            if (r := Result.read_or_none(f / "result.json")) is not None]


def _ended_status(sweep_dir: Path) -> Optional[str]:
    """How a sweep whose process is gone ended: it wrote its summary at its end (it finished, but could not close its
    run: the store was down), else it was killed (SIGKILL, a crash) before."""
    return None if (sweep_dir / "summary.csv").exists() else "KILLED"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host. This process, a pid in use by another, or none recorded (an older
    sweep's run) count as alive: closing nothing is the safe side."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _target(uri: Optional[str], store_dir: Optional[str], result: Result, experiment: str) -> Target:
    """``uri``, else ``store_dir``'s local store, else the store the job recorded that it logged or tried to log to,
    else the environment's or the local one under outputs/: a job of a server sweep goes back to that server, a local
    sweep's to its own store, wherever this runs."""
    if uri or store_dir:
        return target_at(uri, store_dir or "outputs", experiment, environment=False)
    recorded = result.tracking.uri if result.tracking else None
    if recorded:  # recorded with its password masked: the job's config or the environment gives it back
        real = unmasked(recorded, (result.config.get("tracking") or {}).get("uri"), os.environ.get(URI_ENV))
        require(real is not None, "uri", recorded, f"was recorded without its password: give --uri or {URI_ENV}")
        return target_of_uri(real, experiment)
    return target_at(None, "outputs", experiment)


def _record_logged(result: Result, folder: Path, target: Target, run_id: str) -> None:
    result.tracking = Tracking(True, masked(target.uri), target.experiment, run_id, synced=True)
    result.write(folder / "result.json")
