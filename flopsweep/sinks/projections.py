"""A projection's run (a training cost, a serving plan: :mod:`flopsweep.projection.records` makes what it records) in
its own experiment, tagged with the measured run it came from."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from flopsweep.core.errors import masked, one_line
from flopsweep.sinks.identity import common_tags
from flopsweep.sinks.store import store
from flopsweep.sinks.target import Target


def log_projection(target: Target, record: dict[str, Any], measured_run: Optional[str]) -> str:
    """Log a projection (a training cost, a serving plan) as a run of its own experiment, tagged with the measured run
    it came from: ``record`` gives its ``name``, ``source``, ``params``, ``metrics``, ``artifacts`` (file name ->
    text or bytes) and optionally ``series`` (metric -> [(step, value)]). Never raises: returns ``run ID in
    experiment NAME`` or what went wrong, in one line."""
    from mlflow.entities import Metric, Param

    try:
        client = store(target)
        tags = {"flopsweep.kind": "projection", "flopsweep.measured_run": measured_run or "",
                "flopsweep.source": str(record["source"])[:5000], **common_tags()}
        tags = {k: masked(v) for k, v in tags.items() if v not in ("", None)}  # none empty (no run: --model)
        run = client.client.create_run(client.experiment_id(), run_name=record["name"], tags=tags)
        now = int(time.time() * 1000)
        series = [Metric(k, float(v), now, int(step)) for k, points in record.get("series", {}).items()
                  for step, v in points if v is not None]  # a metric over steps: the UI plots it against them
        client.client.log_batch(run.info.run_id,
                                metrics=[Metric(k, float(v), now, 0) for k, v in record["metrics"].items()
                                         if v is not None] + series,
                                params=[Param(k, str(v)[:6000]) for k, v in record["params"].items()
                                        if v is not None])  # no 'None' literals: a price or fleet not given
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in record["artifacts"].items():
                path = Path(tmp) / name
                path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
            client.client.log_artifacts(run.info.run_id, tmp)
        client.client.set_terminated(run.info.run_id, "FINISHED")
        return f"run {run.info.run_id} in experiment {target.experiment!r} ({masked(target.uri)})"
    except Exception as err:  # noqa: BLE001 - the projection is printed whatever the store does
        return f"not logged to MLflow ({one_line(err)})"
