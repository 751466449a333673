"""Every private Hydra symbol flopsweep uses, in this one file: Hydra's basic sweeper (our sweeper extends it), the
joblib launcher's settings parser (our joblib path builds the same ``joblib.Parallel``) and the submitit launcher's
split of its settings (our Slurm path builds the same executor)."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

__all__ = ["BasicSweeper", "process_joblib_cfg", "JOBLIB_CORE", "submitit_parameters"]

JOBLIB_CORE = "hydra_plugins.hydra_joblib_launcher._core"  # what a joblib worker imports to run a job


def process_joblib_cfg(settings: dict) -> None:
    """Hydra's joblib launcher's own rewrite of ``hydra.launcher`` into ``joblib.Parallel``'s arguments."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg as rewrite

    rewrite(settings)


def submitit_parameters(params: dict) -> tuple[dict, dict]:
    """Hydra's submitit launcher's split of ``hydra.launcher`` into submitit's executor's arguments and its
    parameters (the keys submitit does not share among its clusters prefixed ``slurm_``), as its ``launch`` does."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    init = {"folder": params["submitit_folder"], "slurm_max_num_timeout": params.get("max_num_timeout", 0)}
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    settings = {key if key in shared else f"slurm_{key}": value for key, value in params.items()
                if key not in ("submitit_folder", "max_num_timeout")}
    return init, settings
