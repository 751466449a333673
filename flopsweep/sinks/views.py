"""What MLflow's UI shows of a sweep beyond the numbers: the runs table it opens on, a saved view of the sweep's jobs
(and nothing else) with the columns a person compares first, the console summary's figures and the keys the sweep
varies, smallest step first; and the runs' descriptions, what the console said of each job and of the sweep.

MLflow's UI keeps a view as an experiment tag ``mlflow.sharedViewState.<key>``: a JSON envelope (``name``,
``createdAt``, ``updatedAt``, ``state``) whose ``state`` is the JSON of the runs page (``selectedColumns`` with
column keys like ``metrics.`flops/step```, ``searchFilter``, ``orderByKey``...). The page
``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens it (the ``/runs`` matters: without it the redirect
drops the key), and the "Views" menu lists it. Read from MLflow 3.17's UI bundle and checked in a browser
(``benchmarks/screenshots.sh``). The view filters on the parent run rather than expanding it: the UI does not
take expanded rows from a view, and a collapsed sweep shows no job in the chart view.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flopsweep.core import metrics as M
from flopsweep.core.result import Result
from flopsweep.core.text import job_lines, summary_columns, summary_table
from flopsweep.sinks.identity import GROUP_NAMES, flatten, run_name

VIEW_TAG = "mlflow.sharedViewState."
NOTE_TAG = "mlflow.note.content"  # a run's (or an experiment's) description on its page, in Markdown
SECTION = "flopsweep-key-figures"  # the chart section of the figures a sweep compares
# a parallel layout's figures (a layout search, +sweep=layouts), first in its view, fastest layout first
LAYOUT_FIGURES = (M.TOKENS_PER_S_PER_GPU_PREDICTED, M.MFU_PREDICTED, M.PARALLEL_MEMORY_PER_GPU, M.PARALLEL_FITS,
                  M.TIME_STEP_PREDICTED)
OPTIONS = {f"{group}.{field}" for group, field in GROUP_NAMES.items()}  # model.name, dtype.name, ...


def view_key(parent_id: str) -> str:
    return f"flopsweep-{parent_id}"


def shown_metrics(results: list[Result]) -> list[str]:
    """The metric of each of the console summary's figure columns (:func:`~flopsweep.core.text.summary_columns`:
    a generation sweep's own, those some job has a figure for) that any of ``results`` has."""
    return [key for _, key in summary_columns(results) if any(r.metrics.get(key) is not None for r in results)]


def varying_params(results: list[Result], most: int = 8) -> list[str]:
    """The config keys whose values differ between the measured ``results`` (all of them if none was): a config
    group's option where it varies (``model.name``, not every key of every model), else the group's keys that do;
    none without results."""
    ok = [r for r in results if r.status in ("ok", "skipped")] or results  # skipped: measured by an earlier sweep
    if not ok:
        return []
    flat = [flatten(r.config or {}) for r in ok]
    keys = [k for k in flat[0] if all(k in f for f in flat) and len({str(f[k]) for f in flat}) > 1]
    options = [k for k in keys if k in OPTIONS]
    varied = {k.partition(".")[0] for k in options}
    return (options + [k for k in keys if k not in options and k.partition(".")[0] not in varied])[:most]


def sweep_view(parent_id: str, name: str, results: list[Result]) -> tuple[str, str]:
    """The experiment tag (name, value) of a sweep's view: its jobs' runs (:func:`jobs_filter`), the run name and
    ``flopsweep.name`` tag, the keys that vary, then the figures; in order of the first figure (step FLOPs); a sweep
    of parallel layouts by predicted tokens/s a GPU, fastest first, with MFU, memory a GPU and the step beside."""
    metrics = shown_metrics(results)
    order = next((k for k in (M.FLOPS_STEP, M.FLOPS_FORWARD, M.PARAMS) if k in metrics), None)
    ascending = True
    if any(r.metrics.get(M.TOKENS_PER_S_PER_GPU_PREDICTED) is not None for r in results):  # layouts: fastest first
        first = [k for k in LAYOUT_FIGURES if any(r.metrics.get(k) is not None for r in results)]
        metrics, order, ascending = first + [k for k in metrics if k not in first], first[0], False
    columns = ["tags.`flopsweep.name`", *(f"params.`{k}`" for k in varying_params(results)),
               *(f"metrics.`{k}`" for k in metrics)]
    state: dict[str, Any] = {
        "searchFilter": jobs_filter(parent_id, results), "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "orderByKey": f"metrics.`{order}`" if order else "attributes.start_time", "orderByAsc": ascending,
        "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False,
        "isAccordionReordered": True,  # sections in the order given, the UI's own after them
        # the chart view: the same figures first, a bar per job, in their own section above the UI's own sections
        "compareRunSections": [{"uuid": SECTION, "name": "key figures", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "compareRunCharts": [{"uuid": f"flopsweep-{k}", "type": "BAR", "runsCountToCompare": max(10, len(results)),
                              "metricSectionId": SECTION, "deleted": False, "isGenerated": False, "metricKey": k,
                              "displayName": k} for k in metrics]}
    now = int(time.time() * 1000)
    value = json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})
    return VIEW_TAG + view_key(parent_id), value


def jobs_filter(parent_id: str, results: list[Result], most: int = 300) -> str:
    """The runs search that finds a sweep's jobs: its children; in a resumed sweep, whose skipped jobs' runs are an
    earlier sweep's, every job's run by its id (``most`` of them at most: the view is a tag of 20,000 characters)."""
    tracking = [r.tracking for r in results if r.tracking is not None]
    ids = [t.run_id for t in tracking if t.run_id]
    if any(t.existing for t in tracking) and len(ids) <= most:
        return "attributes.run_id IN (" + ", ".join(f"'{i}'" for i in ids) + ")"
    return f"tags.`mlflow.parentRunId` = '{parent_id}'"


def job_note(result: Result) -> str:
    """A job run's description: its full name and what the console said of it (the figures for its mode)."""
    said = [f"error: {result.error}"] if result.error else \
        [f"skipped: {result.info['skipped']}"] if result.info.get("skipped") else job_lines(result)
    return "```\n" + "\n".join([run_name(result.config or {}), *said]) + "\n```"


def sweep_note(overrides: str, results: list[tuple[str, Result]], most: int = 40, limit: int = 8000) -> str:
    """A sweep run's description: the command's overrides and the console's table of its jobs (``most`` of them, as
    many as a tag's ``limit`` of 8,000 characters holds: a layout search's wide rows made 10,000, which MLflow cut with
    a warning; the rest are in summary.csv beside it)."""
    table = summary_table(results[:most], tuple(varying_params([r for _, r in results]))).splitlines()
    head = f"`flopsweep {overrides}`\n\n```\n"
    shown = len(table) - 2  # the header and its rule, then a row a job
    while True:
        more = f"\n... {len(results) - shown} more jobs: summary.csv" if shown < len(results) else ""
        note = head + "\n".join(table[:2 + shown]) + more + "\n```"
        if len(note) <= limit or shown == 0:
            return note[:limit]
        shown -= 1