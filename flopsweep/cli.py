"""The ``flopsweep`` command: a thin Hydra entry point around resolve -> run_job -> sinks."""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flopsweep.config import CONF_DIR, register_configs, resolve
from flopsweep.console import exit_command, say
from flopsweep.errors import ConfigError
from flopsweep.result import FAILURES, Result, any_failed, status_counts

SWEEP_TOTAL_ENV, SWEEP_START_ENV = "FLOPSWEEP_SWEEP_JOBS", "FLOPSWEEP_SWEEP_START"  # for the progress line
_failed = False  # set by any job (in-process launchers), the sweeper or the sweep summary; read by main()


def mark_failed() -> None:
    global _failed
    _failed = True


def run_one(cfg: DictConfig) -> Result:
    """Validate and measure one composed config; always returns a Result and writes the job folder."""
    from flopsweep.console import JOB_METRICS, metric_lines
    from flopsweep.sinks.jobdir import write_job_folder
    from flopsweep.tracking import fingerprint

    hydra_cfg = HydraConfig.get()
    job_num = OmegaConf.select(hydra_cfg.job, "num", default=None, throw_on_missing=False)
    try:
        config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        spec = resolve(cfg)
    except (ConfigError, OmegaConfBaseException) as err:  # the latter: an interpolation that does not resolve
        if isinstance(err, OmegaConfBaseException):
            config = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
            err = ConfigError(err.full_key, None, str(err.msg).splitlines()[0])
        result = Result("failed", str(err), config)
        result.info["fingerprint"] = fingerprint(config, None)
    else:
        # record the model and batch as built: a JSON file, batch.image_size (ViT) or batch.seq_len (ResNet-BK) can
        # change the model, and a batch.seq_len or image_size left out is the model's default
        config["model"] = {**config["model"], **dataclasses.asdict(spec.model)}
        config["batch"] = {**config["batch"], **dataclasses.asdict(spec.batch)}
        say(progress_line(job_num, config))
        result = _skip_or_run(cfg, spec, config, fingerprint(config, spec.device))
    folder = Path(hydra_cfg.runtime.output_dir)
    write_job_folder(result, folder)  # always first: nothing measured is lost whatever the store does
    lines = []
    if result.status in FAILURES:
        mark_failed()
        say(f"flopsweep: error: {result.error}", sys.stderr)
    elif result.status == "skipped":
        lines = [f"skipped: {result.info['skipped']}"]
    else:
        lines = metric_lines(result.metrics, JOB_METRICS)
    say("\n".join([*lines, f"results: {folder}"]))
    overrides = OmegaConf.select(hydra_cfg.job, "override_dirname", default="", throw_on_resolution_failure=False)
    _track(cfg, result, folder, {"job_num": job_num, "overrides": overrides})
    if hydra_cfg.mode == RunMode.MULTIRUN:
        _freeze_long_lived_objects()
    return result


@functools.lru_cache(maxsize=None)
def _freeze_long_lived_objects() -> None:
    """Once per sweep process, after its first job: what the imports made (torch, Hydra, MLflow, SQLAlchemy: some
    300k objects, alive until the process ends) leaves the garbage collector's view, so that a full collection looks
    at the later jobs' objects only. joblib's workers collect after every task that ends over a second after the
    last collection: 0.4 s each on 2 cores, more than a meta job takes; about 20 ms once frozen. Objects are still freed
    by reference count as usual; the collection just before leaves none of the first job's cyclic garbage frozen."""
    gc.collect()
    gc.freeze()


def _skip_or_run(cfg: DictConfig, spec, config: dict[str, Any], fp: str) -> Result:
    """Measure the job, unless ``skip_existing`` and the store already has a finished run of it."""
    from flopsweep.job import run_job
    from flopsweep.tracking import finished_run, target_of

    if cfg.skip_existing:
        target = target_of(cfg.tracking, Path.cwd())
        try:
            existing = finished_run(target, fp)
        except Exception as err:  # noqa: BLE001 - a store we cannot ask means measuring again, not losing the job
            print(f"flopsweep: warning: could not look for a finished run ({type(err).__name__}); measuring",
                  file=sys.stderr)
        else:
            if existing is not None:
                return Result("skipped", None, config, info={
                    "fingerprint": fp, "device": spec.device,
                    "skipped": f"run {existing} of experiment {target.experiment!r} already measured this",
                    "tracking": {"logged": True, "uri": target.uri, "experiment": target.experiment,
                                 "run_id": existing, "existing": True}})
    result = run_job(spec, config)
    result.info["fingerprint"] = fp
    return result


def progress_line(job_num: Optional[int], config: dict[str, Any]) -> str:
    """``[job 3/48] gpt2_small|b8|s128|float32|meta  elapsed 12 s, about 3 min left``: the job's number in the
    sweep and an ETA from the sweep's pace so far (the sweep callback leaves its start and size in the env)."""
    from flopsweep.tracking import run_name

    name = run_name(config)
    total, start = os.environ.get(SWEEP_TOTAL_ENV), os.environ.get(SWEEP_START_ENV)
    if job_num is None or not total or not start:
        return f"[job] {name}"
    done, total_n, elapsed = int(job_num), int(total), time.time() - float(start)
    eta = f", about {_duration(elapsed / done * (total_n - done))} left" if done else ""
    return f"[job {done + 1}/{total_n}] {name}  elapsed {_duration(elapsed)}{eta}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _track(cfg: DictConfig, result: Result, folder: Path, job: dict[str, Any]) -> None:
    from flopsweep.tracking import log_job, target_of

    if (result.info.get("tracking") or {}).get("existing"):  # skip_existing: its run is already in the store
        return
    try:
        target = target_of(cfg.tracking, Path.cwd())
    except ConfigError as err:
        result.info["tracking"] = {"logged": False, "error": str(err)}
    else:
        if target is None:
            return
        result.info["tracking"] = log_job(target, result, folder, job)
    result.write(folder / "result.json")
    if not result.info["tracking"]["logged"]:
        print(f"flopsweep: warning: not logged to MLflow ({result.info['tracking']['error']}); the result is in "
              f"{folder}", file=sys.stderr)


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    run_one(cfg)


class SweepSummary(Callback):
    """Refuses a sweep that would time jobs side by side, opens the sweep's parent MLflow run before the jobs (so
    parallel workers never race to create the store; they find its id in the environment, which joblib's workers
    get with their jobs) and, at the end, prints one table of every job, read back from their ``result.json``; a
    job that has none is listed as lost. A sweep that stops before its end closes its run through
    :func:`abandon_sweep`."""

    def __init__(self) -> None:
        self.parent: Optional[str] = None
        self.target = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _open_sweep
        from flopsweep.sweeper import concurrent_timing_error, start_workers
        from flopsweep.tracking import PARENT_ENV, store, target_of

        _open_sweep = self

        try:
            refusal = concurrent_timing_error(config)
        except Exception:  # noqa: BLE001 - a job that cannot be composed: the sweeper's check names it
            refusal = None
        if refusal:  # an exception would be only a warning from Hydra's callback runner: exit, before any store
            print(f"flopsweep: error: {refusal}", file=sys.stderr)
            raise SystemExit(2)
        total = sweep_size(config)
        if total is not None:
            os.environ[SWEEP_TOTAL_ENV] = str(total)
        start_workers(config, total)  # they import what jobs import while this process opens the run, checks values
        try:
            self.target = target_of(config.tracking, Path.cwd())
            if self.target is not None:
                self.parent = store(self.target).start_parent(Path(config.hydra.sweep.dir).resolve(),
                                                              list(config.hydra.overrides.task))
                os.environ[PARENT_ENV] = self.parent
        except Exception as err:  # noqa: BLE001 - jobs still run and record that they were not logged
            print(f"flopsweep: warning: could not open the sweep's MLflow run: {err}", file=sys.stderr)
        os.environ[SWEEP_START_ENV] = str(time.time())  # after the store: its one-off set-up is no job's pace

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from flopsweep.console import summary_table
        from flopsweep.sinks.jobdir import write_csv
        from flopsweep.sweeper import stop_workers
        from flopsweep.tracking import PARENT_ENV, store

        stop_workers()

        sweep_dir = Path(config.hydra.sweep.dir)
        folders = {p.parent for p in sweep_dir.glob("*/result.json")} | {p.parent for p in sweep_dir.glob("*/.hydra")}
        results = [(folder.name, _job_result(folder)) for folder in sorted(folders, key=lambda p: _job_number(p.name))]
        if any_failed(results):
            mark_failed()
        print()
        print(summary_table(results))
        counts = status_counts(results)
        print(f"\n{len(results)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
              f"  |  results: {sweep_dir}")
        if counts["lost"]:
            print("lost: a job's process died before it finished; run the same command with skip_existing=true to "
                  "measure only what is missing")
        if results:
            write_csv(sweep_dir / "summary.csv", [{"job": job, "status": r.status, "error": r.error,
                                                   "model": (r.config.get("model") or {}).get("name"), **r.metrics}
                                                  for job, r in results])
        if self.parent is not None:
            os.environ.pop(PARENT_ENV, None)
            try:
                store(self.target).finish_parent(self.parent, results, sweep_dir / "summary.csv", failed=_failed)
            except Exception as err:  # noqa: BLE001
                print(f"flopsweep: warning: could not close the sweep's MLflow run: {err}", file=sys.stderr)
            print(f"MLflow: {self.target.ui_command()}  (experiment {self.target.experiment!r})")


_open_sweep: Optional[SweepSummary] = None


def abandon_sweep(status: str) -> None:
    """The sweep stops before its end (a swept value that cannot be composed, Ctrl-C): end its workers and mark its
    MLflow run ``status`` (FAILED, KILLED) rather than leave it RUNNING. The jobs that finished keep their runs."""
    from flopsweep.sweeper import stop_workers
    from flopsweep.tracking import store

    stop_workers()
    sweep = _open_sweep
    if sweep is not None and sweep.parent is not None:
        try:
            store(sweep.target).end_parent(sweep.parent, status)
        except Exception as err:  # noqa: BLE001
            print(f"flopsweep: warning: could not close the sweep's MLflow run: {err}", file=sys.stderr)


def sweep_size(config: DictConfig) -> Optional[int]:
    """How many jobs the basic or joblib sweeper will launch: the product of the sweep overrides' lengths, the
    command line's winning over the preset's ``hydra.sweeper.params``. None where it cannot be told."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines = {key: f"{key}={value}" for key, value in params.items()}
    try:
        for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
            lines[override.get_key_element()] = override.input_line
        total = 1
        for override in OverridesParser.create().parse_overrides(list(lines.values())):
            if override.is_sweep_override():
                total *= len(list(override.sweep_string_iterator()))
        return total
    except Exception:  # noqa: BLE001 - a glob or another sweeper's syntax: no count, no ETA
        return None


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


def _job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def _room_for_deep_graphs(limit: int = 256 << 20) -> None:
    """Let the stack grow to 256 MiB (address space; pages are used only as needed). Freeing a long autograd
    chain recurses once per node: ResNet-BK's O(N) recurrence at N >= 3500 overflows the default 8 MiB and
    the process dies of a segfault, taking the rest of the sweep with it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < limit:
        resource.setrlimit(resource.RLIMIT_STACK, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def main() -> None:
    global full_errors
    from hydra.errors import HydraException

    _room_for_deep_graphs()
    # Hydra prints a composition error over many lines (a missing option lists every file of the group): have it
    # raise instead, and say it in one line; HYDRA_FULL_ERROR=1 set by the user still gives the whole story
    full_errors = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _app()
    except (HydraException, OmegaConfBaseException) as err:
        if full_errors:
            raise
        print(f"flopsweep: error: {hydra_error_line(err)}", file=sys.stderr)
        exit_command(2)
    exit_command(1 if _failed else 0)


full_errors = False  # the user asked Hydra for whole errors (HYDRA_FULL_ERROR=1): read by the sweeper too


def hydra_error_line(err: BaseException) -> str:
    """One line of a Hydra or OmegaConf error: its lines joined, OmegaConf's key and type lines left out (the key is
    in the message), the options of a group that has no such option listed after it (less the internal ``_``
    ones; not the search path), and the OmegaConf error that caused it."""
    def lines_of(text: str) -> tuple[list[str], list[str]]:
        kept, options, listing = [], [], False
        for line in (raw.strip() for raw in text.splitlines()):
            if line.startswith("Config search path"):
                break
            if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
                continue
            if line.startswith("Available options in"):
                listing = True
            elif listing:
                options += [line] if not line.startswith("_") else []
            else:
                kept.append(line)
        return kept, options

    kept, options = lines_of(str(err))
    message = " ".join(kept).replace("In 'config': ", "")
    if getattr(err, "override", None):  # a line Hydra's grammar cannot parse
        message = f"{err.override}: {message}"
    if options:
        message += f" (options: {', '.join(options)})"
    if isinstance(err.__cause__, OmegaConfBaseException):
        cause = " ".join(lines_of(str(err.__cause__))[0])
        message += f": {cause}" if cause and cause not in message else ""
    return message
