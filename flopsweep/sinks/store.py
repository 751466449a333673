"""Write to MLflow: the store (:class:`Store`: one run per job, a parent run per sweep, a projection's run) at a
:class:`~flopsweep.sinks.target.Target`, and logging that never raises. Tracking never measures, and a tracking
failure never loses a result: the job folder is written first, and a store that fails is recorded in it.

``mlflow`` is imported only in ``flopsweep.sinks`` and when something is logged or read: ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from flopsweep.core import metrics as M
from flopsweep.core.errors import is_number, masked, one_line
from flopsweep.core.result import PredictedBy, Result, Tracking, any_failed, status_counts
from flopsweep.core.shape import shape_of
from flopsweep.sinks import health
from flopsweep.sinks.identity import (common_tags, experiment_description, fingerprint_of, flatten, run_name,
                                      sweep_name)
from flopsweep.sinks.local_store import fast_local_commits, local_store_lock
from flopsweep.sinks.target import Target, masked_text
from flopsweep.sinks.views import NOTE_TAG, job_note, sweep_note, sweep_view, view_key

# a run logged whole is FINISHED (or FAILED: a failed job's run); one left RUNNING was cut off midway
LOGGED = "attributes.status != 'RUNNING'"
UNFINISHED = "attributes.status = 'RUNNING'"
# a job's MLflow status: skipped for lack of memory is KILLED, not FINISHED, so that skip_existing=true runs it
# again (when there is room) instead of taking it for measured; its tag `status` says skipped, `error` why
RUN_STATUS = {"ok": "FINISHED", "skipped": "KILLED", "interrupted": "KILLED"}
SWEEP_TAG = "flopsweep.sweep"
PID_TAG = "flopsweep.pid"  # the sweep's process, to tell a sweep that died from one that runs
FINGERPRINT_TAG = "flopsweep.fingerprint"
# one name per figure of the model's shape across families: a filter or a chart's axis spans them all; the family's
# own keys stay params
SHAPE_METRICS = {M.CONFIG_WIDTH: "width", M.CONFIG_LAYERS: "layers", M.CONFIG_HEADS: "heads"}
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # the UI's classic runs view, not GenAI's


class Store:
    """One MLflow store and experiment (a :class:`Target`): the runs a sweep logs, finds and closes there."""

    def __init__(self, target: Target):
        self.target = target
        self._experiment_id: Optional[str] = None
        if not target.uri.startswith("sqlite:///"):
            self.client = mlflow_client(target.uri)
            return
        fast_local_commits(target.uri[len("sqlite:///"):])
        with local_store_lock(target.uri):  # MLflow makes a new store's schema on first use: one process at a time
            self.client = mlflow_client(target.uri)
            self.client.search_experiments(max_results=1)

    def experiment_id(self) -> str:
        """The experiment's id, made if the store lacks it. The first use of a local store makes its schema: both
        under a lock on the store's file, so that processes started at once (sweeps, workers, syncs) neither make
        the schema twice (which leaves the store broken for good) nor the experiment twice."""
        if self._experiment_id is None:
            with local_store_lock(self.target.uri):
                found = self.client.get_experiment_by_name(self.target.experiment)
                if found is None:
                    self._experiment_id = self.client.create_experiment(
                        self.target.experiment, artifact_location=self.target.artifact_root,
                        tags={**EXPERIMENT_TAGS, NOTE_TAG: experiment_description()})
                else:
                    self._experiment_id = found.experiment_id
                    if "mlflow.experimentKind" not in found.tags:  # made by an older flopsweep, or by hand
                        for key, value in EXPERIMENT_TAGS.items():
                            self.client.set_experiment_tag(found.experiment_id, key, value)
        return self._experiment_id

    def find_run(self, tag: str, value: str, where: str = "") -> Optional[str]:
        """The id of a run of this experiment tagged ``tag=value`` (and meeting ``where``, a filter clause)."""
        query = f"tags.`{tag}` = '{value}'" + (f" and {where}" if where else "")
        runs = self.client.search_runs([self.experiment_id()], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def sweep_run(self, sweep: str | Path) -> Optional[str]:
        """The parent run of a sweep: by its folder as the sweep tags it (absolute), or as older sweeps did (relative
        to the working directory)."""
        found = self.find_run(SWEEP_TAG, str(sweep))
        if found is None and Path(sweep).is_absolute():
            try:
                found = self.find_run(SWEEP_TAG, str(Path(sweep).relative_to(Path.cwd())))
            except ValueError:
                pass
        return found

    def delete_unfinished(self, fingerprint_: str) -> int:
        """Delete the runs of this fingerprint left RUNNING: a store that failed in the middle of logging a job
        leaves one, and the job is logged again whole. Returns how many."""
        runs = self.client.search_runs([self.experiment_id()],
                                       filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint_}' and {UNFINISHED}")
        for run in runs:
            self.client.delete_run(run.info.run_id)
        return len(runs)

    def start_parent(self, sweep_dir: Path, overrides: list[str]) -> str:
        tags = {SWEEP_TAG: str(sweep_dir), "flopsweep.kind": "sweep", PID_TAG: str(os.getpid()),
                "flopsweep.overrides": masked(" ".join(overrides))[:5000], **common_tags()}
        name = sweep_name(sweep_dir, overrides, self.target.experiment)
        return self.client.create_run(self.experiment_id(), run_name=name, tags=tags).info.run_id

    def finish_parent(self, run_id: str, results: list[tuple[str, Result]], summary_csv: Path,
                      failed: bool = False, status: Optional[str] = None) -> Optional[str]:
        """Log the sweep's job counts and summary (if any job left a folder), save the view of its jobs in the
        experiment (:mod:`flopsweep.sinks.views`) and end its run: ``status`` if given (KILLED: interrupted), else
        FAILED if a job failed or ``failed`` (the sweep itself did: its launcher stopped), else FINISHED. Returns
        the view's key, None where no job left a result."""
        from mlflow.entities import Metric

        try:  # whatever fails here, the run is ended
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(f"jobs/{s}", n, now, 0)
                                                   for s, n in status_counts(results).items()])
            if summary_csv.exists():
                self.client.log_artifact(run_id, str(summary_csv))
            if results:
                run = self.client.get_run(run_id)
                self.client.set_experiment_tag(self.experiment_id(), *sweep_view(run_id, run.info.run_name,
                                                                                 [r for _, r in results]))
                self.client.set_tag(run_id, NOTE_TAG, sweep_note(run.data.tags.get("flopsweep.overrides", ""),
                                                                 results))
        finally:
            self.end_parent(run_id, status or ("FAILED" if failed or any_failed(results) else "FINISHED"))
        return view_key(run_id) if results else None

    def end_parent(self, run_id: str, status: str) -> None:
        """End the sweep's run as ``status`` (FINISHED, FAILED, KILLED), logging nothing more."""
        self.client.set_terminated(run_id, status)

    def delete_run(self, run_id: str) -> None:
        """Delete a run (MLflow's deleted lifecycle, as the UI's delete)."""
        self.client.delete_run(run_id)

    def delete_children_except(self, parent_id: str, keep: set[str]) -> int:
        """Delete the job runs of a sweep whose ids are not in ``keep`` (the runs its jobs' folders name): runs a
        killed worker left RUNNING, and runs it logged whole but was killed before it recorded them in the job's
        folder. Those jobs run again and log themselves again. Returns how many were deleted."""
        children, token = [], None
        while True:  # every page first: a deleted run leaves the search, which pages by offset
            page = self.client.search_runs([self.experiment_id()], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                           max_results=1000, page_token=token)
            children += [run.info.run_id for run in page if run.info.run_id not in keep]
            token = page.token
            if not token:
                break
        for run_id in children:
            self.client.delete_run(run_id)
        return len(children)

    def log_job(self, result: Result, folder: Path, job: dict[str, Any], parent_id: Optional[str]) -> str:
        from mlflow.entities import Metric, Param

        config, predicted_by = result.config or {}, result.predicted_by or PredictedBy()
        tags = {"status": result.status, "error": (result.error or "")[:5000], "flopsweep.kind": "job",
                FINGERPRINT_TAG: fingerprint_of(result),
                "flopsweep.job_folder": str(folder), **common_tags(),
                **{f"flopsweep.{k}": str(v) for k, v in job.items()},
                "device_name": result.device_name or "",
                # the calibration profile that predicted its step (its run in experiment 'calibration' has this digest)
                "flopsweep.calibration": predicted_by.digest or "",
                "flopsweep.predicted_for": predicted_by.part or "",
                "flopsweep.name": run_name(config),  # the whole name; the run's own may be the sweep's short one
                "mlflow.parentRunId": parent_id or "",
                NOTE_TAG: job_note(result)}
        tags = {k: masked(v) for k, v in tags.items() if v not in ("", None, "None")}  # none empty, no password
        started, ended = _job_times(result)
        run = self.client.create_run(self.experiment_id(), run_name=result.info.get("run_name") or run_name(config),
                                     tags=tags, start_time=started)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        flat = flatten(config)
        metrics = [Metric(k, float(v), now, 0) for k, v in result.metrics.items() if is_number(v)]
        shape = shape_of(result).to_dict()
        metrics += [Metric(name, float(shape[field]), now, 0) for name, field in SHAPE_METRICS.items()
                    if shape[field] is not None]
        metrics += [Metric(name, float(value), at, step)  # MLflow's system metrics view: a point each sample
                    for step, (at, values) in enumerate(result.system_metrics) for name, value in values.items()]
        params = [Param(k, masked(str(v))[:6000]) for k, v in flat.items()  # a store's password masked
                  if "=" not in k and "," not in k and v is not None and v != ""]  # no 'None' literals
        for start in range(0, max(len(params), len(metrics), 1), 100):  # MLflow's batch limits
            self.client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100])
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 0):  # not an empty log
            relative, text = str(path.parent.relative_to(folder)), masked_text(path)
            if text is None:
                self.client.log_artifact(run_id, str(path), None if relative == "." else relative)
            else:  # a copy without the password of a store's address
                self.client.log_text(run_id, text, str(path.relative_to(folder)))
        if not (folder / "result.json").exists():  # a full disk: the result from memory, that nothing is lost
            self.client.log_text(run_id, masked(result.to_json()), "result.json")
        self.client.set_terminated(run_id, RUN_STATUS.get(result.status, "FAILED"), end_time=ended)
        return run_id


def _job_times(result: Result) -> tuple[Optional[int], Optional[int]]:
    """The job's own start and end (ms), as it recorded them: a run logged after the job shows its real duration."""
    job = result.job_times
    if job is None:
        return None, None
    return (int(job.start * 1000) if is_number(job.start) else None,
            int(job.end * 1000) if is_number(job.end) else None)


def mlflow_client(uri: str, write: bool = True):
    """MLflow's client for ``uri``, once the store is found usable (:func:`~flopsweep.sinks.health.check`, else
    :class:`~flopsweep.sinks.health.StoreUnusable`); a request that gets no answer costs seconds, not MLflow's default
    minutes of retries."""
    health.check(uri, write)
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # schema creation talks at INFO; keep the console for results (set after
        logging.getLogger(name).setLevel(logging.WARNING)  # importing mlflow, which sets its own level)
    # a database error (a full disk) is logged with its traceback before MLflow raises it: flopsweep says it in a line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(health.CHECK_SECONDS)))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # its "View run" line a job, password too
    return MlflowClient(tracking_uri=uri)


def store(target: Target) -> Store:
    """This process's :class:`Store` for ``target``: a sweep's jobs share its client and experiment id.
    :class:`~flopsweep.sinks.health.StoreUnusable` for a store found unusable in this sweep."""
    health.check(target.uri)
    return _store(target)


@functools.lru_cache(maxsize=8)
def _store(target: Target) -> Store:
    return Store(target)


def log_job(target: Target, result: Result, folder: Path, job: dict[str, Any],
            parent_id: Optional[str] = None) -> Tracking:
    """Log one job, a child of the run ``parent_id`` (its sweep's) if given; never raises. Returns where it went, or
    why not, for ``result.tracking``. A store found unusable in this sweep is not tried again (``known``: the sweep
    said why, once)."""
    where = dict(uri=masked(target.uri), experiment=target.experiment)  # no password
    known = health.down_reason(target.uri)
    if known is not None:
        return Tracking(False, **where, error=f"the store {masked(target.uri)} cannot be used: {known}", known=True)
    started = time.monotonic()
    try:
        run_id = store(target).log_job(result, folder, job, parent_id)
        return Tracking(True, **where, run_id=run_id)
    except Exception as err:  # noqa: BLE001 - a store that fails must not fail the job
        return Tracking(False, **where, error=failed(target.uri, err, started))


def failed(uri: str, err: Exception, started: float) -> str:
    """After ``err`` from the store at ``uri`` (asked at ``started``, monotonic): the store is taken as unusable for
    the rest of the sweep if it kept us waiting as long as a check may take, or if asking it again says so; an error
    of one job's own (a value MLflow refuses) leaves it in use. Returns the line to say: the store's reason where it
    was found unusable (not the HTTP library's page of text for a server that went away), else ``err``'s."""
    if isinstance(err, health.StoreUnusable):
        return str(err)  # already remembered by the check
    if time.monotonic() - started >= health.CHECK_SECONDS:
        reason: Optional[str] = f"it did not answer in time ({one_line(err, 200)})"
    else:
        reason = health.probe(uri)
    if reason is None:
        return one_line(err, 500)
    health.mark_down(uri, reason)
    return f"the store {masked(uri)} cannot be used: {reason}"


def finished_run(target: Target, fingerprint_: str) -> Optional[str]:
    """The id of a FINISHED run with this fingerprint in the target's experiment, if there is one. On the way, the
    runs of it left RUNNING under a sweep's run that has ended are deleted: a job cut while it was logged (its sweep
    stopped by a full disk, a kill) leaves one that no sweep will close, and a resume that measures the job again
    logs it whole. A run whose sweep still runs may be logging now, and is left alone."""
    runs = store(target)
    found = runs.client.search_runs([runs.experiment_id()], f"tags.`{FINGERPRINT_TAG}` = '{fingerprint_}'",
                                    max_results=1000)
    for run in found:
        parent = run.data.tags.get("mlflow.parentRunId")
        if run.info.status == "RUNNING" and parent and runs.client.get_run(parent).info.status != "RUNNING":
            runs.delete_run(run.info.run_id)
    return next((run.info.run_id for run in found if run.info.status == "FINISHED"), None)


def run_metrics(target: Target, run_id: str) -> dict[str, float]:
    """A run's metrics, as last logged (a skipped job's row shows the figures of the run that measured it)."""
    metrics = store(target).client.get_run(run_id).data.metrics  # floats: whole numbers read back as they were
    return {key: int(value) if float(value).is_integer() else value for key, value in metrics.items()}


def log_to_sweep_run(target: Target, sweep: str, folder: Path, artifact_path: str) -> Optional[str]:
    """Log ``folder`` under ``artifact_path`` to the parent run of ``sweep`` (as its jobs' runs record it); the run's
    id, or None where the experiment has no such run."""
    runs = store(target)
    run_id = runs.sweep_run(sweep)
    if run_id is not None:
        runs.client.log_artifacts(run_id, str(folder), artifact_path)
    return run_id
