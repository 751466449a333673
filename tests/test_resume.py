"""Resume: a sweep killed after some of its jobs, run again with ``skip_existing=true``, ends with exactly one
finished run per configuration; the jobs already measured are recorded as skipped, not measured again."""

import json
import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import FLOPSWEEP, run_app

# six jobs of a tiny GPT-2 on the CPU with real timings, so that the kill lands mid-sweep
SWEEP = ["-m", "model=gpt2_small", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.vocab_size=1000",
         "batch.seq_len=32", "device=cpu", "measure.warmup=1", "measure.repeats=20", "batch.size=1,2,3,4,5,6",
         "tracking.experiment=resume"]


def results(sweep_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def logged(sweep_root):
    return [r for d in sweep_root.glob("*/*") for r in results(d).values()
            if (r.get("info", {}).get("tracking") or {}).get("logged")]


@pytest.mark.slow
def test_killed_sweep_resumes_to_one_finished_run_per_config(tmp_path):
    sweeps = tmp_path / "outputs" / "sweeps"
    proc = subprocess.Popen([*FLOPSWEEP, *SWEEP], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(logged(sweeps)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = len(logged(sweeps))
    assert 2 <= first < 6, "the kill should land mid-sweep"

    (killed_dir,) = [d for d in sweeps.glob("*/*") if d.is_dir()]
    rerun = run_app(*SWEEP, "skip_existing=true", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    second_dir = max(d for d in sweeps.glob("*/*") if d.is_dir())
    second = results(second_dir)
    statuses = Counter(r["status"] for r in second.values())
    assert statuses["skipped"] >= first and statuses["skipped"] + statuses["ok"] == 6
    assert "[job 6/6]" in rerun.stdout and "skipped: run " in rerun.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resume")
    finished = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`flopsweep.kind` = 'job' and attributes.status = 'FINISHED'")
    per_config = Counter(r.data.tags["flopsweep.fingerprint"] for r in finished)
    assert len(per_config) == 6 and set(per_config.values()) == {1}
    assert set(per_config) == {r["info"]["fingerprint"] for r in second.values()}
    assert sorted(int(r.data.params["batch.size"]) for r in finished) == [1, 2, 3, 4, 5, 6]
    # the killed sweep's run, left RUNNING by SIGKILL, is closed by the resume: KILLED, with what its folder holds
    parents = {r.data.tags["flopsweep.sweep"]: r for r in
               client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")}
    killed = parents[str(killed_dir.resolve())]
    assert killed.info.status == "KILLED"
    assert killed.data.metrics["jobs/ok"] == sum(r["status"] == "ok" for r in results(killed_dir).values()) >= 2
    assert parents[str(second_dir.resolve())].info.status == "FINISHED"
    # a skipped job points at the run that measured it
    for r in second.values():
        if r["status"] == "skipped":
            assert r["info"]["tracking"]["run_id"] in {run.info.run_id for run in finished}

    # a third run of the whole sweep measures nothing
    third = run_app(*SWEEP, "skip_existing=true", cwd=tmp_path)
    assert third.returncode == 0 and third.stdout.count("skipped: run ") == 6, third.stderr
