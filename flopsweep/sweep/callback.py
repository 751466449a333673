"""The sweep's Hydra callback: before the jobs, it refuses a sweep that would time jobs side by side, opens the
sweep's MLflow run (so parallel workers never race to create the store: they find its id in the environment) and
starts joblib's workers; after them, it prints and writes one table of every job, read back from their
``result.json`` (a job that has none is lost), and closes the run. A sweep that stops before its end closes its run
through :func:`abandon_sweep`, or deletes it with its folder where it was refused before any job."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Optional

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flopsweep.core.console import error, say, warning
from flopsweep.core.errors import ConfigError, command, masked, one_line
from flopsweep.core.result import Result, any_failed, status_counts
from flopsweep.core.text import counted, summary_table
from flopsweep.sinks.identity import GROUP_NAMES
from flopsweep.sinks.jobdir import write_csv
from flopsweep.sinks import health
from flopsweep.sinks.store import failed, store
from flopsweep.sinks.target import environment_unread, target_of
from flopsweep.sinks.sweep_run import Heartbeat, SweepRun, remove_unstarted
from flopsweep.sinks.views import varying_params
from flopsweep.sweep import state
from flopsweep.sweep.jobdirs import job_number
from flopsweep.sweep.joblib_fast import start_workers, stop_workers
from flopsweep.sweep.plan import SweepPlan, concurrent_timing_error, empty_sweep_error, jobs_at_once
from flopsweep.sweep.slurm import slurm_refusal
from flopsweep.sweep.state import SweepContext


class SweepSummary(Callback):
    """Hydra's callback around a sweep: refuses what cannot run, opens its parent run, and ends with its table."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = state.current()
        plan = SweepPlan.of(config)
        try:
            refusal = empty_sweep_error(plan) or concurrent_timing_error(plan) or \
                slurm_refusal(config.hydra.launcher) or _tracking_error(config)
        except Exception:  # noqa: BLE001 - a job that cannot be composed: the sweeper's check names it
            refusal = None
        if refusal:  # an exception would be only a warning from Hydra's callback runner: exit, before any store
            error(refusal)
            raise SystemExit(2)
        try:
            sweep.sweep_dir = Path(config.hydra.sweep.dir)  # made now (a new folder): not for a refused sweep
        except OmegaConfBaseException as err:  # Hydra would only warn and go on
            disk = state.disk_error(err)
            if disk is None:
                raise
            raise state.Unwritable(None, disk) from None
        sweep.heartbeat = Heartbeat(Path(config.hydra.sweep.dir).resolve())  # a sync on another host tells its end
        unread = environment_unread(config.tracking)
        if unread:
            say(f"note: {unread}")
        start_workers(plan)  # they import what jobs import while this process opens the run, checks values
        health.forget()
        started = time.monotonic()
        try:
            sweep.target = target_of(config.tracking, Path.cwd())
            if sweep.target is not None:
                runs = store(sweep.target)
                sweep.parent = SweepRun.open(runs, Path(config.hydra.sweep.dir).resolve(),
                                             list(config.hydra.overrides.task)).run_id
                SweepRun.close_dead(runs)  # a sweep SIGKILLed before could not close its run
        except Exception as err:  # noqa: BLE001 - jobs still run and record that they were not logged
            said = failed(sweep.target.uri, err, started) if sweep.target is not None else one_line(err)
            warning(f"could not open the sweep's MLflow run ({said}); the jobs are measured "
                    f"{'and not logged' if _store_down(sweep) else 'and logged if they can be'}: "
                    f"`{command('flopsweep-sync')} {sweep.sweep_dir}` logs what is missing later")
        SweepContext(sweep.parent, plan.size, time.time(),  # its start after the store's one-off set-up
                     tuple(plan.varying), jobs_at_once(config.hydra.launcher, plan.size) or 1).publish()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The table of every job, printed and written to ``summary.csv``, then the sweep's run closed. Whatever
        fails here (a folder that cannot be read or written) is one line and fails the sweep's exit status; the
        run is closed all the same (Hydra would only warn of an exception, leaving the run open and the status 0)."""
        stop_workers()
        sweep = state.current()
        sweep_dir = Path(config.hydra.sweep.dir)
        results: list[tuple[str, Result]] = []
        try:
            results = _summarize(sweep_dir)
            if any(r.status == "lost" for _, r in results):  # an interrupt's or a full disk's line says how to go on
                print("lost: a job's process died before it finished; run the same command with skip_existing=true "
                      "to measure only what is missing")
            if any_failed(results):
                sweep.failed = True
        except Exception as err:  # noqa: BLE001 - said in one line; the parent run is closed below
            sweep.failed = True
            error(f"the sweep's summary: {one_line(err)}")
        if sweep.coda:  # the answer last, where the eye lands
            print(f"\n{sweep.coda}", flush=True)
            sweep.coda = None
        _say_unlogged(sweep, results, sweep_dir)
        _ended(sweep)
        if sweep.parent is not None:
            if not _store_down(sweep):  # else the next sweep or sync closes it, from this folder
                view = None
                try:
                    view = SweepRun(store(sweep.target), sweep.parent, sweep_dir).finish(results, failed=sweep.failed)
                except Exception as err:  # noqa: BLE001
                    warning(f"could not close the sweep's MLflow run: {one_line(err)}; "
                            f"`{command('flopsweep-sync')} {sweep_dir}` closes it later")
                page = None
                with contextlib.suppress(Exception):  # the id is known by now; the line comes whatever the store does
                    page = store(sweep.target).experiment_id()
                if results:  # else nothing to look at: the sweep's run says it failed
                    print(f"MLflow: {sweep.target.ui_command(page, view)}  (experiment {sweep.target.experiment!r}"
                          + (", this sweep's jobs" if view else "") + ")")
            sweep.parent = None


def _store_down(sweep: state.SweepState) -> bool:
    """The sweep's store was found unusable: its run is left to the next sweep or sync to close, from the folder."""
    return sweep.target is not None and health.down_reason(sweep.target.uri) is not None


def _say_unlogged(sweep: state.SweepState, results: list[tuple[str, Result]], sweep_dir: Path) -> None:
    """One line for the jobs that are not in their store, and how to log them: those that say why, and those measured
    and stopped before they were logged (a Ctrl-C as a worker logged: its result.json says nothing of a run)."""
    if sweep.target is None:
        return
    noted = [r.tracking for _, r in results if r.tracking is not None]
    erred = [t for t in noted if not (t.logged or t.elsewhere)]
    cut = [r for _, r in results if r.tracking is None and r.status in ("ok", "oom", "interrupted")]  # measured:
    # a job whose folder the sweep wrote (its task failed before it ran, Slurm ended it) has no run to log
    if not erred and not cut:
        return
    errors = {t.error for t in erred}
    why = [f"the store {masked(sweep.target.uri)} cannot be used, as said above" if _store_down(sweep) else
           errors.pop() if len(errors) == 1 else "see above"] if erred else []
    if cut:
        they = "it was" if len(cut) == 1 else "they were"
        why.append(f"{f'{len(cut)} ' if erred else ''}stopped before {they} logged")
    warning(f"{len(erred) + len(cut)} of {len(results)} jobs not logged to MLflow ({'; '.join(why)}); "
            f"`{command('flopsweep-sync')} {sweep_dir}` logs them" + (" once the store works" if erred else ""))


def _summarize(sweep_dir: Path, unwritten: Optional[dict[str, Result]] = None,
               write: bool = True) -> list[tuple[str, Result]]:
    """Every job of the sweep, read back from its folder (or, measured and not written, from ``unwritten``), printed
    as a table and written to ``summary.csv`` if ``write``."""
    unwritten = unwritten or {}
    folders = {p.parent for p in sweep_dir.glob("*/result.json")} | {p.parent for p in sweep_dir.glob("*/.hydra")}
    folders |= {sweep_dir / name for name in unwritten}
    results = [(folder.name, unwritten.get(folder.name) or _job_result(folder))
               for folder in sorted(folders, key=lambda p: job_number(p.name))]
    swept = [f"{key}.{GROUP_NAMES[key]}" if key in GROUP_NAMES else key for key in SweepContext.current().swept]
    if results:  # none where the launcher refused them all (a partition Slurm has not): no empty table under its error
        print()
        print(summary_table(results, tuple(swept or varying_params([r for _, r in results]))))  # the keys it varies
    counts = status_counts(results)
    total = SweepContext.current().total or 0
    unstarted = [f"{total - len(results)} not started"] if total > len(results) else []  # cut by a signal, a disk
    said = [*(f"{n} {s}" for s, n in counts.items() if n), *unstarted]
    print(f"\n{counted(max(total, len(results)), 'job')}: {', '.join(said)}  |  results: {sweep_dir}")
    if results and write:
        write_csv(sweep_dir / "summary.csv", [{"job": job, "status": r.status, "error": r.error,
                                               "model": (r.config.get("model") or {}).get("name"), **r.metrics}
                                              for job, r in results])
    return results


def _ended(sweep: state.SweepState) -> None:
    """The sweep's jobs are over: a later command in this process is in no sweep, and its heartbeat stops."""
    SweepContext.withdraw()
    if sweep.heartbeat is not None:
        sweep.heartbeat.stop()
        sweep.heartbeat = None


def abandon_sweep(why: BaseException) -> None:
    """The sweep stops before its end, for ``why`` (a swept value that cannot be composed, a signal, a full disk):
    end its workers, and mark its MLflow run KILLED (a signal) or FAILED rather than leave it RUNNING. Interrupted or
    out of disk, it first prints the summary of what its folder holds (and of a job measured but not written), and,
    unless the disk is what stopped it, writes it to ``summary.csv`` and logs it to the run. The jobs that finished
    keep their runs."""
    stop_workers()
    sweep = state.current()
    if isinstance(why, (HydraException, OmegaConfBaseException)) and sweep.sweep_dir is not None \
            and not (sweep.sweep_dir.is_dir() and any(p.is_dir() for p in sweep.sweep_dir.iterdir())):
        _discard(sweep)
        return
    status = "KILLED" if isinstance(why, KeyboardInterrupt) else "FAILED"
    results: list[tuple[str, Result]] = []
    if isinstance(why, (KeyboardInterrupt, state.Unwritable)) and sweep.sweep_dir is not None \
            and sweep.sweep_dir.is_dir():
        try:
            results = _summarize(sweep.sweep_dir, sweep.unwritten, write=not isinstance(why, state.Unwritable))
            _say_unlogged(sweep, results, sweep.sweep_dir)
        except Exception as err:  # noqa: BLE001 - said in one line; the run is closed below
            error(f"the sweep's summary: {one_line(err)}")
    _ended(sweep)
    if sweep.parent is not None:
        try:
            if not _store_down(sweep):
                run = SweepRun(store(sweep.target), sweep.parent, Path(sweep.sweep_dir or "."))
                if isinstance(why, KeyboardInterrupt) and sweep.sweep_dir is not None:  # the workers are stopped:
                    run.forget_unrecorded()  # a run no folder records was cut while logging (not so a full disk's)
                run.abandon(status, results)
        except Exception as err:  # noqa: BLE001
            later = f"; `{command('flopsweep-sync')} {sweep.sweep_dir}` closes it later" if sweep.sweep_dir else ""
            warning(f"could not close the sweep's MLflow run: {one_line(err)}{later}")
        sweep.parent = None


def _tracking_error(config: DictConfig) -> Optional[str]:
    """One line for a tracking target that can never work (``tracking.uri=127.0.0.1:5000``, no scheme): said before
    the sweep starts, not as a store that could not be opened and then again by every job."""
    try:
        target_of(config.tracking, Path.cwd())
    except ConfigError as err:
        return str(err)
    return None


def _discard(sweep: state.SweepState) -> None:
    """A sweep refused before any job started (a swept value that cannot be composed, a layout search that finds no
    layout): its run and folder go, as for a refusal before the sweep starts; the error says why."""
    _ended(sweep)
    if sweep.parent is not None and not _store_down(sweep):
        try:
            SweepRun(store(sweep.target), sweep.parent, Path(sweep.sweep_dir or ".")).discard()
        except Exception as err:  # noqa: BLE001
            warning(f"could not delete the refused sweep's MLflow run: {one_line(err)}")
    sweep.parent = None
    if sweep.sweep_dir is not None:
        remove_unstarted(sweep.sweep_dir)


def _job_result(folder: Path) -> Result:
    """The job's ``result.json``; a job that started (Hydra made its folder) and has none is lost: its process died
    (killed, out of memory) before the job finished. Rerun the sweep with ``skip_existing=true`` to measure it."""
    result = Result.read_or_none(folder / "result.json")
    if result is not None:
        return result
    try:
        config = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "config.yaml"), resolve=False)
    except Exception:  # noqa: BLE001 - the table shows the folder's name whatever is left in it
        config = {}
    return Result("lost", "no result.json: the job's process died before it finished", config)


