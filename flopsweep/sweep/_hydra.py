"""Every private Hydra symbol flopsweep uses, in this one file: Hydra's basic sweeper (our sweeper extends it) and
the joblib launcher's settings parser (our joblib path builds the same ``joblib.Parallel``)."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

__all__ = ["BasicSweeper", "process_joblib_cfg", "JOBLIB_CORE"]

JOBLIB_CORE = "hydra_plugins.hydra_joblib_launcher._core"  # what a joblib worker imports to run a job


def process_joblib_cfg(settings: dict) -> None:
    """Hydra's joblib launcher's own rewrite of ``hydra.launcher`` into ``joblib.Parallel``'s arguments."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg as rewrite

    rewrite(settings)
