"""The ``flopsweep`` command: a thin Hydra entry point around resolve -> run_job -> sinks."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from flopsweep.config import CONF_DIR, register_configs, resolve
from flopsweep.errors import ConfigError
from flopsweep.result import Result, status_counts

_failed = False  # set by any job (in-process launchers) or by the sweep summary; read by main()


def _mark_failed() -> None:
    global _failed
    _failed = True


def run_one(cfg: DictConfig) -> Result:
    """Validate and measure one composed config; always returns a Result and writes the job folder."""
    from flopsweep.console import JOB_METRICS, metric_lines
    from flopsweep.job import run_job
    from flopsweep.sinks.jobdir import write_job_folder

    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    try:
        spec = resolve(cfg)
    except ConfigError as err:
        result = Result("failed", str(err), config)
    else:
        # record the model as built: a JSON file, batch.image_size (ViT) or batch.seq_len (ResNet-BK) can change it
        config["model"] = {**config["model"], **dataclasses.asdict(spec.model)}
        result = run_job(spec, config)
    from flopsweep.tracking import fingerprint

    result.info["fingerprint"] = fingerprint(result)
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    write_job_folder(result, folder)  # always first: nothing measured is lost whatever the store does
    if result.status in ("failed", "oom"):
        _mark_failed()
        print(f"flopsweep: error: {result.error}", file=sys.stderr)
    else:
        print("\n".join(metric_lines(result.metrics, JOB_METRICS)))
    print(f"results: {folder}")
    job = {"job_num": OmegaConf.select(hydra_cfg.job, "num", default=None, throw_on_missing=False),
           "overrides": hydra_cfg.job.override_dirname}
    _track(cfg, result, folder, job)
    return result


def _track(cfg: DictConfig, result: Result, folder: Path, job: dict[str, Any]) -> None:
    from flopsweep.tracking import log_job, target_of

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
    """Opens the sweep's parent MLflow run before the jobs (so parallel workers never race to create the
    store) and, at the end, prints one table of every job, read back from their ``result.json``."""

    def __init__(self) -> None:
        self.parent: Optional[str] = None
        self.target = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from flopsweep.tracking import PARENT_ENV, Store, target_of

        try:
            self.target = target_of(config.tracking, Path.cwd())
            if self.target is not None:
                self.parent = Store(self.target).start_parent(Path(config.hydra.sweep.dir),
                                                              list(config.hydra.overrides.task))
                os.environ[PARENT_ENV] = self.parent
        except Exception as err:  # noqa: BLE001 - jobs still run and record that they were not logged
            print(f"flopsweep: warning: could not open the sweep's MLflow run: {err}", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from flopsweep.console import summary_table
        from flopsweep.sinks.jobdir import write_csv
        from flopsweep.tracking import PARENT_ENV, Store

        sweep_dir = Path(config.hydra.sweep.dir)
        results = []
        for path in sorted(sweep_dir.glob("*/result.json"), key=lambda p: _job_number(p.parent.name)):
            results.append((path.parent.name, Result.read(path)))
        if any(r.status in ("failed", "oom") for _, r in results):
            _mark_failed()
        print()
        print(summary_table(results))
        counts = status_counts(results)
        print(f"\n{len(results)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
              f"  |  results: {sweep_dir}")
        if results:
            write_csv(sweep_dir / "summary.csv", [{"job": job, "status": r.status, "error": r.error,
                                                   "model": (r.config.get("model") or {}).get("name"), **r.metrics}
                                                  for job, r in results])
        if self.parent is not None:
            os.environ.pop(PARENT_ENV, None)
            try:
                Store(self.target).finish_parent(self.parent, results, sweep_dir / "summary.csv")
            except Exception as err:  # noqa: BLE001
                print(f"flopsweep: warning: could not close the sweep's MLflow run: {err}", file=sys.stderr)
            print(f"MLflow: {self.target.ui_command()}  (experiment {self.target.experiment!r})")


def _job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def main() -> None:
    _app()
    sys.exit(1 if _failed else 0)
