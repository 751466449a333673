"""The job folder: ``result.json``, a human-readable ``stats.txt`` and the breakdowns as CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from flopsweep import metrics as M
from flopsweep.console import human, metric_lines, profile_text, size_bytes
from flopsweep.result import Result


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
    from flopsweep.measure.profile import by_depth
    from flopsweep.tracking import run_name

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


def _plain(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def stats_text(result: Result) -> str:
    m = result.metrics
    lines = [f"status: {result.status}"]
    if result.error:
        lines.append(f"error: {result.error}")
    # the five lines of the prior profiler script, same labels (times are medians, not means)
    lines += [
        f"Forward Flops: {_plain(m.get(M.FLOPS_FORWARD))}",
        f"Backward Flops: {_plain(m.get(M.FLOPS_BACKWARD))}",
        f"Model Size (Bytes): {_plain(m.get(M.WEIGHTS_BYTES))}",
        f"Average Forward Time (s): {_plain(m.get(M.TIME_FORWARD))}",
        f"Average Backward Time (s): {_plain(m.get(M.TIME_BACKWARD))}",
        "",
    ]
    lines += metric_lines(m)
    at_peak = result.breakdown.get("memory_at_peak") or {}
    if at_peak:
        total = sum(at_peak.values())
        lines += ["", f"memory alive at the simulated step's peak ({size_bytes(total)}, on meta):"]
        lines += [f"  {category:<16} {size_bytes(n):>10}  {n / total:6.1%}" for category, n in at_peak.items()]
    modules = result.breakdown.get("modules") or []
    if modules:
        lines += ["", "FLOPs by module (inclusive; matmul-class, forward / backward):"]
        for row in modules:
            indent = "  " * row["depth"]
            lines.append(f"  {indent}{row['module']:<{40 - len(indent)}} {human(row['forward_flops']):>10} "
                         f"{human(row['backward_flops']):>10}")
    uncounted = result.breakdown.get("uncounted_ops") or {}
    if uncounted:
        lines += ["", "ops with arithmetic but no formula (not counted): " +
                  ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))]
    return "\n".join(lines) + "\n"
