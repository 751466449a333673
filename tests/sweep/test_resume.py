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
def test_a_skipped_jobs_row_shows_the_figures_of_the_run_that_measured_it(tmp_path):
    sweep = ["-m", "model=gpt2_small", "model.n_layer=1", "batch.seq_len=64", "batch.size=1,2", "device=meta",
             "tracking.experiment=resume", "skip_existing=true"]
    first = run_app(*sweep, cwd=tmp_path)
    again = run_app(*sweep, cwd=tmp_path)
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    first_dir, again_dir = sorted(d for d in (tmp_path / "outputs" / "sweeps").glob("*/*") if d.is_dir())
    measured, skipped = results(first_dir), results(again_dir)
    assert {r["status"] for r in skipped.values()} == {"skipped"}
    for job, result in skipped.items():  # the figures logged by the first sweep, whole numbers as they were
        assert result["metrics"]["flops/forward"] == measured[job]["metrics"]["flops/forward"] > 0
        assert result["metrics"]["config/seq_len"] == 64 and isinstance(result["metrics"]["config/seq_len"], int)
    rows = [line.split() for line in again.stdout.splitlines() if line.startswith(("0_", "1_"))]
    assert [row[6] for row in rows] == ["skipped", "skipped"] and all(row[3] == "64" and row[7] != "-" for row in rows)


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


@pytest.mark.slow
def test_two_resumes_started_at_once_measure_each_configuration_once(tmp_path):
    """Two resumes of the same sweep at once: each job claims its fingerprint before it looks for a finished run, so a
    configuration is measured by one of them and left (skipped) by the other."""
    from tests.helpers import child_env, local_store

    local_store(tmp_path / "outputs")
    procs = [subprocess.Popen([*FLOPSWEEP, *SWEEP, "skip_existing=true", f"hydra.sweep.dir=sweeps/{name}"],
                              cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    done = [r for name in ("a", "b") for r in results(tmp_path / "sweeps" / name).values()]
    assert Counter(r["status"] for r in done) == {"ok": 6, "skipped": 6}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resume")
    finished = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`flopsweep.kind` = 'job' and attributes.status = 'FINISHED'")
    assert sorted(Counter(r.data.tags["flopsweep.fingerprint"] for r in finished).values()) == [1] * 6
    assert len(client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'job'")) == 6


@pytest.mark.slow
def test_a_job_another_resume_measures_is_left_to_it_and_taken_over_once_that_process_is_gone(tmp_path):
    import sys

    from tests.helpers import child_env

    job = ["model=gpt2_small", "model.n_layer=1", "device=meta", "tracking.experiment=claims"]
    first = run_app(*job, "tracking=none", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (result,) = (json.loads(p.read_text()) for p in tmp_path.glob("outputs/runs/**/result.json"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom flopsweep.sinks.claims import claim\n"
         "from flopsweep.sinks.target import target_at\n"
         f"held = claim(target_at(None, 'outputs', 'claims', environment=False), {result['info']['fingerprint']!r})\n"
         "print(type(held).__name__, flush=True)\ntime.sleep(600)"],
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "Claim"
        left = run_app(*job, "skip_existing=true", cwd=tmp_path)
        assert left.returncode == 0, left.stderr
        assert f"skipped: another resume of the sweep is measuring it (pid {holder.pid} on " in left.stdout
    finally:
        holder.kill()
        holder.wait()
    taken = run_app(*job, "skip_existing=true", cwd=tmp_path)  # the claim died with its process
    assert taken.returncode == 0 and "skipped" not in taken.stdout, taken.stdout
    again = run_app(*job, "skip_existing=true", cwd=tmp_path)
    assert "skipped: run " in again.stdout and "already measured this" in again.stdout


def _resumed(tmp_path, *job):
    out = run_app(*job, "device=meta", "skip_existing=true", "tracking.experiment=edits", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    newest = max(tmp_path.glob("outputs/runs/**/result.json"), key=lambda p: p.stat().st_mtime_ns)
    return out.stdout, json.loads(newest.read_text())


@pytest.mark.slow
def test_an_edited_config_file_is_a_new_configuration_and_an_unchanged_one_is_skipped(tmp_path):
    """A Hugging Face config.json and a generic model's JSON file: skip_existing=true skips the file as it was and
    measures it again once edited; result.json records the architecture's fields it was built from."""
    hf = tmp_path / "tiny" / "config.json"
    hf.parent.mkdir()
    fields = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
              "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 100, "max_position_embeddings": 64}
    hf.write_text(json.dumps(fields))
    generic = tmp_path / "generic.json"
    generic.write_text(json.dumps({"num_encoder_blocks": 1, "embed_dim": 64, "num_heads": 2}))
    for job in (["model=hf", f"model.config={hf.parent}", "batch.seq_len=16"],
                ["model=generic", f"model.json_file={generic}"]):
        first_out, first = _resumed(tmp_path, *job)
        assert "skipped" not in first_out
        again_out, again = _resumed(tmp_path, *job)
        assert "already measured this" in again_out
        path = hf if "model=hf" in job else generic
        edited = json.loads(path.read_text())
        edited["num_hidden_layers" if "model=hf" in job else "num_encoder_blocks"] = 2
        path.write_text(json.dumps(edited))
        edited_out, measured = _resumed(tmp_path, *job)
        assert "skipped" not in edited_out, edited_out
        assert measured["info"]["fingerprint"] != first["info"]["fingerprint"]
        assert measured["metrics"]["size/params"] > first["metrics"]["size/params"]
        if "model=hf" in job:  # what it was built from, for a reader to tell the two runs apart
            assert measured["info"]["model_source"]["file"] == str(hf)
            assert measured["info"]["model_source"]["fields"]["num_hidden_layers"] == 2
            assert first["info"]["model_source"]["fields"]["num_hidden_layers"] == 1
        else:  # the file's fields are the model's, recorded in its config
            assert measured["config"]["model"]["num_encoder_blocks"] == 2


@pytest.mark.slow
def test_an_edited_custom_model_module_is_a_new_configuration(tmp_path):
    from tests.helpers import run_cli

    module = tmp_path / "mynet.py"
    source = ("import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              "        self.proj = torch.nn.Linear(8, {width})\n\n    def forward(self, x):\n"
              "        return self.proj(x).mean()\n")
    job = ["model=custom", "model._target_=mynet.Net", "model.inputs=[{name:x,shape:[batch,8]}]", "device=meta",
           "skip_existing=true"]
    module.write_text(source.format(width=4))
    assert "skipped" not in run_cli(*job, cwd=tmp_path).stdout
    assert "already measured this" in run_cli(*job, cwd=tmp_path).stdout
    module.write_text(source.format(width=16))
    edited = run_cli(*job, cwd=tmp_path)
    assert edited.returncode == 0 and "skipped" not in edited.stdout, edited.stderr
