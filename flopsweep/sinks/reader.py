"""Read back what the sinks wrote: one job's result (from its folder or its MLflow run) and an experiment's runs
as a pandas DataFrame."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from flopsweep.core.errors import ConfigError, masked, nearest, one_line, require
from flopsweep.core.result import Result, Tracking
from flopsweep.sinks.store import SWEEP_TAG, mlflow_client
from flopsweep.sinks.target import target_at


def load_result(ref: str, uri: str) -> Result:
    """A job's result from its folder, its ``result.json``, or its MLflow run id."""
    path = Path(ref)
    if path.is_dir():
        path = path / "result.json"
    if path.is_file():
        return _read_result(path, ref)

    require(len(ref) == 32 and all(c in "0123456789abcdef" for c in ref), "run", ref,
            "is neither a job folder nor an MLflow run id")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no progress bar
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_client(uri, write=False).download_artifacts(ref, "result.json", tmp)
        except Exception as err:  # noqa: BLE001 - one line, naming the run
            raise ConfigError("run", ref, f"no result.json in {masked(uri)}: {one_line(err, 200, kind=False)}") \
                from None
        return _read_result(Path(local), ref)


def load_measured(ref: str, uri: str) -> tuple[Result, Optional[str]]:
    """A measured job's result from its folder, its ``result.json`` or its MLflow run id, as :func:`load_result`; a
    job that ``skip_existing=true`` skipped (its configuration measured already) followed to the run it found, read
    from the store its record names, else from ``uri``. Returns the result and the run it was followed to (None when
    ``ref`` was measured itself); a job skipped for another reason (no room, another resume measuring it) is refused,
    with the reason."""
    result = load_result(ref, uri)
    if result.status != "skipped":
        return result, None
    found = result.tracking
    if found is None or not found.existing or not found.run_id:
        raise ConfigError("run", ref, f"was skipped, not measured ({result.info.get('skipped') or 'no reason'})")
    stores = [found.uri] if found.uri and "***@" not in found.uri else []  # recorded masked: no password to use
    error = None
    for store in dict.fromkeys([*stores, uri]):  # where the sweep found it, then where this command reads
        try:
            measured = load_result(found.run_id, store)
        except ConfigError as err:
            error = err
            continue
        if measured.tracking is None:  # its result.json was logged before its run's id was known: the run read
            measured.tracking = Tracking(True, masked(store), found.experiment, found.run_id)
        return measured, found.run_id
    raise ConfigError("run", ref, f"was skipped: run {found.run_id} measured it, which cannot be read "
                      f"({error.problem if error else 'no store'})")


def _read_result(path: Path, ref: str) -> Result:
    try:
        return Result.read(path)
    except (OSError, ValueError) as err:
        raise ConfigError("run", ref, f"has no readable result.json: {one_line(err, 200, kind=False)}") from None


def load_runs(experiment: str = "flopsweep", sweep: Optional[str] = None, uri: Optional[str] = None,
              store_dir: Optional[str | Path] = None):
    """The job runs of an experiment as a pandas DataFrame, one row per run: ``run_id``, ``run_name``,
    ``status``, ``error``, ``sweep``, every metric (floats) and every config param (numbers as numbers).

    ``sweep`` keeps the runs of one sweep: its folder or the folder's name (``2026-11-22/14-03-07``).
    Read from ``uri``, else the local store under ``store_dir`` where given, else ``MLFLOW_TRACKING_URI``, else
    ``outputs/``'s. A store that is not there, or an experiment it does not have, is a ``LookupError`` in one line
    saying which store was read and which experiments it has, as is a sweep it does not have, naming its sweeps (an
    experiment without job runs, or a sweep without, is an empty frame); a URI that can never work, a
    ``ConfigError`` naming it::

        df = flopsweep.load_runs(experiment="gpt3_family")
        df.pivot_table(index="model.name", values="flops/step")
    """
    import pandas as pd

    uri = target_at(uri, store_dir, experiment).uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():  # nothing to read, or to create
        raise LookupError(f"load_runs: no MLflow store at {uri[len('sqlite:///'):]} to read experiment {experiment!r} "
                          "from (this folder's outputs/ unless store_dir= or uri= says where, or MLFLOW_TRACKING_URI)")
    client = mlflow_client(uri, write=False)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        near = nearest(experiment, names)
        raise LookupError(f"load_runs: experiment {experiment!r} is not in the store {masked(uri)}"
                          + (f" (did you mean {near!r}?)" if near else "") + "; it has "
                          f"{', '.join(repr(n) for n in names) if names else 'none'}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'",
                              max_results=50000)
    sweeps = {r.info.run_id: r.data.tags.get(SWEEP_TAG, "") for r in runs}
    if sweep is not None:
        wanted, known = str(sweep).rstrip("/"), sorted(set(sweeps.values()))
        sweeps = {k: v for k, v in sweeps.items() if v == wanted or v.endswith("/" + wanted)}
        if not sweeps:  # a name mistyped was an empty frame, and the next line's .iloc[0] an IndexError
            names = ["/".join(Path(v).parts[-2:]) for v in known]
            near = nearest(wanted, names)
            raise LookupError(f"load_runs: no sweep {wanted!r} in experiment {experiment!r}"
                              + (f" (did you mean {near!r}?)" if near else "")
                              + f"; its sweeps: {', '.join(names[-5:]) if names else 'none'}"
                              + (f" and {len(names) - 5} before them" if len(names) > 5 else ""))
    rows = []
    for run in client.search_runs([found.experiment_id], filter_string="tags.`flopsweep.kind` = 'job'",
                                  max_results=50000):
        parent = run.data.tags.get("mlflow.parentRunId")
        if sweep is not None and parent not in sweeps:
            continue
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.data.tags.get("status"),
               "error": run.data.tags.get("error") or None, "sweep": sweeps.get(parent),
               "start_time": pd.to_datetime(run.info.start_time, unit="ms")}
        row.update({k: _number_or_text(v) for k, v in run.data.params.items()})
        row.update(run.data.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def _number_or_text(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(value, value)


