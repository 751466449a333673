"""A sweep's MLflow run, its jobs' parent, through its life: opened by the sweep (or by a sync, for a sweep whose run
could not be opened), finished with its jobs' counts, summary and view, abandoned (killed, out of disk) or discarded
(refused before any job, with its folder), its runs of jobs cut off while logging forgotten, and closed by a later
sweep or sync where the process that opened it is gone. One class for the sweep callback, the sweeper and
flopsweep-sync.

A sweep's process is known gone on its own host by its pid; on another (a login node's sync of a sweep that ran on a
compute node, its folder shared) by its heartbeat: a running sweep touches ``.flopsweep-alive`` in its folder every
:data:`HEARTBEAT_S` (:class:`Heartbeat`), so one whose file is older than :data:`STALE_S` has stopped. Where the file
cannot be seen (a folder not shared, an older sweep), the run is taken as alive: closing nothing is the safe side."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from flopsweep.core.result import RUN_ID, Result
from flopsweep.sinks.store import PID_TAG, SWEEP_TAG, UNFINISHED, Store, store
from flopsweep.sinks.target import Target


def job_folders(path: Path) -> list[Path]:
    """The job folders at or under ``path`` (those with a ``result.json``), not the copies MLflow keeps: under a
    local store's ``mlartifacts``, or any artifact store's ``<run id>/artifacts`` (flopsweep-server's
    ``tracking-server/artifacts``, where a sync rewrote the copies and logged them again as runs)."""
    found = [path] if (path / "result.json").exists() else [p.parent for p in path.rglob("result.json")]
    return sorted(p for p in found if not _artifact_copy(p))


def _artifact_copy(folder: Path) -> bool:
    parts = folder.resolve().parts
    return "mlartifacts" in parts or any(name == "artifacts" and RUN_ID.fullmatch(run)
                                         for run, name in zip(parts, parts[1:]))


def folder_results(sweep_dir: Path) -> list[tuple[str, Result]]:
    """The readable results of a sweep folder's jobs (none if the folder is gone; unreadable ones are reported where
    their jobs are synced), for the counts its run is closed with."""
    return [(f.name, r) for f in (job_folders(sweep_dir) if sweep_dir.is_dir() else [])
            if (r := Result.read_or_none(f / "result.json")) is not None]


@dataclass(frozen=True)
class SweepRun:
    """The run ``run_id`` in ``store`` of the sweep whose folder is ``sweep_dir``."""

    store: Store
    run_id: str
    sweep_dir: Path

    @classmethod
    def open(cls, store: Store, sweep_dir: Path, overrides: list[str]) -> "SweepRun":
        """A new run for the sweep (tagged with its folder and this process)."""
        return cls(store, store.start_parent(sweep_dir, overrides), sweep_dir)

    @classmethod
    def of_folder(cls, store: Store, sweep_dir: Path) -> "SweepRun":
        """The sweep's run, or a new one where its sweep could open none (its store was down)."""
        return cls(store, store.sweep_run(sweep_dir) or store.start_parent(sweep_dir, []), sweep_dir)

    def finish(self, results: Optional[list[tuple[str, Result]]] = None, failed: bool = False,
               status: Optional[str] = None) -> Optional[str]:
        """End the run with its jobs' counts, summary and view (``results``: read from the folder where not given),
        as :meth:`Store.finish_parent` says; the view's key, None where no job left a result."""
        results = folder_results(self.sweep_dir) if results is None else results
        return self.store.finish_parent(self.run_id, results, self.sweep_dir / "summary.csv", failed, status)

    def abandon(self, status: str, results: list[tuple[str, Result]]) -> None:
        """End the run of a sweep that stopped before its end (``status``: KILLED or FAILED), with what finished, or
        with nothing where nothing did."""
        if results:
            self.finish(results, status=status)
        else:
            self.store.end_parent(self.run_id, status)

    def discard(self) -> None:
        """End and delete the run of a sweep refused before any job started: it measured nothing."""
        self.store.end_parent(self.run_id, "FAILED")
        self.store.delete_run(self.run_id)

    def forget_unrecorded(self) -> int:
        """Delete the sweep's job runs that no job folder's ``result.json`` names
        (:meth:`Store.delete_children_except`). Only where none of its jobs runs: those are the runs of jobs cut
        while logging (a killed worker, a terminal's Ctrl-C), or after logging and before recording their run id;
        each such job logs itself again whole when it runs again."""
        results = (Result.read_or_none(path) for path in self.sweep_dir.glob("*/result.json"))  # none: runs again
        keep = {r.tracking.run_id for r in results if r is not None and r.tracking is not None} - {None}
        return self.store.delete_children_except(self.run_id, keep)

    def close_if_done(self) -> bool:
        """Close the run if this process opened it (a sync), or if the sweep's process is gone, with the counts of
        what the folder holds; a sweep that runs closes its own. Whether it closed a gone sweep's run."""
        run = self.store.client.get_run(self.run_id)
        pid = int(run.data.tags.get(PID_TAG) or 0)
        opened_here = pid in (0, os.getpid())  # by this sync (or an older one, which recorded no process)
        if run.info.status == "RUNNING" and (opened_here or not _alive(pid)):
            self.finish(status=None if opened_here else _ended_status(self.sweep_dir))
            return not opened_here
        return False

    @classmethod
    def close_dead(cls, store: Store) -> int:
        """Close each sweep run of the store's experiment left RUNNING by a process of this host that is gone
        (SIGKILL leaves no chance to close it), with the counts of what its folder holds: KILLED, or as its jobs say
        where the sweep reached its end; how many were closed."""
        dead = [cls(store, run.info.run_id, Path(run.data.tags[SWEEP_TAG]))
                for run in _dead(store.client.search_runs([store.experiment_id()], DEAD, max_results=1000))]
        for run in dead:
            run.finish(status=_ended_status(run.sweep_dir))
        return len(dead)

    @classmethod
    def close_dead_under(cls, target: Target, folder: Path) -> int:
        """As :meth:`close_dead`, in any experiment of ``target``'s store, for the sweeps whose folder is ``folder`` or
        lies under it: a sweep whose disk filled before any job recorded a result has no job folder to name its
        experiment. How many were closed."""
        client = store(target).client
        experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
        runs = _dead(client.search_runs(experiments, DEAD, max_results=1000)) if experiments else []
        closed = 0
        for run in runs:
            sweep_dir = Path(run.data.tags[SWEEP_TAG])
            if sweep_dir == folder or folder in sweep_dir.parents:
                owner = store(replace(target, experiment=client.get_experiment(run.info.experiment_id).name))
                cls(owner, run.info.run_id, sweep_dir).finish(status=_ended_status(sweep_dir))
                closed += 1
        return closed


DEAD = f"tags.`flopsweep.kind` = 'sweep' and {UNFINISHED}"  # the runs :func:`_dead` looks among
ALIVE = ".flopsweep-alive"  # in a sweep's folder: touched while the sweep runs
HEARTBEAT_S = 30.0          # how often
STALE_S = 300.0             # a heartbeat older than this (ten beats: clocks of shared folders drift) has stopped


def _dead(runs: list) -> list:
    """The sweep runs among ``runs`` whose process is gone: on this host, by its pid; on another, by its heartbeat."""
    here = socket.gethostname()
    return [run for run in runs if SWEEP_TAG in run.data.tags and (
        not _alive(int(run.data.tags.get(PID_TAG) or 0)) if run.data.tags.get("host") == here
        else _stopped(Path(run.data.tags[SWEEP_TAG])))]


def _stopped(sweep_dir: Path) -> bool:
    """Whether the heartbeat in ``sweep_dir`` stopped :data:`STALE_S` ago; False where it cannot be seen."""
    try:
        return time.time() - (sweep_dir / ALIVE).stat().st_mtime > STALE_S
    except OSError:
        return False


class Heartbeat:
    """While a sweep runs, ``.flopsweep-alive`` in its folder touched every :data:`HEARTBEAT_S` from a thread of its
    own (a folder that cannot be written is left alone: the disk's fault is said elsewhere)."""

    def __init__(self, sweep_dir: Path):
        self.path, self._stop = sweep_dir / ALIVE, threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="flopsweep-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._beat()

    def _beat(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # Hydra makes it with its first job
            self.path.touch()
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a beat under way would make the folder again (a refused sweep's, removed)


def remove_unstarted(sweep_dir: Path) -> None:
    """Remove the folder of a sweep refused before any job started, where it holds only what Hydra and the sweep
    wrote before (``multirun.yaml``, the heartbeat), and its day's folder if that is left empty."""
    import shutil

    if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml", ALIVE}:
        shutil.rmtree(sweep_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            sweep_dir.parent.rmdir()


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
