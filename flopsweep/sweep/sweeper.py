"""flopsweep's Hydra sweeper (``conf/hydra/sweeper/flopsweep.yaml``, the default): Hydra's basic sweeper, the same
cartesian product and the presets' ``hydra.sweeper.params``, made for parallel launchers. It

- composes one job per swept value before launching, not every job: Hydra's check composes each job's config in
  the parent process, about 0.1 s each, a serial minute before a 500-job sweep starts; every value is still
  checked, and a job that cannot be composed fails before any is launched;
- survives a worker process that dies (SIGKILL, a segfault, the kernel's OOM killer). joblib's process pool then
  breaks: every job running in it is killed and the queued ones are cancelled. The jobs that were running run
  again, one at a time: a job whose worker dies again when it runs alone is lost, the others finish; the jobs
  that had not started are launched again. The MLflow runs that no job's folder names are deleted (left RUNNING
  by the kill, or logged whole by a job killed before it recorded its run): every job is logged once;
- records a job whose combination of values cannot be composed (each value can: the check above passed) as
  ``failed`` with Hydra's reason, and runs the others;
- turns any other launcher failure into one line: the sweep's summary then lists what finished and what was lost;
- runs ``hydra/launcher=joblib``'s jobs through :mod:`flopsweep.sweep.joblib_fast`.
"""

from __future__ import annotations

import re
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from flopsweep.core.console import error, warning
from flopsweep.core.errors import one_line
from flopsweep.core.text import counted
from flopsweep.sinks.store import store
from flopsweep.sinks.sweep_run import SweepRun
from flopsweep.sinks.target import target_of
from flopsweep.sweep import state
from flopsweep.sweep._hydra import BasicSweeper
from flopsweep.sweep.callback import abandon_sweep
from flopsweep.sweep.jobdirs import job_states, record_uncomposable
from flopsweep.sweep.joblib_fast import launch_joblib, workers_started
from flopsweep.sweep.plan import covering_jobs, launcher_class
from flopsweep.sweep.slurm import SlurmRefused, launch_slurm


class RecoveringSweeper(BasicSweeper):
    """Hydra's basic sweeper that checks each swept value once and launches through :class:`RecoveringLauncher`
    (registered with Hydra by ``hydra_plugins.flopsweep_sweeper``)."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict[str, str]] = None,
                 allow_concurrent_timing: bool = False) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.allow_concurrent_timing = allow_concurrent_timing  # read by the sweep callback, before any job

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = RecoveringLauncher(self.launcher, config, hydra_context.config_loader)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return super().sweep(arguments)
        except BaseException as err:
            abandon_sweep(err)
            raise

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(covering_jobs(batch))


class RecoveringLauncher:
    """Wraps the configured launcher (the real one is what runs and is pickled to workers)."""

    def __init__(self, launcher: Any, config: DictConfig, config_loader: Any) -> None:
        self.launcher, self.config, self.config_loader = launcher, config, config_loader

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        returns: list[JobReturn] = []
        workers_started()
        try:
            self._launch(job_overrides, initial_job_idx, returns)
        except SlurmRefused as err:  # what the cluster cannot run, before or as it is submitted: nothing to list
            state.current().failed = True
            error(str(err))
        except Exception as err:  # noqa: BLE001 - the jobs that finished are on disk; the summary lists the rest
            if state.current().signalled is not None:  # an interrupt a library turned into another error
                raise state.again() from err
            if state.current().full_errors:
                raise
            disk = state.disk_error(err)  # Hydra could not write a job's folder: the sweep stops
            if disk is not None:
                raise state.Unwritable(self._sweep_dir(), disk) from None
            waiting = [initial_job_idx + i for i, state in enumerate(job_states(self._sweep_dir(), job_overrides))
                       if state == "waiting"]
            _give_up(f"the launcher stopped ({one_line(err)})" + (
                f"; {counted(len(waiting), 'job')} did not start (job {', '.join(map(str, waiting))})" if waiting
                else ""))
        return returns

    def _launch(self, batch: Sequence[Sequence[str]], first: int, returns: list[JobReturn]) -> None:
        todo = list(range(len(batch)))
        while todo:
            run = todo[:next((k for k in range(1, len(todo)) if todo[k] != todo[k - 1] + 1), len(todo))]
            try:
                returns += self._run([batch[i] for i in run], first + run[0])
                todo = todo[len(run):]
                continue
            except ConfigCompositionException:
                state = dict(zip(run, job_states(self._sweep_dir(), [batch[i] for i in run])))
                unfinished = [i for i in run if state[i] != "done"]  # joblib killed the others in flight
                bad = {i: why for i in unfinished if state[i] == "waiting"
                       and (why := self._composition_error(batch[i])) is not None}
                if not bad:
                    raise
                for i, why in bad.items():
                    record_uncomposable(self._sweep_dir(), first + i, batch[i], why)
                self._forget_cut_off_runs()
                todo = [i for i in unfinished if i not in bad] + todo[len(run):]
                continue
            except BrokenExecutor as err:
                state = job_states(self._sweep_dir(), [batch[i] for i in run])
                in_flight = [i for i, s in zip(run, state) if s == "started"]
                waiting = [i for i, s in zip(run, state) if s == "waiting"]
                if not in_flight and len(waiting) == len(run):
                    raise  # nothing started: the workers cannot run at all
                warning(f"a worker process died ({_death(err)}); the pool's "
                        f"{counted(len(in_flight), 'job')} in progress will run again, one at a time")
            self._forget_cut_off_runs()
            for i in in_flight:
                try:
                    returns += self._run([batch[i]], first + i)
                except BrokenExecutor:
                    self._forget_cut_off_runs()
                    error(f"job {first + i} ({' '.join(batch[i])}) is lost: its worker process "
                          "died again when it ran alone")
            todo = waiting + todo[len(run):]

    def _run(self, batch: Sequence[Sequence[str]], first: int) -> list[JobReturn]:
        kind = launcher_class(self.config.hydra.launcher)
        if kind == "JoblibLauncher":
            return launch_joblib(self.launcher, batch, first)
        if kind == "SlurmLauncher":
            returns, requeued = launch_slurm(self.launcher, batch, first)
            if requeued:  # a job preempted while it logged left a run that its second attempt logged again
                self._forget_cut_off_runs()
            return returns
        return list(self.launcher.launch(batch, initial_job_idx=first))

    def _composition_error(self, overrides: Sequence[str]) -> Optional[str]:
        """Why Hydra cannot compose this job, or None if it can."""
        try:
            self.config_loader.load_sweep_config(self.config, list(overrides))
        except ConfigCompositionException as err:
            return one_line(err)
        return None

    def _sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir))

    def _forget_cut_off_runs(self) -> None:
        """Delete the sweep's job runs that no job's ``result.json`` names (:meth:`SweepRun.forget_unrecorded`): no
        job of the sweep runs now."""
        parent = state.SweepContext.current().parent
        try:
            target = target_of(self.config.tracking, Path.cwd())
            if parent and target is not None:
                SweepRun(store(target), parent, self._sweep_dir()).forget_unrecorded()
        except Exception as err:  # noqa: BLE001 - an extra run is untidy, not a lost result
            warning(f"could not delete the runs the dead worker left unrecorded: {one_line(err)}")


def _give_up(reason: str) -> None:
    state.current().failed = True
    error(f"{reason}; the jobs that started and have no result are listed as lost below")


def _death(err: BaseException) -> str:
    """``exit code {SIGKILL(-9)}`` from loky's TerminatedWorkerError, or the error in one line."""
    found = re.search(r"exit codes of the workers are (\{.*?\})", str(err))
    return f"exit code {found.group(1)}" if found else one_line(err)
