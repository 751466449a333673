"""The sweep's plan, read once before it launches: every job's overrides as Hydra's basic sweeper will expand them,
how many the launcher runs at once, which of them time, and the check that refuses to time jobs side by side."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from flopsweep.sweep._hydra import BasicSweeper

FORCE_KEY = "hydra.sweeper.allow_concurrent_timing"

# a job's device and measure.time come from these overrides only; the other groups (package model, batch, ...)
# cannot set them, so jobs that differ only in those need one composition between them
_CANNOT_SET_TIMING = ("model", "batch", "dtype", "optimizer", "train", "tracking", "skip_existing", "hydra")


@dataclass
class SweepPlan:
    """A sweep's jobs (``None`` where they cannot be told: an interval or another sweeper's syntax) and, once asked,
    how many of them time and on which devices."""

    config: DictConfig
    jobs: Optional[list[list[str]]]
    _timing: Optional[tuple[int, set[str]]] = field(default=None, repr=False)

    @classmethod
    def of(cls, config: DictConfig) -> "SweepPlan":
        return cls(config, sweep_jobs(config))

    @property
    def size(self) -> Optional[int]:
        return len(self.jobs) if self.jobs is not None else None

    @property
    def varying(self) -> list[str]:
        """The keys whose values differ between the jobs, in the order the sweep gives them (what tells its runs
        apart: ``model``, ``batch.seq_len``); none where the jobs cannot be told here."""
        values: dict[str, set[str]] = {}
        for overrides in self.jobs or []:
            for override in overrides:
                key, _, value = override.partition("=")
                values.setdefault(key.lstrip("+~"), set()).add(value)
        return [key for key, seen in values.items() if len(seen) > 1 and not key.startswith("hydra")]

    def timing(self) -> tuple[int, set[str]]:
        """How many jobs time, and on which devices: one job composed for each combination of the overrides that
        can set the device or ``measure.time`` (without the jobs or Hydra's loader: judged by the sweep's config)."""
        if self._timing is None:
            loader = _config_loader()
            groups: dict[tuple[str, ...], list[list[str]]] = {}
            for overrides in self.jobs or [[]]:
                groups.setdefault(tuple(o for o in overrides if _may_set_timing(o)), []).append(overrides)
            timing, devices = 0, set()
            for members in groups.values():
                known = loader is not None and self.jobs is not None
                job = loader.load_sweep_config(self.config, list(members[0])) if known else self.config
                device = getattr(job.device.type, "value", job.device.type)  # the schema's enum
                if device != "meta" and job.measure.time:
                    timing += len(members)
                    devices.add(str(device))
            self._timing = (timing, devices)
        return self._timing


def sweep_jobs(config: DictConfig) -> Optional[list[list[str]]]:
    """Every job's overrides, as the basic sweeper expands them: the preset's ``hydra.sweeper.params``, the command
    line's values replacing them key by key. None where they cannot be told here."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create(config_loader=_config_loader()).parse_overrides(lines)
        return [job for chunk in BasicSweeper.split_arguments(overrides, None) for job in chunk]
    except Exception:  # noqa: BLE001 - a glob without Hydra's config repository, an interval: not told here
        return None


def empty_sweep_error(plan: SweepPlan) -> Optional[str]:
    """One line naming the swept value that has no values (``batch.seq_len=range(16,16)``, ``model=glob(nope*)``), if
    the sweep has no jobs; None if it has some (or they cannot be told here)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if plan.jobs is None or plan.jobs:
        return None
    params = OmegaConf.select(plan.config, "hydra.sweeper.params", default=None) or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(plan.config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=_config_loader())
    empty = [line for line in lines if (found := parser.parse_overrides([line])[0]).is_sweep_override()
             and not list(found.sweep_string_iterator())]
    return f"{', '.join(empty) or ' '.join(lines)}: sweeps no value, so the sweep has no job"


def _config_loader() -> Any:
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None


def _may_set_timing(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return re.split(r"[./]", key, maxsplit=1)[0] not in _CANNOT_SET_TIMING


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


def concurrent_timing_error(plan: SweepPlan) -> Optional[str]:
    """One line naming the keys, if this sweep would time jobs side by side on one machine: timings taken while
    other jobs run are not the model's. None where it would not, or where ``hydra.sweeper.allow_concurrent_timing``
    forces it."""
    config = plan.config
    if OmegaConf.select(config, FORCE_KEY, default=False):
        return None
    at_once = jobs_at_once(config.hydra.launcher, plan.size)
    if at_once == 1:
        return None
    timing, devices = plan.timing()
    if not timing:
        return None
    choice = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/launcher", "?")
    if launcher_class(config.hydra.launcher) == "JoblibLauncher":
        key, runs = f"hydra.launcher.n_jobs={config.hydra.launcher.n_jobs}", f"runs {at_once} jobs at once"
    else:
        key, runs = f"hydra/launcher={choice}", (f"runs {at_once} jobs at once" if at_once else
                                                 "may run jobs at once")
    of = f"{timing} of the {plan.size} jobs" if plan.size is not None else "the jobs"
    return (f"{key}: {of} time on {'/'.join(sorted(devices))} (measure.time=true) and "
            f"this launcher {runs}, which distorts the timings; count only (device=meta or measure.time=false), "
            f"run one job at a time, or force it with {FORCE_KEY}=true")
