"""How a job is recorded, wherever it was measured (a sweep's job, :class:`flopsweep.meter`, ``flopsweep-sync``): its
folder written first, then its run logged, then where it went (or why not) noted in its ``result.json``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from flopsweep.core.result import Result, Tracking
from flopsweep.sinks.jobdir import write_job_folder
from flopsweep.sinks.store import log_job
from flopsweep.sinks.target import Target


def record(result: Result, folder: Path, target: Optional[Target], job: dict[str, Any],
           parent_id: Optional[str] = None, *, folder_written: bool = False,
           written: Optional[Callable[[], None]] = None, noted: bool = True) -> Optional[Tracking]:
    """Write ``folder`` (unless ``folder_written``: a sync's), call ``written``, log the run to ``target`` (None: not
    logged) as a child of the run ``parent_id`` (its sweep's) tagged with ``job``, and note in ``result.json`` where it
    went or why not; returns that (``result.tracking``). The store never raises here. A folder that cannot be written
    raises its OSError after the run is logged with the files it has (a store with room keeps the numbers); a
    ``result.json`` that cannot be rewritten raises after the run is logged (the one before, without where, stays).
    Not ``noted``: ``result.json`` keeps the store it names (a sync to another store, as a copy)."""
    try:
        if not folder_written:
            write_job_folder(result, folder)
    except OSError:
        if target is not None:
            result.tracking = log_job(target, result, folder, job, parent_id)
        raise
    if written is not None:
        written()
    if target is None:
        return result.tracking
    tracking = log_job(target, result, folder, job, parent_id)
    tracking = dataclasses.replace(tracking, synced=bool(job.get("synced"))) if tracking.logged else tracking
    if not noted:
        return tracking
    result.tracking = tracking
    result.write(folder / "result.json")
    return result.tracking
