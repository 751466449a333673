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
- runs ``hydra/launcher=joblib``'s jobs as Hydra's launcher does but sends Hydra's state to each worker once, not
  with every job (:func:`launch_joblib`);
- starts joblib's workers while the sweep prepares, warm from a fork server where no job times, and ends them with
  the sweep (:func:`start_workers`, :func:`stop_workers`, called by the sweep callback in ``flopsweep.cli``).

Also here: how many jobs a launcher runs at once, and the check that refuses to time jobs side by side.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

FORCE_KEY = "hydra.sweeper.allow_concurrent_timing"


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
            from flopsweep.cli import abandon_sweep

            abandon_sweep("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(covering_jobs(batch))


def covering_jobs(batch: Sequence[Sequence[str]]) -> list[Sequence[str]]:
    """Jobs that between them have every override of the batch: first those whose swept values are all new, then
    any that still adds one. A cartesian product needs as many as its longest axis has values (20 for 10 x 20)."""
    swept = set().union(*map(set, batch)) - set.intersection(*map(set, batch)) if batch else set()
    covered: set[str] = set()
    chosen: list[Sequence[str]] = []
    for new_only in (True, False):
        for overrides in batch:
            new = set(overrides) - covered
            if new and (not new_only or new >= swept.intersection(overrides)):
                chosen.append(overrides)
                covered |= new
    return chosen


class RecoveringLauncher:
    """Wraps the configured launcher (the real one is what runs and is pickled to workers)."""

    def __init__(self, launcher: Any, config: DictConfig, config_loader: Any) -> None:
        self.launcher, self.config, self.config_loader = launcher, config, config_loader

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        returns: list[JobReturn] = []
        workers_started()
        try:
            self._launch(job_overrides, initial_job_idx, returns)
        except Exception as err:  # noqa: BLE001 - the jobs that finished are on disk; the summary lists the rest
            from flopsweep import cli

            if cli.full_errors:
                raise
            waiting = [initial_job_idx + i for i, state in enumerate(job_states(self._sweep_dir(), job_overrides))
                       if state == "waiting"]
            _give_up(f"the launcher stopped ({_one_line(err)})" +
                     (f"; {_jobs(len(waiting))} did not start (job {', '.join(map(str, waiting))})" if waiting else ""))
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
                print(f"flopsweep: warning: a worker process died ({_death(err)}); the pool's "
                      f"{_jobs(len(in_flight))} in progress will run again, one at a time", file=sys.stderr)
            self._forget_cut_off_runs()
            for i in in_flight:
                try:
                    returns += self._run([batch[i]], first + i)
                except BrokenExecutor:
                    self._forget_cut_off_runs()
                    print(f"flopsweep: error: job {first + i} ({' '.join(batch[i])}) is lost: its worker process "
                          "died again when it ran alone", file=sys.stderr)
            todo = waiting + todo[len(run):]

    def _run(self, batch: Sequence[Sequence[str]], first: int) -> list[JobReturn]:
        if launcher_class(self.config.hydra.launcher) == "JoblibLauncher":
            return launch_joblib(self.launcher, batch, first)
        return list(self.launcher.launch(batch, initial_job_idx=first))

    def _composition_error(self, overrides: Sequence[str]) -> Optional[str]:
        """Why Hydra cannot compose this job, or None if it can."""
        try:
            self.config_loader.load_sweep_config(self.config, list(overrides))
        except ConfigCompositionException as err:
            return _one_line(err)
        return None

    def _sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir))

    def _forget_cut_off_runs(self) -> None:
        """Delete the sweep's job runs that no job's ``result.json`` names: no job of the sweep runs now, so those
        are the runs of jobs killed while logging, or after logging and before recording their run id, and
        each of these jobs logs itself again whole when it runs again."""
        from flopsweep.tracking import PARENT_ENV, store, target_of

        parent = os.environ.get(PARENT_ENV)
        try:
            target = target_of(self.config.tracking, Path.cwd())
            if parent and target is not None:
                store(target).delete_children_except(parent, _recorded_runs(self._sweep_dir()))
        except Exception as err:  # noqa: BLE001 - an extra run is untidy, not a lost result
            print(f"flopsweep: warning: could not delete the runs the dead worker left unrecorded: {_one_line(err)}",
                  file=sys.stderr)


def _recorded_runs(sweep_dir: Path) -> set[str]:
    """The MLflow run ids that the sweep's job folders record in their ``result.json``."""
    from flopsweep.result import Result

    results = (Result.read_or_none(path) for path in sweep_dir.glob("*/result.json"))  # none: its job runs again
    return {r.info["tracking"].get("run_id") for r in results if r is not None and r.info.get("tracking")} - {None}


def record_uncomposable(sweep_dir: Path, job: int, overrides: Sequence[str], why: str) -> None:
    """A job folder with a ``failed`` result for a job that Hydra could not compose: the sweep's summary, exit status
    and MLflow run count it, with the overrides to fix."""
    from flopsweep.result import Result

    error = f"cannot be composed: {why}"
    print(f"flopsweep: error: job {job} ({' '.join(overrides)}) {error}", file=sys.stderr)
    model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "job")
    folder = sweep_dir / f"{job}_{model}"
    folder.mkdir(parents=True, exist_ok=True)
    Result("failed", error, {"model": {"name": model}, "overrides": list(overrides)}).write(folder / "result.json")


def job_states(sweep_dir: Path, batch: Sequence[Sequence[str]]) -> list[str]:
    """For each job: ``done`` (its folder has its result, logged unless tracking=none), ``started`` (Hydra made its
    folder: the job was running, or was killed while logging) or ``waiting``. Jobs are matched to folders by the
    overrides Hydra saved in ``.hydra/``."""
    import yaml

    folders: dict[tuple[str, ...], list[Path]] = {}
    for saved in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        key = tuple(yaml.safe_load(saved.read_text()) or [])
        folders.setdefault(key, []).append(saved.parent.parent)
    states = []
    for overrides in batch:
        found = folders.get(tuple(o for o in overrides if not _is_hydra(o)))
        if not found:
            states.append("waiting")
        else:
            states.append("done" if _finished(found.pop(0) / "result.json") else "started")
    return states


def _finished(path: Path) -> bool:
    from flopsweep.result import Result

    result = Result.read_or_none(path)  # none, or cut off mid-write
    if result is None:
        return False
    return "tracking" in result.info or (result.config.get("tracking") or {}).get("kind") == "none"


def _is_hydra(override: str) -> bool:
    return re.match(r"[+~]*hydra[./]", override) is not None


def _give_up(reason: str) -> None:
    from flopsweep.cli import mark_failed

    mark_failed()
    print(f"flopsweep: error: {reason}; the jobs that started and have no result are listed as lost below",
          file=sys.stderr)


def _death(err: BaseException) -> str:
    """``exit code {SIGKILL(-9)}`` from loky's TerminatedWorkerError, or the error in one line."""
    found = re.search(r"exit codes of the workers are (\{.*?\})", str(err))
    return f"exit code {found.group(1)}" if found else _one_line(err)


def _jobs(n: int) -> str:
    return f"{n} job{'s' if n != 1 else ''}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


# --- joblib: Hydra's launcher, with Hydra's state sent to each worker once ------------------------------------

def launch_joblib(launcher: Any, batch: Sequence[Sequence[str]], first: int) -> list[JobReturn]:
    """Run ``hydra/launcher=joblib``'s jobs as Hydra's joblib launcher does (its settings, its log lines, Hydra's
    ``run_job`` in each worker), except that Hydra's state reaches a worker once rather than with every job. Hydra's
    launcher pickles the sweep's config, its context and its global state with each job (20 ms of the sweep's
    process) and each job, restoring that state, has Hydra rediscover its plugins (30 ms): an eighth of a meta
    job's CPU. Here the state is pickled once and each worker unpickles and installs it at its first job of the sweep;
    its later jobs share it, as jobs in one process do with the basic launcher. The state carries this process's
    ``FLOPSWEEP_*`` variables (the sweep's run, size and start), which workers forked early have not inherited."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals
    from joblib import Parallel, delayed

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    settings = joblib_settings(config.hydra.launcher)
    log = logging.getLogger(__name__)
    log.info(f"Joblib.Parallel({','.join(f'{k}={v}' for k, v in settings.items())}) is launching {len(batch)} jobs")
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for idx, overrides in enumerate(batch):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
    env = {key: value for key, value in os.environ.items() if key.startswith("FLOPSWEEP_")}
    state = _Once((launcher.hydra_context, config, launcher.task_function, Singleton.get_state(), env))
    return list(Parallel(**settings)(delayed(_execute_job)(first + i, list(overrides), state)
                                     for i, overrides in enumerate(batch)))


def joblib_settings(launcher: DictConfig) -> dict[str, Any]:
    """``joblib.Parallel``'s arguments from ``hydra.launcher``, as Hydra's launcher makes them (loky processes)."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    settings = OmegaConf.to_container(launcher, resolve=True)
    settings.pop("_target_", None)
    settings["backend"] = "loky"
    process_joblib_cfg(settings)
    return settings


class _Once:
    """A value pickled once in the sweep's process and unpickled once in each worker: what a task carries is the
    pickled bytes and a key (copying bytes costs nothing next to pickling objects), and a worker keeps the one
    ``_Once`` of the last key it saw. Where joblib runs the tasks in the sweep's process (``n_jobs=1``), they get
    this object itself, and nothing is pickled."""

    def __init__(self, value: Any, key: Optional[str] = None) -> None:
        import uuid

        self.value, self.key = value, key or uuid.uuid4().hex
        self._data: Optional[bytes] = None

    def __reduce__(self) -> tuple:
        if self._data is None:
            from joblib.externals.loky.backend.reduction import dumps

            self._data = dumps(self.value)
        return _unpickle_once, (self.key, self._data)


_received: dict[str, _Once] = {}


def _unpickle_once(key: str, data: bytes) -> _Once:
    import pickle

    if key not in _received:
        _received.clear()
        _received[key] = _Once(pickle.loads(data), key)
    return _received[key]


_installed: Optional[_Once] = None  # the sweep state this process has installed


def _execute_job(idx: int, overrides: list[str], state: _Once) -> JobReturn:
    """One job in a joblib worker: what Hydra's joblib launcher runs, with the sweep's state installed once."""
    global _installed
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    hydra_context, config, task_function, singletons, env = state.value
    if _installed is not state:
        setup_globals()
        Singleton.set_state(singletons)
        os.environ.update(env)
        _installed = state
    job = hydra_context.config_loader.load_sweep_config(config, overrides)
    with open_dict(job):
        job.hydra.job.id = f"{job.hydra.job.name}_{idx}"
        job.hydra.job.num = idx
    HydraConfig.instance().set_config(job)
    return run_job(hydra_context=hydra_context, config=job, task_function=task_function,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


# --- joblib's workers, started while the sweep prepares ---------------------------------------------------------

_starting: Optional[Iterator] = None


def start_workers(config: DictConfig, jobs: Optional[int]) -> None:
    """With the joblib launcher, start its worker processes now, while this process opens the sweep's MLflow run
    and composes the swept values (one core would otherwise sit idle through both), and have them import what
    every job imports (torch, Hydra, MLflow, flopsweep: about 5 s of CPU a process). In a sweep that times
    nothing, the workers are forked from one process that makes those imports once (a fork server, started here);
    a job that times needs its worker's thread settings in place before torch is imported, so each of those
    workers starts now and imports for itself, and joblib hands them to the launcher (its process pool is reused
    by a call with the same settings, which these are: Hydra's own). Called after the sweep's timing check (a
    sweep it let through times nothing unless forced) and before the sweep's run exists: the workers get its id
    with their jobs (:func:`launch_joblib`). Nothing for other launchers, or one worker; if anything fails here,
    the launcher starts its workers itself, as it would have."""
    global _starting
    launcher = config.hydra.launcher
    workers = jobs_at_once(launcher, jobs)
    if launcher_class(launcher) != "JoblibLauncher" or not workers or workers < 2:
        return
    try:
        from flopsweep.tracking import target_of

        target = target_of(config.tracking, Path.cwd())
        uri = target.uri if target is not None else None
        forced = OmegaConf.select(config, FORCE_KEY, default=False)
        if not (forced and _timing_jobs(config, *_sweep_jobs(config))[0]):
            import multiprocessing
            from multiprocessing import forkserver

            from joblib.externals.loky.backend.context import set_start_method

            multiprocessing.set_forkserver_preload(_worker_modules(uri))
            set_start_method("forkserver", force=True)
            forkserver.ensure_running()  # starts it importing and returns; workers forked from it wait for that
            return
        from joblib import Parallel, delayed

        _starting = Parallel(return_as="generator_unordered", **joblib_settings(launcher))(
            delayed(_prepare_worker)(uri) for _ in range(workers))
    except Exception:  # noqa: BLE001
        return


def workers_started() -> None:
    """Wait for :func:`start_workers`' imports to end (by now mostly done). A worker that failed to start is the
    launcher's to report: it starts its pool again."""
    global _starting
    if _starting is not None:
        try:
            for _ in _starting:
                pass
        except Exception:  # noqa: BLE001
            pass
        _starting = None


def stop_workers() -> None:
    """After the sweep's last job, end joblib's workers and the fork server at once: their jobs are done and
    written, and left to end with this process each would first unload torch, MLflow and the rest, seconds during
    which they still hold the sweep's output open (a pipe reading it waits for them)."""
    if "joblib.externals.loky.reusable_executor" not in sys.modules:
        return  # no joblib pool in this process
    import signal
    from multiprocessing import forkserver

    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            server._stop()  # reaps it, removes its socket and forgets it
        except OSError:  # ChildProcessError and ProcessLookupError included: gone already
            pass


def _worker_modules(uri: Optional[str]) -> list[str]:
    """What a job imports: torch._dynamo too (PyTorch imports it at a job's first optimizer, or init on meta:
    1.4 s), MLflow's client when the sweep logs, and its SQL store for a local one (the store itself is opened by
    the first job, once the sweep's run has created it)."""
    modules = ["torch._dynamo", "hydra_plugins.hydra_joblib_launcher._core", "flopsweep.cli", "flopsweep.job"]
    if uri is not None:
        modules.append("mlflow.tracking")
    if uri is not None and uri.startswith("sqlite:"):
        modules.append("mlflow.store.tracking.sqlalchemy_store")
    return modules


def _prepare_worker(uri: Optional[str]) -> None:
    import importlib

    for module in _worker_modules(uri):
        importlib.import_module(module)


# --- which launchers run jobs side by side, and which jobs time -------------------------------------------------

# a job's device and measure.time come from these overrides only; the other groups (package model, batch, ...)
# cannot set them, so jobs that differ only in those need one composition between them
_CANNOT_SET_TIMING = ("model", "batch", "dtype", "optimizer", "train", "tracking", "skip_existing", "hydra")


def launcher_class(launcher: DictConfig) -> str:
    """The launcher's class name (``JoblibLauncher``, ``BasicLauncher``, ...), from its ``_target_``."""
    return str(launcher.get("_target_", "")).rsplit(".", 1)[-1]


def jobs_at_once(launcher: DictConfig, jobs: Optional[int]) -> Optional[int]:
    """How many of ``jobs`` (None: a number we don't know) the launcher runs at the same time on one machine; None
    for a launcher we don't know. A Slurm job gets its own allocation (its GPUs are its own): one at a time."""
    kind = launcher_class(launcher)
    if kind in ("BasicLauncher", "SlurmLauncher"):
        return 1
    if kind == "JoblibLauncher":
        n = launcher.get("n_jobs")
        if n is None:
            return 1
        if n < 0:
            import joblib

            n = max(1, joblib.cpu_count() + 1 + n)
        return min(int(n), jobs) if jobs is not None else int(n)
    if kind == "LocalLauncher":  # submitit_local starts every job at once
        return jobs
    return None


def concurrent_timing_error(config: DictConfig) -> Optional[str]:
    """One line naming the keys, if this sweep would time jobs side by side on one machine: timings taken while
    other jobs run are not the model's. None where it would not, or where ``hydra.sweeper.allow_concurrent_timing``
    forces it."""
    if OmegaConf.select(config, FORCE_KEY, default=False):
        return None
    loader, jobs = _sweep_jobs(config)
    at_once = jobs_at_once(config.hydra.launcher, len(jobs) if loader is not None else None)
    if at_once == 1:
        return None
    timing, devices = _timing_jobs(config, loader, jobs)
    if not timing:
        return None
    choice = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/launcher", "?")
    if launcher_class(config.hydra.launcher) == "JoblibLauncher":
        key, runs = f"hydra.launcher.n_jobs={config.hydra.launcher.n_jobs}", f"runs {at_once} jobs at once"
    else:
        key, runs = f"hydra/launcher={choice}", (f"runs {at_once} jobs at once" if at_once else
                                                 "may run jobs at once")
    of = f"{timing} of the {len(jobs)} jobs" if loader is not None else "the jobs"
    return (f"{key}: {of} time on {'/'.join(sorted(devices))} (measure.time=true) and "
            f"this launcher {runs}, which distorts the timings; count only (device=meta or measure.time=false), "
            f"run one job at a time, or force it with {FORCE_KEY}=true")


def _timing_jobs(config: DictConfig, loader: Any, jobs: list[list[str]]) -> tuple[int, set[str]]:
    """How many of the sweep's jobs (:func:`_sweep_jobs`) time, and on which devices: one job composed for each
    combination of the overrides that can set the device or ``measure.time``."""
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for overrides in jobs:
        groups.setdefault(tuple(o for o in overrides if _may_set_timing(o)), []).append(overrides)
    timing, devices = 0, set()
    for members in groups.values():
        job = loader.load_sweep_config(config, list(members[0])) if loader is not None else config
        device = getattr(job.device.type, "value", job.device.type)  # the schema's enum
        if device != "meta" and job.measure.time:
            timing += len(members)
            devices.add(str(device))
    return timing, devices


def _may_set_timing(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return re.split(r"[./]", key, maxsplit=1)[0] not in _CANNOT_SET_TIMING


def _sweep_jobs(config: DictConfig) -> tuple[Any, list[list[str]]]:
    """Hydra's config loader and every job's overrides, as the basic sweeper expands them (the command line's
    values replace the preset's ``hydra.sweeper.params``). Another sweeper's syntax: the sweep's own config."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create(config_loader=loader).parse_overrides(lines)
        jobs = [job for chunk in BasicSweeper.split_arguments(overrides, None) for job in chunk]
    except Exception:  # noqa: BLE001 - an interval or other non-discrete sweep: judge by the sweep's own config
        return None, [[]]
    return loader, jobs
