"""The job folder: ``result.json``, a human-readable ``stats.txt`` and the breakdowns as CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from flopsweep.core.profile import by_depth
from flopsweep.core.result import Result
from flopsweep.core.text import profile_text, stats_text
from flopsweep.sinks.identity import run_name


def write_job_folder(result: Result, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result.write(folder / "result.json")
    (folder / "stats.txt").write_text(stats_text(result))
    for name in ("modules", "ops"):
        rows = result.breakdown.get(name)
        if rows:
            write_csv(folder / f"{name}.csv", rows)
    write_profile(result, folder)


def write_profile(result: Result, folder: Path) -> list[Path]:
    """``profile.txt``, ``profile.csv`` (every module) and ``profile_depth.csv``, if the job has a profile."""
    rows = result.breakdown.get("profile")
    if not rows:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "profile.txt", folder / "profile.csv", folder / "profile_depth.csv"]
    paths[0].write_text(profile_text(rows, run_name(result.config)))
    write_csv(paths[1], rows)
    write_csv(paths[2], by_depth(rows))
    return paths


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
