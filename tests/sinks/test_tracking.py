"""MLflow tracking with a real local store: a sweep's parent and child runs, what each carries, load_runs,
and a store that is down."""

import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import flopsweep
from flopsweep.cli.project import main as project
from flopsweep.cli.report import main as report
from flopsweep.cli.sync import main as sync_main
from tests.helpers import run_app, run_main

SWEEP = ["-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=32", "batch.size=2",
         "model.n_head=4,6,7", "tracking.experiment=test_sweep"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("tracked")
    proc = run_app(*SWEEP, cwd=cwd)
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    return cwd, proc, client, client.get_experiment_by_name("test_sweep")


# nothing listens on port 9 of the loopback address: every call fails at once, and is not tried again
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def job_runs(client, experiment):
    return client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'job'")


def test_one_parent_and_a_child_per_job(sweep):
    cwd, proc, client, experiment = sweep
    assert proc.returncode == 1  # one job has 7 heads for 768 channels
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    children = job_runs(client, experiment)
    assert len(children) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs/ok"] == 2
    assert parent.data.metrics["jobs/failed"] == 1
    assert "summary.csv" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    with sqlite3.connect(cwd / "outputs" / "mlflow.db") as db:  # commits append to a log, one sync each
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_each_run_carries_params_metrics_tags_artifacts(sweep):
    cwd, proc, client, experiment = sweep
    runs = {r.data.params["model.n_head"]: r for r in job_runs(client, experiment)}
    ok, failed = runs["4"], runs["7"]
    assert ok.info.run_name == "n_head=4" and ok.data.tags["flopsweep.name"] == "gpt2_small|b2|s32|float32|meta"
    assert ok.info.status == "FINISHED" and ok.data.tags["status"] == "ok"
    assert ok.data.params["batch.size"] == "2" and ok.data.params["device.type"] == "meta"
    result = json.loads(next((cwd / "outputs" / "sweeps").rglob("0_gpt2_small/result.json")).read_text())
    assert ok.data.metrics["flops/forward"] == result["metrics"]["flops/forward"]
    assert ok.data.metrics["config/batch_size"] == 2 and ok.data.metrics["config/d_model"] == 768
    for tag in ("git.commit", "torch.version", "flopsweep.version", "python.version", "host", "flopsweep.job_num"):
        assert ok.data.tags[tag]
    artifacts = {a.path for a in client.list_artifacts(ok.info.run_id)}
    assert {"result.json", "stats.txt", "modules.csv", "ops.csv", ".hydra"} <= artifacts
    # the resolved config and the overrides, as Hydra wrote them
    assert {".hydra/config.yaml", ".hydra/overrides.yaml"} <= {a.path for a in client.list_artifacts(ok.info.run_id,
                                                                                                   ".hydra")}
    assert result["info"]["tracking"]["logged"] is True
    assert result["info"]["tracking"]["run_id"] == ok.info.run_id
    assert failed.info.status == "FAILED" and "model.n_head" in failed.data.tags["error"]


def test_load_runs_gives_typed_columns(sweep):
    cwd, proc, client, experiment = sweep
    df = flopsweep.load_runs(experiment="test_sweep", store_dir=cwd / "outputs")
    assert len(df) == 3
    assert sorted(df["model.n_head"]) == [4, 6, 7] and df["model.n_head"].dtype.kind == "i"
    assert df["flops/forward"].dtype.kind == "f"
    sweep_name = df["sweep"].iloc[0]
    assert len(flopsweep.load_runs(experiment="test_sweep", sweep=sweep_name, store_dir=cwd / "outputs")) == 3
    with pytest.raises(LookupError, match="no sweep 'no-such-sweep' in experiment 'test_sweep'; its sweeps: "):
        flopsweep.load_runs(experiment="test_sweep", sweep="no-such-sweep", store_dir=cwd / "outputs")


def test_a_store_that_is_down_loses_nothing(tmp_path):
    # nothing listens on port 9 of the loopback address: every call to the store fails
    proc = run_app("model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=32", "tracking=server",
                   "tracking.uri=http://127.0.0.1:9", cwd=tmp_path, env=NO_RETRIES)
    assert proc.returncode == 0, proc.stderr
    assert "not logged to MLflow" in proc.stderr
    (path,) = (tmp_path / "outputs" / "runs").rglob("result.json")
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["metrics"]["flops/forward"] > 0
    assert result["info"]["tracking"]["logged"] is False and result["info"]["tracking"]["error"]


def test_a_stores_address_alone_is_where_the_runs_go_and_an_unread_variable_is_said(tmp_path):
    """tracking.uri without tracking=server, and MLFLOW_TRACKING_URI under the default tracking=local, both logged to
    outputs/mlflow.db without a word; the address given is now the store, and the variable left unread is said."""
    given = run_app("model=gpt2_small", "device=meta", "model.n_layer=1", "tracking.uri=http://127.0.0.1:9",
                    cwd=tmp_path, env=NO_RETRIES, store=False)
    assert given.returncode == 0 and "not logged to MLflow (the store http://127.0.0.1:9 cannot be used" in \
        given.stderr, given.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    variable = run_app("model=gpt2_small", "device=meta", "model.n_layer=1", cwd=tmp_path,
                       env={**NO_RETRIES, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, store=False)
    assert variable.returncode == 0, variable.stderr
    assert ("note: MLFLOW_TRACKING_URI is set and not read: tracking=local logs to outputs/mlflow.db; tracking=server "
            "logs to http://127.0.0.1:9") in variable.stdout
    assert (tmp_path / "outputs" / "mlflow.db").exists()


def test_tracking_none_writes_no_store(tmp_path):
    proc = run_app("model=gpt2_small", "device=meta", "model.n_layer=1", "tracking=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


@pytest.mark.slow
def test_sync_logs_what_a_down_store_missed_once(tmp_path):
    proc = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16,32",
                   "tracking=server", "tracking.uri=http://127.0.0.1:9", cwd=tmp_path, env=NO_RETRIES)
    assert proc.returncode == 0, proc.stderr
    start, end = proc.stderr.strip().splitlines()  # said once, counted once: not a warning per job
    assert "the store http://127.0.0.1:9 cannot be used: the server cannot be reached" in start, start
    assert "2 of 2 jobs not logged to MLflow" in end
    sweeps = tmp_path / "outputs" / "sweeps"
    sync = [str(sweeps), "--store-dir", str(tmp_path / "outputs")]
    first = run_main(sync_main, *sync, cwd=tmp_path)
    assert first.returncode == 0 and "2 logged, 0 already" in first.stdout, first.stderr
    second = run_main(sync_main, *sync, cwd=tmp_path)
    assert second.returncode == 0 and "0 logged, 2 already" in second.stdout, second.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("flopsweep")
    jobs = job_runs(client, experiment)
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    assert len(jobs) == 2 and {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    for path in sweeps.rglob("result.json"):  # a copy in the store given: each still names its own, not logged there
        info = json.loads(path.read_text())["info"]
        assert info["tracking"]["uri"] == "http://127.0.0.1:9" and info["tracking"]["logged"] is False
        assert info["fingerprint"] in {r.data.tags["flopsweep.fingerprint"] for r in jobs}


@pytest.mark.slow
def test_sync_sends_each_job_to_the_store_it_recorded(tmp_path):
    """Jobs whose store could not be opened (a file stood where its folder goes) are synced, from another folder and
    with no option, into that store: not into a local store under the folder sync runs in."""
    store_dir = tmp_path / "team" / "outputs"
    (tmp_path / "team").write_text("")
    proc = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16,32",
                   "tracking=server", f"tracking.uri=sqlite:///{store_dir / 'mlflow.db'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    start, end = proc.stderr.strip().splitlines()
    assert f"{tmp_path / 'team'} is a file, where the store's folder goes" in start, start
    assert "2 of 2 jobs not logged to MLflow" in end
    (tmp_path / "team").unlink()
    store_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sync = run_main(sync_main, str(tmp_path / "outputs" / "sweeps"), cwd=elsewhere)
    assert sync.returncode == 0 and "2 logged, 0 already" in sync.stdout, sync.stdout + sync.stderr
    assert f"sqlite:///{store_dir / 'mlflow.db'}" in sync.stdout
    assert not (elsewhere / "outputs").exists() and not (elsewhere / "mlruns").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{store_dir / 'mlflow.db'}")
    jobs = job_runs(client, client.get_experiment_by_name("flopsweep"))
    assert len(jobs) == 2
    assert all(run.info.artifact_uri.startswith((store_dir / "mlartifacts").as_uri()) for run in jobs)


@pytest.mark.slow
def test_sync_replaces_a_half_logged_run_and_keeps_failed_jobs_logged_once(tmp_path):
    # tracking=none: nothing logged; one ok job and one failed job (7 heads do not divide 768 channels)
    proc = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16",
                   "model.n_head=4,7", "tracking=none", cwd=tmp_path)
    assert proc.returncode == 1
    results = {json.loads(p.read_text())["status"]: json.loads(p.read_text())
               for p in (tmp_path / "outputs" / "sweeps").rglob("result.json")}
    # a store that failed midway through logging the ok job left a RUNNING run with its fingerprint
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment_id = client.create_experiment("flopsweep", str(tmp_path / "outputs" / "mlartifacts"))
    orphan = client.create_run(experiment_id, tags={"flopsweep.kind": "job",
                                                    "flopsweep.fingerprint": results["ok"]["info"]["fingerprint"]})
    next((tmp_path / "outputs" / "sweeps").rglob("summary.csv")).unlink()  # as if the sweep was cut off before it
    sync = [sys.executable, "-m", "flopsweep.cli.sync", "outputs/sweeps"]  # relative, as the README writes it
    first = subprocess.run(sync, capture_output=True, text=True, cwd=tmp_path)
    assert "2 logged, 0 already" in first.stdout, first.stderr
    jobs = job_runs(client, client.get_experiment(experiment_id))
    assert len(jobs) == 2 and orphan.info.run_id not in {r.info.run_id for r in jobs}
    assert sorted(r.info.status for r in jobs) == ["FAILED", "FINISHED"]
    # the sweep's run sync opened ends with the counts of the jobs it found, FAILED for the failed one
    (parent,) = client.search_runs([experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs/ok"] == parent.data.metrics["jobs/failed"] == 1
    second = subprocess.run(sync, capture_output=True, text=True, cwd=tmp_path)
    assert "0 logged, 2 already" in second.stdout, second.stderr  # the failed job's run counts as logged


@pytest.mark.slow  # new interpreters
def test_help_and_config_printing_do_not_import_mlflow(tmp_path):
    """``--help`` and ``--cfg job``, one after the other in a new interpreter: neither imports MLflow or makes a
    store (both print, and the second prints the config, so both really ran)."""
    code = ("import sys\nfrom flopsweep.cli.flopsweep import main\n"
            "for args in (['--help'], ['--cfg', 'job', 'model=bert_base']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "    print('mlflow imported:', 'mlflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.count("mlflow imported: False") == 2, proc.stdout + proc.stderr
    assert "flopsweep" in proc.stdout and "n_layer: 12" in proc.stdout  # the help, and bert_base's config
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_a_corrupt_result_is_one_line_everywhere_and_sync_logs_the_others(tmp_path):
    """A result.json cut off or edited by hand: flopsweep-sync reports it, counts it failed and logs the good
    job beside it; flopsweep-project and flopsweep-report --profile name it in one line."""
    proc = run_app("model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16", "tracking=none",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, text in (("cut", '{"status": "o'), ("list", "[]")):
        (tmp_path / "outputs" / "runs" / name).mkdir(parents=True)
        (tmp_path / "outputs" / "runs" / name / "result.json").write_text(text)
    sync = run_main(sync_main, "outputs/runs", cwd=tmp_path)
    assert sync.returncode == 1 and "1 logged, 0 already in the store, 2 failed" in sync.stdout, sync.stderr
    errors = [line for line in sync.stderr.splitlines() if line.startswith("flopsweep-sync:")]
    assert len(errors) == 2 and all("not logged" in e for e in errors) and "Traceback" not in sync.stderr, errors
    assert "not valid JSON" in sync.stderr and "not a flopsweep result" in sync.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert len(job_runs(client, client.get_experiment_by_name("flopsweep"))) == 1
    for main, *args in ([project, "train", "outputs/runs/cut", "--tokens", "1T", "--mfu", "0.4", "--no-log"],
                        [report, "--profile", "outputs/runs/list"]):
        out = run_main(main, *args, cwd=tmp_path)
        assert out.returncode == 2 and "has no readable result.json" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_the_experiment_and_its_runs_read_well_in_mlflows_ui(sweep):
    """The classic runs view (not GenAI's), a description, a parent named by its sweep and time, each child run
    lasting as long as its job did, no 'None' params nor empty tags nor empty artifacts, the source tags the UI's
    columns read, one name per concept across families."""
    import re

    cwd, proc, client, experiment = sweep
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"].startswith("flopsweep measurements: one run per job")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    assert re.fullmatch(r"test_sweep \d{4}-\d{2}-\d{2} \d{2}:\d{2}", parent.info.run_name), parent.info.run_name
    # descriptions: the sweep's command and its table as the console printed it; each job's figures
    note = parent.data.tags["mlflow.note.content"]
    table = proc.stdout[proc.stdout.index("\njob  ") + 1:].split("\n\n")[0]
    assert note.startswith("`flopsweep ") and "model.n_head=4,6,7" in note and table in note
    for run in job_runs(client, experiment):
        result = json.loads((Path(run.data.tags["flopsweep.job_folder"]) / "result.json").read_text())
        if result["status"] == "ok":
            job = result["info"]["job"]
            assert run.info.start_time == int(job["start"] * 1000) and run.info.end_time == int(job["end"] * 1000)
            assert "error" not in run.data.tags  # it was an empty tag, shown in bold
            assert run.data.tags["mlflow.note.content"].startswith("```\ngpt2_small|b2|s32|float32|meta\nflops/")
        assert "None" not in run.data.params.values() and "" not in run.data.tags.values()
        assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git.commit"]
        assert run.data.tags["mlflow.source.name"] == "flopsweep" and run.data.tags["host.cpu"]
        assert run.data.metrics["config/layers"] == 1 and run.data.metrics["config/d_model"] == 768
        assert run.data.metrics["config/heads"] == int(run.data.params["model.n_head"])
        files = [a for a in client.list_artifacts(run.info.run_id) if not a.is_dir]
        assert files and all(a.file_size > 0 for a in files)


def test_a_sweep_opens_on_a_view_of_its_jobs_with_the_figures_to_compare(sweep):
    """The sweep's last line opens MLflow's runs page on a view saved in the experiment (MLflow 3.17's
    shared view state): its filter finds exactly the sweep's jobs, its columns are what the console summary shows
    (present in those runs) and the key that varies, its first charts the same figures."""
    cwd, proc, client, experiment = sweep
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    key = f"flopsweep-{parent.info.run_id}"
    assert f"/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={key}&workflowType=machine_learning" \
        in proc.stdout
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{key}"])
    assert view["name"] == parent.info.run_name and len(experiment.tags[f"mlflow.sharedViewState.{key}"]) < 20000
    state = json.loads(view["state"])
    found = client.search_runs([experiment.experiment_id], filter_string=state["searchFilter"])
    assert {r.info.run_id for r in found} == {r.info.run_id for r in job_runs(client, experiment)}
    columns = state["selectedColumns"]
    metrics = [c[len("metrics.`"):-1] for c in columns if c.startswith("metrics.")]
    assert metrics[:3] == ["size/params", "flops/forward", "flops/step"] and "size/step_peak_bytes" in metrics
    assert "time/step_s" not in metrics  # a meta sweep has no timings: no empty column
    ok = [r for r in found if r.data.tags["status"] == "ok"]
    assert all(m in r.data.metrics for m in metrics for r in ok)
    assert [c for c in columns if c.startswith("params.")] == ["params.`model.n_head`"]
    assert state["orderByKey"] == "metrics.`flops/step`" and "runsExpanded" not in state
    section = state["compareRunSections"][0]["uuid"]
    assert [c["metricKey"] for c in state["compareRunCharts"] if c["metricSectionId"] == section] == metrics


def test_a_sweeps_runs_are_named_by_what_tells_them_apart(sweep):
    """model.n_head is what varies: the names the runs table cuts short start with it; the whole name is a tag."""
    cwd, proc, client, experiment = sweep
    runs = job_runs(client, experiment)
    assert sorted(run.info.run_name for run in runs) == ["n_head=4", "n_head=6", "n_head=7"]
    assert {run.data.tags["flopsweep.name"] for run in runs} == {"gpt2_small|b2|s32|float32|meta"}


def test_a_run_records_only_what_its_optimizer_and_train_mode_read(sweep):
    """AdamW full training: no GaLore rank or gap, no LoRA rank or targets, no momentum."""
    cwd, proc, client, experiment = sweep
    params = next(r for r in job_runs(client, experiment) if r.data.tags["status"] == "ok").data.params
    assert {k for k in params if k.startswith(("optimizer.", "train."))} == {
        "optimizer.name", "optimizer.lr", "optimizer.betas", "optimizer.eps", "optimizer.weight_decay", "train.mode"}


def test_a_views_columns_are_the_options_that_vary_not_every_key_they_change():
    """Two models at two lengths: model.name and batch.seq_len, not n_layer and d_model (the models' own keys);
    a failed job's config (every group, unresolved) does not make a key vary."""
    from flopsweep.core.result import Result
    from flopsweep.sinks.views import varying_params

    def job(model, layers, seq, status="ok"):
        config = {"model": {"name": model, "n_layer": layers}, "batch": {"size": 1, "seq_len": seq},
                  "dtype": {"name": "float32"}}
        return Result(status, None, config if status == "ok" else {**config, "generate": {"new_tokens": None}}, {})

    jobs = [job("a", 2, 128), job("b", 4, 128), job("a", 2, 256), job("b", 4, 256), job("c", 8, 64, "failed")]
    assert varying_params(jobs) == ["model.name", "batch.seq_len"]
    assert varying_params([job("a", 2, 128), job("a", 4, 128)]) == ["model.n_layer"]


def test_a_password_is_masked_whatever_it_holds_and_the_address_found_again_by_its_masked_form(monkeypatch):
    from flopsweep.core.errors import ConfigError, masked
    from flopsweep.sinks.target import SECRETS_ENV, hide_passwords, revealed

    assert masked("http://u:p@ss:w%40rd@h:9/x") == "http://u:***@h:9/x"       # an @ and a : of its own
    assert masked("tracking.uri=http\\://u\\:s3cr3t@h\\:9/") == "tracking.uri=http\\://u\\:***@h\\:9/"  # Hydra's
    assert masked("http://h:5000/a@b and sqlite:///x.db") == "http://h:5000/a@b and sqlite:///x.db"
    monkeypatch.setenv(SECRETS_ENV, "[]")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["model=gpt2_small", "tracking.uri=http\\://me\\:p@ss@h1\\:9/,http://me:q@h2/"]
    assert hide_passwords(args) == ["model=gpt2_small", "tracking.uri=http\\://me\\:***@h1\\:9/,http://me:***@h2/"]
    assert revealed("http://me:***@h1:9/") == "http://me:p@ss@h1:9/" and revealed("http://me:***@h2/") == \
        "http://me:q@h2/"
    assert revealed("http://h3:5000") == "http://h3:5000"  # no password: itself
    with pytest.raises(ConfigError, match="tracking.uri='http://me:\\*\\*\\*@h4/': has its password masked"):
        revealed("http://me:***@h4/")


def test_sync_refuses_a_result_that_holds_no_measurement(tmp_path):
    """A result.json written by hand or cut down to its status: one line naming it, and no empty finished run."""
    from tests.helpers import local_store

    local_store(tmp_path / "outputs")
    for name, data in (("empty", {"status": "ok", "error": None, "config": {}}),
                       ("odd", {"status": "done", "config": {}, "metrics": {"flops/step": 1}})):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "result.json").write_text(json.dumps(data))
    out = run_main(sync_main, "runs", "--store-dir", "outputs", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 2, out.stderr
    assert "holds no measurement (status ok, no metrics)" in out.stderr and "status 'done' is none of" in out.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_load_runs_says_which_store_it_read_and_which_experiments_it_has(tmp_path):
    import flopsweep

    with pytest.raises(LookupError) as err:  # run from another folder: no store there
        flopsweep.load_runs(experiment="test_sweep", store_dir=tmp_path / "elsewhere")
    assert str(err.value) == f"load_runs: no MLflow store at {tmp_path / 'elsewhere' / 'mlflow.db'} to read " \
        "experiment 'test_sweep' from (this folder's outputs/ unless store_dir= or uri= says where, or " \
        "MLFLOW_TRACKING_URI)"
    ran = run_app("model=gpt2_small", "model.n_layer=1", "batch.seq_len=8", "device=meta",
                  "tracking.experiment=named", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    with pytest.raises(LookupError) as err:
        flopsweep.load_runs(experiment="nmaed", store_dir=tmp_path / "outputs")
    assert str(err.value).startswith("load_runs: experiment 'nmaed' is not in the store sqlite:///")
    assert str(err.value).endswith(" (did you mean 'named'?); it has 'named'")  # a typo's nearest, as the CLI's
    assert len(flopsweep.load_runs(experiment="named", store_dir=tmp_path / "outputs")) == 1


def test_a_sweeps_description_fits_a_tag_whatever_its_rows():
    """A layout search's 40 wide rows made a 10,063-character description, which MLflow cut with a warning after the
    sweep's summary: the note keeps the rows a tag holds and says where the rest are."""
    from flopsweep.core.result import Result
    from flopsweep.sinks.views import sweep_note

    results = [(f"{i}_llama3_1_70b", Result("ok", None, {"model": {"name": "llama3_1_70b"}, "parallel": {
        "dp": i, "tp": 8, "pp": 4, "micro_batch_size": i % 4 + 1, "recompute": "selective", "zero": i % 3,
        "sequence_parallel": True}, "batch": {"size": 64, "seq_len": 4096}},
        {"parallel/gpus": 32.0, "flops/step_per_gpu": 1e15 + i, "parallel/memory_per_gpu_bytes": 7e10,
         "time/step_predicted_s": 9.5, "speed/tokens_per_s_per_gpu_predicted": 885.0, "speed/mfu_predicted": 0.4,
         "parallel/fits": 1.0})) for i in range(1, 313)]
    note = sweep_note("+sweep=layouts model=llama3_1_70b " + "x=1 " * 400, results)  # 1,600 characters
    assert 7000 < len(note) <= 8000
    rows = [line for line in note.splitlines() if "_llama3_1_70b" in line]
    assert note.endswith(f"\n... {312 - len(rows)} more jobs: summary.csv\n```") and 20 < len(rows) < 40
    assert rows[0].startswith("1_llama3_1_70b") and len(rows[0]) > 140


def test_sync_of_a_folder_with_no_job_says_so(tmp_path):
    """A sweep Slurm refused leaves its folder and no job: sync said 0 logged, 0 already in the store, 0 failed."""
    from flopsweep.cli.sync import main as sync_main
    from tests.helpers import run_main

    (tmp_path / "sweep" / ".hydra").mkdir(parents=True)
    out = run_main(sync_main, str(tmp_path / "sweep"), cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.splitlines() == [
        f"flopsweep-sync: no job folder (one with result.json) in {tmp_path / 'sweep'}: nothing to log"]


@pytest.mark.parametrize("uri", ["127.0.0.1:5000", "http//127.0.0.1:5000"])
def test_a_sweep_to_a_tracking_uri_no_store_opens_is_refused_in_one_line_before_anything(tmp_path, uri):
    """It warned that the sweep's run could not be opened and the jobs would be logged later by a sync (no sync can
    mend the address), then every job failed on the same line, and a folder was left."""
    proc = run_app("-m", "model=gpt2_small", "batch.size=1,2", "device=meta", "tracking=server",
                   f"tracking.uri={uri}", cwd=tmp_path, store=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"flopsweep: error: tracking.uri='{uri}': not a store MLflow opens: the scheme must be one of http, https, "
        "sqlite, postgresql, mysql, mssql, file, databricks"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg 3 is installed here")
def test_a_database_uri_whose_driver_is_not_installed_is_refused_in_one_line_naming_one_that_is(tmp_path):
    """SQLAlchemy 2.1 opens a bare postgresql:// with psycopg 3: each job warned ModuleNotFoundError (four
    warnings), the sweep exited 0 and logged nothing. The test extras install psycopg2."""
    proc = run_app("-m", "model=gpt2_small", "batch.size=1,2", "device=meta", "tracking=server",
                   "tracking.uri=postgresql://me:secret@127.0.0.1:5999/mlflow", cwd=tmp_path, store=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "flopsweep: error: tracking.uri='postgresql://me:***@127.0.0.1:5999/mlflow': SQLAlchemy has no driver for "
        "postgresql:// in this Python (ModuleNotFoundError: No module named 'psycopg'); name an installed one: "
        "postgresql+psycopg2://"]
    assert not (tmp_path / "outputs").exists()


def test_a_driver_sqlalchemy_does_not_know_is_said_before_the_database_is_asked():
    from flopsweep.sinks.health import StoreUnusable, check

    with pytest.raises(StoreUnusable, match=r"no driver for mysql\+nosuch:// in this Python \(NoSuchModuleError"):
        check("mysql+nosuch://me@127.0.0.1:1/mlflow")


@pytest.mark.slow  # a job and a sync
def test_sync_leaves_the_copies_an_artifact_store_keeps_alone(tmp_path):
    """flopsweep-sync outputs/ went into flopsweep-server's artifact folder (outputs/tracking-server/artifacts): it
    rewrote the result.json copies MLflow keeps there, left its lock files beside them, and logged copies of other
    stores' runs as new runs ('155 already in the store' of 41 jobs)."""
    import shutil

    from flopsweep.sinks.sweep_run import job_folders

    done = run_app("model=gpt2_small", "model.n_layer=1", "device=meta", "tracking=none", "hydra.run.dir=outputs/job",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "outputs" / "tracking-server" / "artifacts" / "3" / ("ab" * 16) / "artifacts"
    shutil.copytree(tmp_path / "outputs" / "job", copy)
    kept = (copy / "result.json").read_bytes()
    assert job_folders(tmp_path / "outputs") == [tmp_path / "outputs" / "job"]
    synced = run_main(sync_main, "outputs", cwd=tmp_path)
    assert "1 logged, 0 already in the store" in synced.stdout, synced.stdout + synced.stderr
    assert (copy / "result.json").read_bytes() == kept and sorted(p.name for p in copy.iterdir()) == \
        sorted(p.name for p in (tmp_path / "outputs" / "job").iterdir() if p.name != ".flopsweep-sync.lock")


@pytest.mark.slow  # a sweep, three syncs, one a new interpreter
def test_a_sync_to_another_store_leaves_each_job_naming_its_own(tmp_path):
    """flopsweep-sync --store-dir X pointed every result.json at X for good: a projection then tagged runs its store
    lacks, and a server that came back never got the runs (a plain sync said 'already in the store X')."""
    done = run_app("-m", "model=gpt2_small", "model.n_layer=1", "device=meta", "batch.size=1,2", "tracking.dir=own",
                   cwd=tmp_path, store=False)
    assert done.returncode == 0, done.stderr
    results = sorted((tmp_path / "outputs").rglob("result.json"))
    own = {json.loads(p.read_text())["info"]["tracking"]["uri"] for p in results}
    assert len(results) == 2 and own == {f"sqlite:///{tmp_path / 'own' / 'mlflow.db'}"}
    __import__("shutil").rmtree(tmp_path / "own")  # its store lost: the copy elsewhere is all there is for now
    copied = run_main(sync_main, str(results[0].parents[1]), "--store-dir", "other", cwd=tmp_path)
    assert "2 logged, 0 already in the store" in copied.stdout, copied.stdout + copied.stderr
    assert {json.loads(p.read_text())["info"]["tracking"]["uri"] for p in results} == own
    again = run_main(sync_main, str(results[0].parents[1]), "--store-dir", "other", cwd=tmp_path)
    assert "0 logged, 2 already in the store" in again.stdout, again.stdout
    back = subprocess.run([sys.executable, "-m", "flopsweep.cli.sync", str(results[0].parents[1])], cwd=tmp_path,
                          capture_output=True, text=True)  # a new process: this one's MLflow holds the lost file open
    assert "2 logged, 0 already in the store" in back.stdout and str(tmp_path / "own") in back.stdout, back


@pytest.mark.slow  # a sweep of two jobs
def test_load_runs_of_a_sweep_it_does_not_have_names_the_ones_it_has(tmp_path, monkeypatch):
    """A mistyped sweep was an empty frame without a word; projection.md's next line, df.sweep.iloc[0], then failed."""
    done = run_app("-m", "model=gpt2_small", "model.n_layer=1", "device=meta", "batch.size=1,2",
                   "tracking.experiment=ls", "hydra.sweep.dir=outputs/sweeps/2026-12-07/23-31-25", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path)
    assert len(flopsweep.load_runs("ls", sweep="2026-12-07/23-31-25")) == 2
    with pytest.raises(LookupError) as err:
        flopsweep.load_runs("ls", sweep="2026-12-07/23-31-2")
    assert str(err.value) == ("load_runs: no sweep '2026-12-07/23-31-2' in experiment 'ls' (did you mean "
                              "'2026-12-07/23-31-25'?); its sweeps: 2026-12-07/23-31-25")
