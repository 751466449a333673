"""A calibration profile's run (``flopsweep-calibrate``): the profile as an artifact and as a dataset input with its
digest, so that the jobs it predicted (their ``flopsweep.calibration`` tag) can be grouped by it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flopsweep.core.errors import masked, one_line
from flopsweep.sinks.identity import common_tags
from flopsweep.sinks.store import store
from flopsweep.sinks.target import Target


def log_calibration(target: Target, path: Path, profile: dict[str, Any], digest: str,
                    figures: dict[str, float]) -> str:
    """Log the profile written at ``path`` (its fields ``profile``) as a run of ``target``'s experiment, with the
    ``figures`` that sum it up as metrics. Never raises: says where it went, or what went wrong, in one line."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    try:
        client = store(target)
        tags = {"flopsweep.kind": "calibration", "flopsweep.calibration": digest, **common_tags()}
        run = client.client.create_run(client.experiment_id(), run_name=f"calibrate {profile['part']}",
                                       tags={k: masked(str(v)) for k, v in tags.items() if v not in ("", None)})
        run_id, now = run.info.run_id, int(time.time() * 1000)
        params = {key: profile.get(key) for key in ("part", "device", "torch", "date", "threads", "default")}
        client.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()],
                                params=[Param(k, str(v)) for k, v in {**params, "digest": digest}.items()
                                        if v is not None])
        dataset = Dataset(name=f"calibration-{path.stem}", digest=digest, source_type="local",
                          source=json.dumps({"uri": str(path.resolve())}))
        client.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "calibration")])])
        client.client.log_artifact(run_id, str(path))
        client.client.set_terminated(run_id, "FINISHED")
        return f"run {run_id} in experiment {target.experiment!r} ({masked(target.uri)})"
    except Exception as err:  # noqa: BLE001 - the profile is written whatever the store does
        return f"not logged to MLflow ({one_line(err)})"
