"""The job task behind the ``flopsweep`` command: each job's config resolved, measured (or skipped: already measured,
measured by another resume, or too big), written to its job folder first and then logged. The process around it (the
Hydra app that calls it, signals, Hydra's errors as one line, the stack's room, what a sweep's process freezes) is the
command's: :mod:`flopsweep.cli.flopsweep`."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flopsweep.build.spec import JobSpec
from flopsweep.config.compose import register_configs
from flopsweep.config.resolve import job_config, recorded, resolve
from flopsweep.core.console import error, say, warning
from flopsweep.core.errors import ConfigError, command, masked
from flopsweep.core.result import JobTimes, Result, Tracking
from flopsweep.core.text import job_lines
from flopsweep.sinks.identity import fingerprint, run_name, short_name
from flopsweep.sinks.claims import Claim
from flopsweep.sinks.target import Target, environment_unread
from flopsweep.core import progress as phases
from flopsweep.measure.timing import TICK
from flopsweep.sweep import state
from flopsweep.sweep.progress import Ticker, job_name, progress_line


def run_one(cfg: DictConfig) -> Result:
    """Validate and measure one composed config; always returns a Result and writes the job folder."""
    state.in_a_job()
    hydra_cfg = HydraConfig.get()
    job_num = OmegaConf.select(hydra_cfg.job, "num", default=None, throw_on_missing=False)
    typed = command_line_keys(hydra_cfg)
    try:
        spec = resolve(cfg, typed)
        config = job_config(cfg, spec)
    except (ConfigError, OmegaConfBaseException) as err:  # the latter: an interpolation that does not resolve
        if isinstance(err, OmegaConfBaseException):
            err = ConfigError(err.full_key, None, str(err.msg).splitlines()[0])
        try:
            config = recorded(cfg)
        except OmegaConfBaseException:
            config = recorded(cfg, resolve=False)
        result = Result("failed", str(err), config)
        if hydra_cfg.mode != RunMode.MULTIRUN:  # a single command refused: said, with nothing to keep or log
            state.current().refused = True  # a usage error, as Hydra's own refusals of a key or value are
            error(result.error)
            _remove_if_only_hydras(Path(hydra_cfg.runtime.output_dir))
            return result
        say(progress_line(job_num, config))  # a sweep's refused job: its line, then a row and a run
        result.info["fingerprint"] = fingerprint(config, None, None)
        tracking, claimed = _failed_job_target(cfg, err), None
    else:
        changed = [] if hydra_cfg.mode == RunMode.MULTIRUN else [key for key in typed if key.startswith("model.")]
        folder = Path(hydra_cfg.runtime.output_dir)
        unread = environment_unread(cfg.tracking) if hydra_cfg.mode != RunMode.MULTIRUN else None  # a sweep's: once
        notes = [*spec.notes, *([unread] if unread else [])]
        say("\n".join([progress_line(job_num, config, changed, folder), *(f"note: {n}" for n in notes)]))
        started = time.time()
        ticker = Ticker()
        ticking, listening = TICK.set(ticker), phases.LISTENER.set(ticker.entered)
        tracking = spec.tracking
        try:
            result, claimed = _skip_or_run(spec, config)
            named = run_name(result.config or config, changed)
            if named != run_name(result.config or config):  # a preset with fields of its own: named with them
                result.info["run_name"] = named
            result.job_times = JobTimes(started, time.time())  # the run shows the job's real duration
            if state.current().signalled is not None:  # an interrupt that came out of the job as its failure
                raise state.again()
        except KeyboardInterrupt as err:  # the job is recorded as interrupted, then the sweep ends
            cause = err.cause if isinstance(err, state.Interrupted) else "interrupted by SIGINT"
            result = getattr(err, "measured", None) or Result("interrupted", None, config)  # run_job's, if it began
            result.error = f"{cause} before the job finished"
            with contextlib.suppress(OSError), state.interrupts_deferred():  # a full disk: the signal is said
                _log(tracking, hydra_cfg, result, job_num)  # its folder and its run (KILLED), not left to a sync
                if result.metrics:
                    state.current().cut = Path(hydra_cfg.runtime.output_dir)
            raise
        finally:
            TICK.reset(ticking)
            phases.LISTENER.reset(listening)
            ticker.close()
    try:
        with state.interrupts_deferred():
            _record(tracking, hydra_cfg, result, job_num)
    finally:
        if claimed is not None:  # held until the run is logged: a resume that takes it next finds the run finished
            claimed.release()
    return result


def command_line_keys(hydra_cfg: DictConfig) -> list[str]:
    """The keys the job's command line sets (``model.n_layer=2``: ``model.n_layer``), read as typed (a value's
    interpolation is the job's to resolve, and fail)."""
    typed = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    return [override.split("=", 1)[0].lstrip("+~") for override in typed]


def _remove_if_only_hydras(folder: Path) -> None:
    """The folder Hydra made for a job refused before it ran, unless something else was written there (Hydra's
    ``.hydra`` config and an empty log are all it holds)."""
    import shutil

    ours = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= ours and \
            all(p.is_dir() or p.stat().st_size == 0 for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the day's folder, if this was its only run
            folder.parent.rmdir()


def _failed_job_target(cfg: DictConfig, refused: ConfigError) -> Target | ConfigError | None:
    """Where a job refused by its config is logged (its failure is a run too): the target, None for tracking=none,
    or why the target can never work, where that is not what refused the job (said once, not tried as a store)."""
    from flopsweep.sinks.target import target_of

    try:
        return target_of(cfg.tracking, Path.cwd())
    except ConfigError as err:
        return None if str(err) == str(refused) else err


def _record(tracking: Target | ConfigError | None, hydra_cfg: DictConfig, result: Result,
            job_num: Optional[int]) -> None:
    """The job's folder, its lines on the console and its run in the store (:func:`_log`)."""
    folder = Path(hydra_cfg.runtime.output_dir)
    lines = []
    if result.status.failed:
        state.current().failed = True
        error(result.error)
    elif result.status == "skipped":
        lines = [f"skipped: {result.info['skipped']}"]
    else:
        lines = job_lines(result)
    context = state.SweepContext.current()
    if context.at_once > 1 and job_num is not None and lines:  # side by side: its figures come after others' lines
        lines.insert(0, f"[job {int(job_num) + 1}/{context.total}] {job_name(result.config or {}, True)} done:")
    said = []

    def results_line() -> None:  # said before the run is logged: a slow store does not hold the numbers back
        say("\n".join([*lines, f"results: {folder}"]))
        said.append(True)

    try:
        _log(tracking, hydra_cfg, result, job_num, results_line)
    except OSError as err:  # the numbers are said here, in the sweep's table and in a store with room; the sweep stops
        logged = result.tracking is not None and result.tracking.logged
        if not said or logged:  # its folder, or its result.json saying where it was logged, could not be written:
            state.current().unwritten[folder.name] = result  # the sweep's summary takes it as measured
        if not said:
            if logged:  # a resume finds it there
                lines.append(f"logged to MLflow (run {result.tracking.run_id}) with the files it has")
            say("\n".join(lines))
        raise state.Unwritable(folder, err) from None
    noted, in_sweep = result.tracking, hydra_cfg.mode == RunMode.MULTIRUN
    if noted is not None and not (noted.logged or noted.elsewhere or (in_sweep and noted.known)):
        warning(f"not logged to MLflow ({noted.error}); the result is in "
                f"{folder}: `{command('flopsweep-sync')} {folder}` logs it later")
    elif noted is not None and noted.logged and not noted.existing and not in_sweep:  # a sweep's line ends it
        say(f"MLflow: run {noted.run_id} in experiment {noted.experiment!r} ({noted.uri})")


def _log(tracking: Target | ConfigError | None, hydra_cfg: DictConfig, result: Result, job_num: Optional[int],
         written: Optional[Callable[[], None]] = None) -> None:
    """The job's folder written and its run logged (:func:`flopsweep.sinks.record.record`), named in a sweep by what
    tells it apart from the sweep's other runs; ``written`` is called between the two."""
    from flopsweep.sinks.record import record

    swept = list(state.SweepContext.current().swept)
    if swept and hydra_cfg.mode == RunMode.MULTIRUN:
        result.info["run_name"] = short_name(result.config or {}, swept)
    overrides = OmegaConf.select(hydra_cfg.job, "override_dirname", default="", throw_on_resolution_failure=False)
    record(result, Path(hydra_cfg.runtime.output_dir), _logged_to(tracking, result),
           {"job_num": job_num, "overrides": overrides}, state.SweepContext.current().parent, written=written)


def _logged_to(tracking: Target | ConfigError | None, result: Result) -> Optional[Target]:
    """Where the job's run is logged: nowhere for tracking=none or a skipped job whose run is in the store or another
    resume's to log; a target that can never work is noted as why not (said by the caller), and not tried."""
    noted = result.tracking
    if noted is not None and (noted.existing or noted.elsewhere):
        return None
    if isinstance(tracking, ConfigError):
        result.tracking = Tracking(False, error=str(tracking))
        return None
    return tracking


def _skip_or_run(spec: JobSpec, config: dict[str, Any]) -> tuple[Result, Optional[Claim]]:
    """Measure the job, unless ``skip_existing`` and the store already has a finished run of it, or another resume
    of the sweep measures it now (its claim held: :mod:`flopsweep.sinks.claims`); the job's claim, if it took one,
    to release once its run is logged."""
    from flopsweep.run.job import run_job
    from flopsweep.sinks.claims import claim
    from flopsweep.sinks.health import down_reason
    from flopsweep.sinks.store import failed, finished_run, run_metrics

    source = spec.model_source
    fp = fingerprint(config, str(spec.device), spec.device.name, source["sha256"] if source else None)

    def skipped(reason: str, tracking: Tracking) -> Result:
        """Not measured here: its run is in the store, or another resume's to log."""
        result = Result("skipped", None, config, info={
            "fingerprint": fp, "device": str(spec.device), **({"model_source": source} if source else {}),
            "skipped": reason})
        result.tracking = tracking
        return result

    target = spec.tracking if spec.skip_existing else None
    claimed = claim(target, fp) if target is not None else None
    if isinstance(claimed, str):
        return skipped(f"another resume of the sweep is measuring it ({claimed}); if it does not finish, run the "
                       "same command with skip_existing=true again", Tracking(False, elsewhere=claimed)), None
    if target is not None and down_reason(target.uri) is None:  # a store found unusable: the sweep said so
        started = time.monotonic()
        try:
            existing = finished_run(target, fp)
        except Exception as err:  # noqa: BLE001 - a store we cannot ask means measuring again, not losing the job
            warning(f"could not look for a finished run ({failed(target.uri, err, started)}); measuring")
        else:
            if existing is not None:
                result = skipped(f"run {existing} of experiment {target.experiment!r} already measured this",
                                 Tracking(True, masked(target.uri), target.experiment, existing, existing=True))
                with contextlib.suppress(Exception):  # its figures for the sweep's table: a nicety, not the record
                    result.metrics = run_metrics(target, existing)
                return result, claimed
    result = run_job(spec, config)
    result.info["fingerprint"] = fp
    return result, claimed


register_configs()  # wherever a job is composed: a sweep's workers import this module, not the command's
