"""The job folder: ``result.json``, a human-readable ``stats.txt`` and the breakdowns as CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from flopsweep.core.files import write_whole
from flopsweep.core.profile import by_depth
from flopsweep.core.result import Result
from flopsweep.core.text import profile_text, stats_text, unhooked_forward
from flopsweep.sinks.identity import run_name


def write_job_folder(result: Result, folder: Path) -> None:
    """Every file whole (:func:`~flopsweep.core.files.write_whole`), ``result.json`` last: a folder with a
    ``result.json`` has all the others."""
    folder.mkdir(parents=True, exist_ok=True)
    write_whole(folder / "stats.txt", stats_text(result))
    for name in ("modules", "ops"):
        rows = result.breakdown.get(name)
        if rows:
            write_csv(folder / f"{name}.csv", rows)
    write_profile(result, folder)
    result.write(folder / "result.json")


def write_profile(result: Result, folder: Path) -> list[Path]:
    """``profile.txt``, ``profile.csv`` (every module) and ``profile_depth.csv``, if the job has a profile."""
    rows = result.breakdown.get("profile")
    if not rows:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "profile.txt", folder / "profile.csv", folder / "profile_depth.csv"]
    write_whole(paths[0], profile_text(rows, run_name(result.config), timed_forward=unhooked_forward(result)))
    write_csv(paths[1], rows)
    write_csv(paths[2], by_depth(rows))
    return paths


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The rows as CSV, written whole; the columns are every key of every row, in the order they first appear (rows
    differ: a skipped or failed job has fewer metrics than a measured one), a key a row lacks left empty."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_whole(path, text.getvalue())
