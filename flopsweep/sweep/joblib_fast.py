"""Hydra's joblib launcher made fast for sweeps of many small jobs: the same ``joblib.Parallel`` and the same
``run_job`` in each worker, but Hydra's state sent to each worker once, not with every job (:func:`launch_joblib`);
and the workers started while the sweep prepares, warm from a fork server where no job times, and ended with the
sweep (:func:`start_workers`, :func:`stop_workers`, called by the sweep callback)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf

from flopsweep.core.console import forgive_stdout
from flopsweep.measure._torch import LAZY_MODULES
from flopsweep.sweep import _loky
from flopsweep.sweep._hydra import JOBLIB_CORE, process_joblib_cfg
from flopsweep.sweep.plan import FORCE_KEY, SweepPlan, jobs_at_once, launcher_class
from flopsweep.sweep.state import Unwritable


LISTED_JOBS = 20  # a sweep's overrides listed before it starts up to this many jobs; each job's [job N/M] line names it


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
    if len(batch) <= LISTED_JOBS:  # a layout search's 312 lines of overrides came before its first job
        for idx, overrides in enumerate(batch):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
    env = {key: value for key, value in os.environ.items() if key.startswith("FLOPSWEEP_")}
    state = _Once((launcher.hydra_context, config, launcher.task_function, Singleton.get_state(), env))
    with warnings.catch_warnings():  # loky restarts a worker whose memory grew (a job's leftovers): it goes on
        warnings.filterwarnings("ignore", "A worker stopped while some jobs were given to the executor")
        return list(Parallel(**settings)(delayed(_execute_job)(first + i, list(overrides), state)
                                         for i, overrides in enumerate(batch)))


def joblib_settings(launcher: DictConfig) -> dict[str, Any]:
    """``joblib.Parallel``'s arguments from ``hydra.launcher``, as Hydra's launcher makes them (loky processes)."""
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
            self._data = _loky.dumps(self.value)
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
    try:
        return run_job(hydra_context=hydra_context, config=job, task_function=task_function,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except Unwritable as err:  # a BaseException would break joblib's pool: sent back as the disk's own error
        if err.error.filename is None:
            err.error.filename = str(err.path)
        raise err.error from None


# --- joblib's workers, started while the sweep prepares ---------------------------------------------------------

_starting: Optional[Iterator] = None


def start_workers(plan: SweepPlan) -> None:
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
    config = plan.config
    launcher = config.hydra.launcher
    workers = jobs_at_once(launcher, plan.size)
    if launcher_class(launcher) != "JoblibLauncher" or not workers or workers < 2:
        return
    try:
        from flopsweep.sinks.target import target_of

        target = target_of(config.tracking, Path.cwd())
        uri = target.uri if target is not None else None
        forced = OmegaConf.select(config, FORCE_KEY, default=False)
        if not (forced and plan.timing()[0]):
            _loky.use_fork_server(_worker_modules(uri))  # returns at once; the workers forked from it wait for it
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
    _loky.stop_pool_and_fork_server()


def _worker_modules(uri: Optional[str]) -> list[str]:
    """What a job imports: torch._dynamo too (PyTorch imports it at a job's first optimizer, or init on meta:
    1.4 s), MLflow's client when the sweep logs, and its SQL store for a local one (the store itself is opened by
    the first job, once the sweep's run has created it)."""
    modules = [*LAZY_MODULES, JOBLIB_CORE, "flopsweep.sweep.app", "flopsweep.run.job"]
    if uri is not None:
        modules.append("mlflow.tracking")
    if uri is not None and uri.startswith("sqlite:"):
        modules.append("mlflow.store.tracking.sqlalchemy_store")
    return modules


def _prepare_worker(uri: Optional[str]) -> None:
    import importlib

    forgive_stdout()  # a sweep piped into head: the worker's job lines and Hydra's log go nowhere once it left
    for module in _worker_modules(uri):
        importlib.import_module(module)


