"""Scale out: real multiruns through Hydra's joblib and submitit launchers into a real MLflow store. Eight workers
log every run exactly once; a worker killed mid-sweep loses only its own job, which the summary and the exit
status report and a rerun with skip_existing=true measures; timing jobs are refused side by side."""

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from flopsweep.config.schema import CONF_DIR
from flopsweep.sweep.joblib_fast import _Once
from flopsweep.sweep.plan import SweepPlan, concurrent_timing_error, jobs_at_once
from tests.helpers import run_app, run_cli

TINY = ["model=gpt2_small", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.vocab_size=1000",
        "batch.seq_len=32", "device=meta"]


def sweep_results(cwd: Path) -> dict[str, dict]:
    (sweep_dir,) = (cwd / "outputs" / "sweeps").glob("*/*")
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def store(cwd: Path, experiment: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("flopsweep.kind") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("flopsweep.kind") == "job"]
    return parents, jobs


def most_at_once(sweep_dir: Path) -> int:
    """The most jobs that ran at the same time: each job's span runs from Hydra saving its config to its result."""
    spans = [((p.parent / ".hydra" / "config.yaml").stat().st_mtime, p.stat().st_mtime)
             for p in sweep_dir.glob("*/result.json")]
    return max(sum(start <= t < end for start, end in spans) for t, _ in spans)


@pytest.mark.slow
def test_eight_joblib_workers_log_every_run_exactly_once(tmp_path):
    proc = run_cli("-m", *TINY, "batch.size=range(1,22)", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8",
                   "tracking.experiment=eight", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "database is locked" not in proc.stdout + proc.stderr
    assert "\t#0 : " not in proc.stdout + proc.stderr  # 21 jobs: their [job N/M] lines name them, not a list first
    assert "A worker stopped" not in proc.stderr
    results = sweep_results(tmp_path)
    assert len(results) == 21 and {r["status"] for r in results.values()} == {"ok"}
    assert all(r["info"]["tracking"]["logged"] for r in results.values())
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    assert most_at_once(sweep_dir) >= 2, "the jobs should have run side by side"
    # each job's progress line is whole and numbered out of the sweep's size, which the workers got with their jobs
    progress = [int(n) for n in re.findall(r"^\[job (\d+)/21\] gpt2_small: b\d+  elapsed", proc.stdout, re.MULTILINE)]
    assert sorted(progress) == list(range(1, 22))
    # side by side, a job's figures come after other jobs' lines: they say whose they are
    from flopsweep.core.text import format_metric

    results_by_size = {r["config"]["batch"]["size"]: format_metric("flops/forward", r["metrics"]["flops/forward"])
                       for r in results.values()}
    headed = re.findall(r"^\[job (\d+)/21\] gpt2_small: b(\d+) done:\nflops/forward +(\S+)$", proc.stdout,
                        re.MULTILINE)
    assert len(headed) == 21
    for n, size, forward in headed:
        assert int(n) == int(size) and forward == results_by_size[int(size)]

    (parent,), jobs = store(tmp_path, "eight")
    assert len(jobs) == 21
    assert sorted(int(r.data.params["batch.size"]) for r in jobs) == list(range(1, 22))  # each once
    assert len({r.data.tags["flopsweep.fingerprint"] for r in jobs}) == 21
    assert {r.info.status for r in jobs} == {"FINISHED"}
    # the workers found the parent run the sweep opened before them
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert {r["info"]["tracking"]["run_id"] for r in results.values()} == {r.info.run_id for r in jobs}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs/ok"] == 21 and parent.data.metrics["jobs/failed"] == 0
    assert parent.data.metrics["jobs/lost"] == 0


@pytest.mark.slow
def test_joblib_with_one_worker_runs_the_jobs_in_the_sweeps_process(tmp_path):
    proc = run_app("-m", *TINY, "batch.size=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1",
                   "tracking.experiment=one", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = sweep_results(tmp_path)
    assert len(results) == 2 and {r["status"] for r in results.values()} == {"ok"}
    (parent,), jobs = store(tmp_path, "one")
    assert len(jobs) == 2 and parent.info.status == "FINISHED"


def test_a_launcher_that_cannot_start_fails_the_sweep_and_closes_its_run(tmp_path):
    proc = run_app("-m", *TINY, "batch.size=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0",
                   "tracking.experiment=zero", cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("flopsweep: error")]
    assert len(errors) == 1 and "n_jobs" in errors[0] and "Traceback" not in proc.stderr
    (parent,), jobs = store(tmp_path, "zero")
    assert jobs == [] and parent.info.status == "FAILED"  # ended, not left RUNNING


def _seen_in_worker(state) -> tuple[int, int, int]:
    return os.getpid(), id(state), len(state.value["config"])


def test_a_joblib_worker_unpickles_the_sweep_state_once():
    from joblib import Parallel, delayed

    state = _Once({"config": list(range(10_000))})
    seen = Parallel(n_jobs=1, backend="loky")(delayed(_seen_in_worker)(state) for _ in range(4))
    assert len(set(seen)) == 1  # one worker, and every task got the same object: unpickled for the first only
    (pid, _, size), = set(seen)
    assert size == 10_000
    (again,) = Parallel(n_jobs=1, backend="loky")(delayed(_seen_in_worker)(_Once({"config": []})) for _ in range(1))
    # the same worker, a new sweep state (compared by content: the old object is freed and its id may come again)
    assert again[0] == pid and again[2] == 0


# A user model whose construction kills its own process (SIGKILL: what the kernel's OOM killer sends) for one
# configuration while a fault file exists. flopsweep builds it like any custom model: no test hook in the product.
CRASHING_MODEL = '''
import os
import signal

from torch import nn


class CrashingEncoder(nn.TransformerEncoderLayer):
    def __init__(self, fault_file, **kwargs):
        if os.path.exists(fault_file) and str(kwargs["dim_feedforward"]) == open(fault_file).read().strip():
            os.kill(os.getpid(), signal.SIGKILL)
        super().__init__(**kwargs)
'''


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_job_and_a_rerun_measures_it(tmp_path, monkeypatch):
    (tmp_path / "crashing_model.py").write_text(CRASHING_MODEL)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    fault = tmp_path / "fault"
    fault.write_text("128")
    sweep = ["-m", "model=custom_example", "model._target_=crashing_model.CrashingEncoder",
             f"+model.fault_file={fault}", "model.dim_feedforward=32,64,96,128,160,192", "batch.seq_len=8",
             "device=meta", "tracking.experiment=killed"]
    first = run_cli(*sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    results = sweep_results(tmp_path)
    # the five other jobs finished, those killed with the pool included, and were logged
    assert sorted(r["config"]["model"]["dim_feedforward"] for r in results.values()) == [32, 64, 96, 160, 192]
    assert {r["status"] for r in results.values()} == {"ok"}
    assert all(r["info"]["tracking"]["logged"] for r in results.values())
    assert "a worker process died" in first.stderr and "is lost: its worker process died again" in first.stderr
    (lost_row,) = [line for line in first.stdout.splitlines() if re.match(r"\d+_custom_example .* lost", line)]
    assert lost_row.startswith("3_custom_example")
    assert "6 jobs: 5 ok, 1 lost" in first.stdout
    assert "lost: a job's process died before it finished; run the same command with skip_existing=true to measure " \
        "only what is missing" in first.stdout
    (parent,), jobs = store(tmp_path, "killed")
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs/lost"] == 1
    assert parent.data.metrics["jobs/ok"] == 5
    assert len(jobs) == 5 and {r.info.status for r in jobs} == {"FINISHED"}  # nothing left RUNNING, no twins
    assert sorted(int(r.data.params["model.dim_feedforward"]) for r in jobs) == [32, 64, 96, 160, 192]

    fault.unlink()  # the fault is gone: resume (in the sweep's own process: what is skipped is what the store says)
    monkeypatch.syspath_prepend(str(tmp_path))  # crashing_model, for the rerun in this process
    rerun = run_app(*sweep, "skip_existing=true", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    second = max((tmp_path / "outputs" / "sweeps").glob("*/*"))
    measured = [json.loads(p.read_text()) for p in second.glob("*/result.json")]
    assert Counter(r["status"] for r in measured) == {"skipped": 5, "ok": 1}
    assert [r["config"]["model"]["dim_feedforward"] for r in measured if r["status"] == "ok"] == [128]
    _, jobs = store(tmp_path, "killed")
    finished = Counter(r.data.tags["flopsweep.fingerprint"] for r in jobs if r.info.status == "FINISHED")
    assert len(finished) == 6 and set(finished.values()) == {1}  # one finished run per configuration


def test_after_a_worker_dies_only_the_runs_its_job_folders_name_stay(tmp_path, monkeypatch, compose_cfg):
    """A worker killed after its job logged a FINISHED run and before the job wrote the run's id into its
    result.json: the job runs again, so that run must go, or the job ends with two runs (seen in CI)."""
    from omegaconf import OmegaConf

    from flopsweep.core.result import Result
    from flopsweep.sweep.sweeper import RecoveringLauncher
    from flopsweep.sinks.store import Store
    from flopsweep.sweep.state import CONTEXT_ENV, SweepContext
    from flopsweep.sinks.target import target_of

    cfg = compose_cfg("tracking.experiment=cleanup")
    config = OmegaConf.create({"tracking": cfg.tracking, "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    monkeypatch.chdir(tmp_path)
    db = Store(target_of(cfg.tracking, tmp_path))
    parent = db.start_parent(tmp_path / "sweep", [])
    other = db.start_parent(tmp_path / "other", [])  # another sweep's jobs are not this one's to delete
    exp = db.experiment_id()
    child = {"mlflow.parentRunId": parent, "flopsweep.kind": "job"}
    recorded, twin, cut_off = (db.client.create_run(exp, tags=child).info.run_id for _ in range(3))
    foreign = db.client.create_run(exp, tags={**child, "mlflow.parentRunId": other}).info.run_id
    for run_id in (recorded, twin, foreign):
        db.client.set_terminated(run_id, "FINISHED")
    for name, info in [("0_job", {"tracking": {"logged": True, "run_id": recorded}}), ("1_job", {})]:
        (tmp_path / "sweep" / name).mkdir(parents=True)
        Result("ok", None, {}, info=info).write(tmp_path / "sweep" / name / "result.json")
    (tmp_path / "sweep" / "2_job").mkdir()
    (tmp_path / "sweep" / "2_job" / "result.json").write_text('{"status": "o')  # cut off mid-write
    monkeypatch.setenv(CONTEXT_ENV, "")
    SweepContext(parent=parent).publish()  # monkeypatch restores the variable

    RecoveringLauncher(None, config, None)._forget_cut_off_runs()
    active = {r.info.run_id for r in db.client.search_runs([exp])}
    assert active == {parent, other, recorded, foreign}
    assert {db.client.get_run(r).info.lifecycle_stage for r in (twin, cut_off)} == {"deleted"}


@pytest.mark.slow
def test_submitit_local_runs_a_meta_sweep(tmp_path):
    proc = run_cli("-m", *TINY, "batch.size=1,2", "hydra/launcher=submitit_local", "tracking.experiment=submitit",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = sweep_results(tmp_path)
    assert len(results) == 2 and {r["status"] for r in results.values()} == {"ok"}
    (parent,), jobs = store(tmp_path, "submitit")
    assert len(jobs) == 2 and {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs/ok"] == 2
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    submitted = [p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]
    assert len(submitted) == 2  # a submitit job (a process) of its own for each


@pytest.mark.slow
def test_forced_timing_jobs_get_workers_that_import_torch_with_their_thread_share(tmp_path):
    import joblib

    proc = run_cli("-m", *TINY, "device=cpu", "measure.warmup=0", "measure.repeats=1", "batch.size=1,2",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.allow_concurrent_timing=true",
                   "tracking.experiment=forced", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = sweep_results(tmp_path)
    assert len(results) == 2 and all(r["status"] == "ok" and r["metrics"]["time/step_s"] > 0
                                     for r in results.values())
    # joblib gives each of 2 workers half the cores through OMP_NUM_THREADS, read when torch is imported: workers
    # started early for timing jobs must import torch themselves (a fork server's torch would use every core)
    assert {r["info"]["timing"]["threads"] for r in results.values()} == {max(1, joblib.cpu_count() // 2)}
    (parent,), jobs = store(tmp_path, "forced")
    assert len(jobs) == 2 and {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}


def test_timing_jobs_side_by_side_are_refused_before_anything_starts(tmp_path):
    proc = run_app("-m", *TINY, "device=cpu", "batch.size=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   cwd=tmp_path, store=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("flopsweep: error: hydra.launcher.n_jobs=2: 2 of the 2 jobs time on cpu")
    assert "hydra.sweeper.allow_concurrent_timing=true" in lines[0]
    assert not (tmp_path / "outputs").exists()  # no store, no parent run, no job folder


def multirun_config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def check(*overrides: str):
    """The refusal for these overrides (a multirun's command line), as the sweep callback sees them."""
    from omegaconf import OmegaConf

    cfg = multirun_config(*[o for o in overrides if "," not in o])
    OmegaConf.set_readonly(cfg, False)
    cfg.hydra.overrides.task = [o for o in overrides if not o.startswith("hydra")]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return concurrent_timing_error(SweepPlan.of(cfg))


def test_which_sweeps_may_run_side_by_side():
    joblib2 = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert check(*joblib2, "device=meta", "batch.size=1,2") is None                  # count only
    assert check(*joblib2, "device=cpu", "measure.time=false", "batch.size=1,2") is None
    assert check("device=cpu", "batch.size=1,2") is None                              # basic: one at a time
    assert check("hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "device=cpu", "batch.size=1,2") is None
    assert check(*joblib2, "device=cpu", "batch.size=1,2", "hydra.sweeper.allow_concurrent_timing=true") is None
    mixed = check(*joblib2, "device=meta,cpu", "measure.time=true,false", "batch.size=1,2")
    assert mixed.startswith("hydra.launcher.n_jobs=2: 2 of the 8 jobs time on cpu")  # the one combination that times
    local = check("hydra/launcher=submitit_local", "device=cpu", "batch.size=1,2,3")
    assert local.startswith("hydra/launcher=submitit_local: 3 of the 3 jobs time on cpu")
    assert check("hydra/launcher=slurm", "device=cpu", "batch.size=1,2,3") is None    # an allocation per job
    # presets set the device themselves: gpt3_family counts on meta, quickstart times on the CPU
    assert check(*joblib2, "+sweep=gpt3_family") is None
    assert check(*joblib2, "+sweep=quickstart").startswith("hydra.launcher.n_jobs=2: 5 of the 5 jobs time on cpu")


def test_launcher_concurrency():
    import joblib

    cfg = multirun_config("hydra/launcher=joblib", "hydra.launcher.n_jobs=-1")
    assert jobs_at_once(cfg.hydra.launcher, 1000) == joblib.cpu_count()
    assert jobs_at_once(cfg.hydra.launcher, 1) == 1
    assert jobs_at_once(multirun_config("hydra/launcher=submitit_local").hydra.launcher, 5) == 5
    assert jobs_at_once(multirun_config().hydra.launcher, 5) == 1


def test_slurm_preset_takes_partition_gpus_time_and_parallelism_from_the_command_line():
    cfg = multirun_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                          "hydra.launcher.array_parallelism=4")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.array_parallelism) == \
        ("gpu", 1, 30, 4)
    built = instantiate(launcher)
    assert built.params["partition"] == "gpu" and built.params["gpus_per_node"] == 1
    assert built.params["submitit_folder"].endswith("/.submitit/%j")
    # and the defaults: a GPU per job, an hour, 16 array tasks at once
    defaults = multirun_config("hydra/launcher=slurm").hydra.launcher
    assert (defaults.partition, defaults.gpus_per_node, defaults.timeout_min, defaults.array_parallelism) == \
        (None, 1, 60, 16)


@pytest.mark.slow
def test_the_wheel_ships_the_launcher_preset_and_the_sweeper(tmp_path):
    import subprocess
    import sys
    import zipfile

    from tests.helpers import REPO

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("flopsweep-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unpacked", [n for n in names if n.startswith("flopsweep/conf/")])
    # Hydra instantiates sweepers only from the hydra_plugins package: the wheel must carry it
    assert {"hydra_plugins/flopsweep_sweeper/__init__.py", "flopsweep/conf/hydra/sweeper/flopsweep.yaml",
            "flopsweep/conf/hydra/launcher/slurm.yaml"} <= names
    assert "hydra_plugins/__init__.py" not in names  # a namespace shared with Hydra's own plugins
    with initialize_config_dir(version_base="1.3", config_dir=str(tmp_path / "unpacked" / "flopsweep" / "conf")):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.flopsweep_sweeper.RecoveringSweeper"


def test_a_slurm_sweep_without_slurm_is_its_error_line_alone(tmp_path):
    """No Slurm on the PATH: the one line, before the sweep makes its folder and its run (a newcomer got an empty table,
    an MLflow link to a FAILED run with no job, and a folder the README's "latest sweep" commands then picked)."""
    done = run_app("-m", "model=gpt2_small", "model.n_layer=1", "batch.seq_len=8", "device=meta", "batch.size=1,2",
                   "hydra/launcher=slurm", cwd=tmp_path, env={"PATH": str(tmp_path)}, store=False)
    assert done.returncode == 2  # refused as the command line's other impossibilities are
    assert done.stderr.splitlines() == ["flopsweep: error: hydra/launcher=slurm: Slurm's commands (sinfo, sbatch) are "
                                        "not on this machine's PATH; run the sweep on a Slurm login node, or choose "
                                        "another hydra/launcher"]
    assert done.stdout == "" and not (tmp_path / "outputs").exists()  # no folder, no store, no run: refused first


@pytest.mark.skipif(shutil.which("sinfo") is None or Path("/etc/slurm/slurm.conf").exists(),
                    reason="needs Slurm's commands on a machine in no cluster")
def test_a_slurm_sweep_on_a_machine_in_no_cluster_says_so_in_one_line(tmp_path):
    """Slurm's commands installed and no slurm.conf: the line was sinfo's DNS lookup ("resolve_ctls_from_dns_srv:
    res_nsearch error: Unknown host; fetch_config: DNS SRV lookup failed; ...")."""
    done = run_app("-m", "model=gpt2_small", "model.n_layer=1", "batch.seq_len=8", "device=meta", "batch.size=1,2",
                   "hydra/launcher=slurm", cwd=tmp_path, env={"SLURM_CONF": None}, store=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "flopsweep: error: hydra/launcher=slurm: this machine is in no Slurm cluster: Slurm's commands are here but "
        "find no configuration (no slurm.conf, SLURM_CONF unset, no controller named in DNS); run the sweep on a "
        "Slurm login node, set SLURM_CONF, or choose another hydra/launcher"]
    assert not (tmp_path / "outputs").exists()


def test_a_slurm_controller_silent_past_its_time_is_asked_again_not_raised(tmp_path, monkeypatch):
    """scontrol, asked whether a job squeue no longer lists has ended, that says nothing for ANSWER_S: the job is
    taken as not ended (asked again), where its TimeoutExpired went up through Hydra as a traceback."""
    from flopsweep.sweep import slurm

    (tmp_path / "scontrol").write_text("#!/bin/sh\nsleep 5\n")
    (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "ANSWER_S", 0.2)
    assert slurm._state("123") == (None, "None")
