"""A sweep's job folders, as Hydra makes them: found by the overrides Hydra saves in each, what state each job is
in, and a ``failed`` result for a job that could not record its own (it could not be composed, or Slurm ended it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from flopsweep.core.console import error
from flopsweep.core.result import Result


def record_uncomposable(sweep_dir: Path, job: int, overrides: Sequence[str], why: str) -> None:
    """A job folder with a ``failed`` result for a job that Hydra could not compose: the sweep's summary, exit status
    and MLflow run count it, with the overrides to fix."""
    record_failed(sweep_dir, job, overrides, f"cannot be composed: {why}")


def record_failed(sweep_dir: Path, job: int, overrides: Sequence[str], reason: str) -> None:
    """A ``failed`` result for a job that could not record itself, in its folder (``{job}_{model}`` where Hydra made
    none): said, and counted by the sweep's summary and exit status."""
    error(f"job {job} ({' '.join(overrides)}) {reason}")
    (folder,) = job_folders(sweep_dir, [overrides])
    folder = folder or sweep_dir / f"{job}_{_model_of(overrides)}"
    folder.mkdir(parents=True, exist_ok=True)
    Result("failed", reason, {"model": {"name": _model_of(overrides)}, "overrides": list(overrides)}).write(
        folder / "result.json")


def _model_of(overrides: Sequence[str]) -> str:
    """The model a job's overrides choose, for its folder's name (``job`` where they choose none)."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "job")


def job_states(sweep_dir: Path, batch: Sequence[Sequence[str]]) -> list[str]:
    """For each job: ``done`` (its folder has its result, logged unless tracking=none), ``started`` (Hydra made its
    folder: the job was running, or was killed while logging) or ``waiting``."""
    return ["waiting" if folder is None else "done" if _finished(folder / "result.json") else "started"
            for folder in job_folders(sweep_dir, batch)]


def job_folders(sweep_dir: Path, batch: Sequence[Sequence[str]]) -> list[Optional[Path]]:
    """Each job's folder, or None where Hydra has not made it yet: jobs are matched to folders by the overrides
    Hydra saved in ``.hydra/``."""
    import yaml

    folders: dict[tuple[str, ...], list[Path]] = {}
    for saved in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        key = tuple(yaml.safe_load(saved.read_text()) or [])
        folders.setdefault(key, []).append(saved.parent.parent)
    found = (folders.get(tuple(o for o in overrides if not _is_hydra(o))) for overrides in batch)
    return [same.pop(0) if same else None for same in found]


def _finished(path: Path) -> bool:
    result = Result.read_or_none(path)  # none, or cut off mid-write
    if result is None:
        return False
    return result.tracking is not None or (result.config.get("tracking") or {}).get("kind") == "none"


def _is_hydra(override: str) -> bool:
    return re.match(r"[+~]*hydra[./]", override) is not None


def job_number(name: str) -> int:
    """A job folder's number in its sweep (``12_llama3_1_8b``: 12); a folder named otherwise sorts after them."""
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30
