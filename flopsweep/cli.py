"""The ``flopsweep`` command: a thin Hydra entry point around resolve -> run_job -> sinks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from flopsweep.config import CONF_DIR, register_configs, resolve
from flopsweep.errors import ConfigError
from flopsweep.result import Result

_failed = False  # set by any job (in-process launchers) or by the sweep summary; read by main()


def _mark_failed() -> None:
    global _failed
    _failed = True


def run_one(cfg: DictConfig) -> Result:
    """Validate and measure one composed config; always returns a Result and writes the job folder."""
    from flopsweep.console import JOB_METRICS, metric_lines
    from flopsweep.job import run_job
    from flopsweep.sinks.jobdir import write_job_folder

    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        spec = resolve(cfg)
    except ConfigError as err:
        result = Result("failed", str(err), config)
    else:
        result = run_job(spec, config)
    folder = Path(HydraConfig.get().runtime.output_dir)
    write_job_folder(result, folder)
    if result.status in ("failed", "oom"):
        _mark_failed()
        print(f"flopsweep: error: {result.error}", file=sys.stderr)
    else:
        print("\n".join(metric_lines(result.metrics, JOB_METRICS)))
    print(f"results: {folder}")
    return result


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    run_one(cfg)


class SweepSummary(Callback):
    """At the end of a multirun, one table of every job, read back from their ``result.json``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from flopsweep.console import summary_table

        sweep_dir = Path(config.hydra.sweep.dir)
        results = []
        for path in sorted(sweep_dir.glob("*/result.json"), key=lambda p: _job_number(p.parent.name)):
            results.append((path.parent.name, Result.read(path)))
        if any(r.status in ("failed", "oom") for _, r in results):
            _mark_failed()
        print()
        print(summary_table(results))
        counts = {s: sum(r.status == s for _, r in results) for s in ("ok", "failed", "oom", "skipped")}
        print(f"\n{len(results)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
              f"  |  results: {sweep_dir}")


def _job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def main() -> None:
    _app()
    sys.exit(1 if _failed else 0)
