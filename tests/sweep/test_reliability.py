"""Nothing lost: files written whole (a real full disk: a small tmpfs), and a sweep's summary made from every job's
fields whatever their order and statuses, its failure never leaving the sweep's run open nor its exit status 0.
docs/reliability.md lists each guarantee with the test that holds it."""

import csv
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flopsweep.core.files import write_whole
from flopsweep.sinks.jobdir import write_csv
from tests.helpers import run_app

TINY = ["-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16", "tracking.experiment=rs"]


def sweeps(cwd: Path, experiment: str = "rs") -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'",
                              order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_a_resume_whose_first_job_is_skipped_writes_every_jobs_row_and_closes_its_run(tmp_path):
    """The summary's columns came from the first job: a skipped one (every skip_existing rerun) has no measured
    metrics, the measured job after it did not fit, the summary was cut short and the sweep's run left RUNNING."""
    first = run_app(*TINY, "batch.size=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_app(*TINY, "batch.size=1,2", "skip_existing=true", "hydra.sweep.dir=resumed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Callback" not in resumed.stderr and "error" not in resumed.stderr, resumed.stderr
    with (tmp_path / "resumed" / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["job"], r["status"]) for r in rows] == [("0_gpt2_small", "skipped"), ("1_gpt2_small", "ok")]
    (first_result,) = tmp_path.glob("outputs/sweeps/*/*/0_gpt2_small/result.json")  # a skipped row: its run's figures
    assert float(rows[0]["flops/forward"]) == json.loads(first_result.read_text())["metrics"]["flops/forward"]
    assert float(rows[1]["flops/forward"]) > 0
    measured = json.loads((tmp_path / "resumed" / "1_gpt2_small" / "result.json").read_text())["metrics"]
    assert set(measured) <= set(rows[1])  # every metric of the measured job has its column
    assert [run.info.status for run in sweeps(tmp_path)] == ["FINISHED", "FINISHED"]
    # the resumed sweep's view in MLflow shows both of its jobs: the one measured now and the earlier sweep's run
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rs")
    latest = sweeps(tmp_path)[-1]
    state = json.loads(json.loads(experiment.tags[f"mlflow.sharedViewState.flopsweep-{latest.info.run_id}"])["state"])
    shown = client.search_runs([experiment.experiment_id], state["searchFilter"])
    assert sorted(r.data.params["batch.size"] for r in shown) == ["1", "2"] and "params.`batch.size`" in state[
        "selectedColumns"]  # the key that varies, the earlier sweep's job counted


def test_the_summary_columns_are_every_rows_keys_in_order_of_appearance(tmp_path):
    write_csv(tmp_path / "t.csv", [{"job": "a", "x": 1}, {"job": "b", "y": 2, "x": 3}, {"z": 4}])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["job,x,y,z", "a,1,,", "b,3,2,", ",,,4"]


def test_a_summary_that_cannot_be_written_is_one_line_fails_the_sweep_and_closes_its_run(tmp_path):
    (tmp_path / "sweep" / "summary.csv").mkdir(parents=True)  # a folder where the summary goes
    proc = run_app(*TINY, "batch.size=1,2", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("flopsweep: error:")]
    assert len(errors) == 1 and "summary" in errors[0] and "summary.csv" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Callback" not in proc.stderr
    assert all(json.loads((tmp_path / "sweep" / f"{n}_gpt2_small" / "result.json").read_text())["status"] == "ok"
               for n in (0, 1))  # what was measured stays
    assert [run.info.status for run in sweeps(tmp_path)] == ["FAILED"]  # closed, not left RUNNING


@pytest.fixture
def small_disk(tmp_path, tmpfs):
    """A real 64 KiB tmpfs."""
    return tmpfs(tmp_path / "disk")


def test_a_full_disk_leaves_the_file_before_it_whole_and_no_half_file(small_disk):
    result = small_disk / "result.json"
    write_whole(result, '{"status": "ok"}\n')
    with pytest.raises(OSError) as err:
        write_whole(result, "x" * (128 << 10))  # twice the disk
    assert err.value.errno == 28  # ENOSPC: no space left on device
    assert result.read_text() == '{"status": "ok"}\n'  # the file before: whole
    assert sorted(p.name for p in small_disk.iterdir()) == ["result.json"]  # no temporary left behind
    with pytest.raises(OSError):
        write_whole(small_disk / "new.json", "y" * (128 << 10))
    assert not (small_disk / "new.json").exists()  # a reader sees the whole file or none


def test_every_guarantee_in_the_docs_names_a_test_that_exists():
    import re

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "docs" / "reliability.md").read_text()
    named, current = [], None
    for cell in re.findall(r"`((?:tests/\w+/\w+\.py)?::\w+)`", text):
        current = cell.split("::")[0] or current
        named.append((current, cell.split("::")[1]))
    assert len(named) >= 20
    missing = [f"{path}::{name}" for path, name in named if f"def {name}(" not in (repo / path).read_text()]
    assert not missing, missing


@pytest.mark.slow
def test_sweeps_runs_and_syncs_started_at_once_into_a_new_store_each_log_once_in_a_folder_of_their_own(tmp_path):
    """Two sweeps, a single run and two syncs of the same unlogged sweep, started at once as processes into a store
    that does not exist yet: each sweep in a folder of its own (the same second's name, then -2), every folder whole
    and its summary of its own jobs; the store made once (it was left broken for good when two processes made its
    schema), every run in it exactly once, under its own sweep's parent."""
    import sys

    from tests.helpers import child_env

    tiny = ["model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16"]
    unlogged = run_app("-m", *tiny, "batch.size=3,4", "tracking=none", "hydra.sweep.dir=unlogged", cwd=tmp_path)
    assert unlogged.returncode == 0, unlogged.stderr
    flopsweep, sync = [sys.executable, "-m", "flopsweep"], [sys.executable, "-m", "flopsweep.cli.sync"]
    commands = [[*flopsweep, "-m", *tiny, "batch.size=1,2"]] * 2 + [[*flopsweep, *tiny]] + \
        [[*sync, "unlogged", "--store-dir", "outputs"]] * 2
    procs = [subprocess.Popen(command, cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for command in commands]
    errors = [p.stderr.read() for p in procs]
    assert [p.wait(timeout=300) for p in procs] == [0] * len(procs), errors
    assert not any("warning" in e or "error" in e for e in errors), errors
    sweep_dirs = sorted((tmp_path / "outputs" / "sweeps").glob("*/*"))
    assert len(sweep_dirs) == 2
    for folder in sweep_dirs:
        assert sorted(p.parent.name for p in folder.glob("*/result.json")) == ["0_gpt2_small", "1_gpt2_small"]
        with (folder / "summary.csv").open() as handle:
            assert [row["job"] for row in csv.DictReader(handle)] == ["0_gpt2_small", "1_gpt2_small"]
    singles = list((tmp_path / "outputs" / "runs").glob("*/*/result.json"))
    assert len(singles) == 1

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("flopsweep").experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = {r.info.run_id: r.data.tags["flopsweep.sweep"] for r in runs
               if r.data.tags.get("flopsweep.kind") == "sweep"}
    assert sorted(Path(d).name for d in parents.values()) == sorted([d.name for d in sweep_dirs] + ["unlogged"])
    jobs = [r for r in runs if r.data.tags.get("flopsweep.kind") == "job"]
    by_sweep = Counter(Path(parents.get(r.data.tags.get("mlflow.parentRunId"), "none")).name for r in jobs)
    assert by_sweep == {**{d.name: 2 for d in sweep_dirs}, "unlogged": 2, "none": 1}  # the single run: no parent
    synced = [r for r in jobs if parents.get(r.data.tags.get("mlflow.parentRunId"), "").endswith("unlogged")]
    assert sorted(int(r.data.params["batch.size"]) for r in synced) == [3, 4]  # each once, by two syncs


def test_a_new_folder_is_never_one_made_before(tmp_path):
    from flopsweep.config.compose import new_folder

    base = str(tmp_path / "sweeps" / "12-00-00")
    made = [new_folder(base) for _ in range(3)]
    assert made == [base, f"{base}-2", f"{base}-3"] and all(Path(m).is_dir() for m in made)


@pytest.fixture
def memory_cgroup(tmp_path):
    """A real child of this process's own memory cgroup (v1's memory controller, or v2) with a 300 MiB limit, as
    Slurm or systemd give a job; skipped where cgroups cannot be made (not root, a read-only cgroupfs)."""
    limit = 300 << 20
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder, limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / f"flopsweep-{os.getpid()}", \
                "memory.limit_in_bytes"
            break
    else:
        own = next((line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line.startswith("0::")), "/")
        folder, limit_file = Path("/sys/fs/cgroup") / own.lstrip("/") / f"flopsweep-{os.getpid()}", "memory.max"
    try:
        folder.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a memory cgroup here: {err}")
    try:
        (folder / limit_file).write_text(str(limit))
        probe = subprocess.run(["sh", "-c", f'echo $$ > "{folder}/cgroup.procs"'], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"cannot move a process into a memory cgroup here: {probe.stderr.strip()}")
        yield folder, limit_file, limit
    except OSError as err:
        pytest.skip(f"cannot limit a memory cgroup here: {err}")
    finally:
        folder.rmdir()


def test_the_memory_check_reads_the_limit_of_the_processs_own_cgroup(memory_cgroup):
    """Under a per-job cgroup limit the room is under that limit, read from the cgroup /proc/self/cgroup names; the
    hierarchy's root (what was read before) has none."""
    import sys

    folder, limit_file, limit = memory_cgroup
    code = ("from flopsweep.core.device import Device\nfrom flopsweep.run.fit import available_memory\n"
            "a = available_memory(Device('cpu'))\nprint(a.bytes)\nprint(a.source)")
    out = subprocess.run(["sh", "-c", f'echo $$ > "{folder}/cgroup.procs" && exec "$0" -c "$1"', sys.executable, code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    room, source = out.stdout.splitlines()
    assert 0 < int(room) <= limit and source == f"room under the cgroup limit ({folder / limit_file})"


CPU_SWEEP = ["-m", "model=gpt2_small", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.vocab_size=1000",
             "batch.seq_len=32", "device=cpu", "measure.warmup=1", "measure.repeats=20", "batch.size=1,2,3,4,5,6",
             "tracking.experiment=signals"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [2, 15], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_sweep_with_its_summary_its_run_killed_and_a_resume_line(tmp_path, signum):
    """Ctrl-C (SIGINT) or kill, timeout, Slurm's preemption (SIGTERM) mid-sweep: no traceback; the summary of what
    finished printed and written; the sweep's run closed as KILLED with its counts; one line that says how to resume;
    exit status 128 + the signal. The resumed sweep (SIGTERM) ends with one finished run per configuration."""
    import signal
    import sys
    import time

    from tests.helpers import child_env

    proc = subprocess.Popen([sys.executable, "-m", "flopsweep", *CPU_SWEEP], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(list(tmp_path.glob("outputs/sweeps/*/*/*/result.json"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    (line,) = [e for e in err.splitlines() if e.startswith("flopsweep:")]
    assert line.startswith(f"flopsweep: interrupted by {signal.Signals(signum).name}: what finished is in ")
    assert "skip_existing=true" in line
    (sweep_dir,) = tmp_path.glob("outputs/sweeps/*/*")
    with (sweep_dir / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert 2 <= len(rows) < 6 and "jobs:" in out
    for row in rows:  # measured, or the job the signal stopped, recorded as such
        assert row["status"] == "ok" or (row["status"] == "interrupted" and "interrupted by" in row["error"]), row
    (parent,) = sweeps(tmp_path, "signals")
    assert parent.info.status == "KILLED"
    assert parent.data.metrics["jobs/ok"] == sum(r["status"] == "ok" for r in rows)
    if signum == signal.SIGTERM:
        resumed = run_app(*CPU_SWEEP, "skip_existing=true", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
        finished = client.search_runs([client.get_experiment_by_name("signals").experiment_id],
                                      "tags.`flopsweep.kind` = 'job' and attributes.status = 'FINISHED'")
        assert sorted(int(r.data.params["batch.size"]) for r in finished) == [1, 2, 3, 4, 5, 6]


def test_a_signal_during_a_jobs_recording_is_raised_once_the_record_is_whole():
    """A real SIGTERM sent while a job's folder and run are being written (a store transaction cut in half left the
    store locked for the summary): nothing is raised inside, the interrupt comes right after."""
    import signal

    from flopsweep.sweep import state

    before = signal.signal(signal.SIGTERM, state.on_signal)
    written = []
    try:
        with pytest.raises(state.Interrupted) as err:
            with state.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                written.append("the rest of the record")  # reached: the signal waited
        assert err.value.signum == signal.SIGTERM and written == ["the rest of the record"]
        with pytest.raises(state.Interrupted):  # and outside a record, at once
            os.kill(os.getpid(), signal.SIGTERM)
            written.append("never")
        assert written == ["the rest of the record"]
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.slow
def test_a_sync_closes_the_run_of_a_sweep_whose_process_is_gone(tmp_path):
    """A sweep run left RUNNING by a process of this host that no longer exists (SIGKILL) is closed by the next sync
    into its experiment: KILLED, with the counts of what its folder holds. One whose process runs stays open."""
    import socket
    import sys

    from flopsweep.cli.sync import main as sync
    from tests.helpers import local_store, run_main

    made = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16", "batch.size=1,2",
                   "tracking=none", "tracking.experiment=rs", "hydra.sweep.dir=dead", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "dead" / "summary.csv").unlink()  # killed before its end, as SIGKILL leaves a sweep
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    client = MlflowClient(tracking_uri=f"sqlite:///{local_store(tmp_path / 'outputs')}")
    experiment_id = client.create_experiment("rs", str(tmp_path / "outputs" / "mlartifacts"))  # not ./mlruns
    tags = {"flopsweep.kind": "sweep", "host": socket.gethostname()}
    dead = client.create_run(experiment_id, tags={**tags, "flopsweep.sweep": str(tmp_path / "dead"),
                                                  "flopsweep.pid": str(gone.pid)})
    alive = client.create_run(experiment_id, tags={**tags, "flopsweep.sweep": str(tmp_path / "elsewhere"),
                                                   "flopsweep.pid": str(os.getpid())})
    synced = run_main(sync, "dead", "--store-dir", "outputs", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    closed = client.get_run(dead.info.run_id)
    assert closed.info.status == "KILLED" and closed.data.metrics["jobs/ok"] == 2
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    # said, where it said only what it logged
    assert "; 1 run of a sweep whose process is gone closed, with what its folder holds  (" in synced.stdout
    again = run_main(sync, "dead", "--store-dir", "outputs", cwd=tmp_path)
    assert "process is gone" not in again.stdout, again.stdout


@pytest.mark.slow  # two real sweeps
def test_a_sync_closes_the_run_of_a_sweep_on_another_host_whose_heartbeat_stopped(tmp_path):
    """Issue 28 item 8: a sweep that ran on another host (a compute node; its folder shared) cannot be asked for its
    process: its heartbeat, ``.flopsweep-alive`` in its folder, touched every 30 s while it runs, tells. One older than
    five minutes is a sweep that stopped: the sync closes its run, KILLED; one touched now stays open."""
    import time

    from flopsweep.cli.sync import main as sync
    from tests.helpers import local_store, run_main

    for name in ("stopped", "running"):
        made = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16",
                       "batch.size=1,2", "tracking=none", f"hydra.sweep.dir={name}", cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        assert (tmp_path / name / ".flopsweep-alive").exists()  # the sweep's own heartbeat
        (tmp_path / name / "summary.csv").unlink()  # cut before its end
    old = time.time() - 600
    os.utime(tmp_path / "stopped" / ".flopsweep-alive", (old, old))
    client = MlflowClient(tracking_uri=f"sqlite:///{local_store(tmp_path / 'outputs')}")
    experiment_id = client.create_experiment("rs", str(tmp_path / "outputs" / "mlartifacts"))  # not ./mlruns
    runs = {name: client.create_run(experiment_id, tags={
        "flopsweep.kind": "sweep", "host": "a-compute-node", "flopsweep.pid": "1",  # a pid of another machine
        "flopsweep.sweep": str(tmp_path / name)}).info.run_id for name in ("stopped", "running")}
    synced = run_main(sync, ".", "--store-dir", "outputs", "--experiment", "rs", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    assert client.get_run(runs["stopped"]).info.status == "KILLED"
    assert client.get_run(runs["running"]).info.status == "RUNNING"


SWALLOWED = """
import os, signal, sys, time, weakref
from flopsweep.sweep import state
signal.signal(signal.SIGINT, state.on_signal)
if sys.argv[1] == "kept":
    state.keep_swallowed_interrupts()
class Obj:
    pass
def freed(_):  # what a measurement's weak-reference callbacks do (measure/size.py), a signal arriving meanwhile
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100000):
        pass
try:
    o = Obj()
    r = weakref.ref(o, freed)
    del o
    t = time.time()
    while time.time() - t < 3:
        pass
    print("went on")
except KeyboardInterrupt as err:
    print("interrupted", type(err).__name__)
"""


@pytest.mark.slow  # real signals
def test_an_interrupt_that_lands_in_a_weak_reference_callback_is_not_lost():
    """Issue 28 item 6: Python can only print an exception raised in a weak-reference callback ("Exception ignored
    in ...", the line seen in the Ctrl-C test on a loaded machine), and the interrupt was lost: the sweep went on.
    The sweep's process (and joblib's workers) deliver it again as its signal, until it lands where it can be raised."""
    import sys

    from tests.helpers import child_env

    def run(how: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", SWALLOWED, how], capture_output=True, text=True, timeout=60,
                              env=child_env())

    lost = run("python's")
    assert lost.stdout.strip() == "went on" and "Exception ignored" in lost.stderr  # what happens without it
    kept = run("kept")
    assert kept.stdout.strip() == "interrupted Interrupted" and kept.stderr == "", kept.stderr


@pytest.mark.slow  # joblib's workers
def test_an_interrupt_that_lands_in_a_weak_reference_callback_in_a_joblib_worker_ends_the_sweep(tmp_path):
    """CI's Ctrl-C test printed "Exception ignored in: <function LiveBytes.track...>" and a KeyboardInterrupt's
    traceback: a joblib worker forked from loky's server (a sweep that times nothing) had Python's own hook, so the
    interrupt was printed and lost and the job went on. Every job's process delivers it again."""
    import sys

    from tests.helpers import child_env, custom_model

    proc = subprocess.run([sys.executable, "-m", "flopsweep", "-m",
                           *custom_model("tests.helpers.InterruptedInACallback", "[{name:x,shape:[batch,4]}]"),
                           "device=meta", "batch.size=1,2,3,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 130, proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    rows = list(csv.DictReader((next(tmp_path.glob("outputs/sweeps/*/*")) / "summary.csv").open()))
    # every job's forward is interrupted: none ends ok; the other worker's job is cut as the sweep stops its workers,
    # recorded interrupted, or lost if it was cut as Hydra started it
    assert "interrupted" in {r["status"] for r in rows} <= {"interrupted", "lost"}, rows


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_reaches_joblibs_workers_too_and_the_sweep_ends_cleanly(tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole process group: the sweep and joblib's workers at once. The jobs
    the workers were running are recorded as interrupted, the sweep ends as for a SIGINT of its own (summary, run
    KILLED, one line, 130), and the resume ends with one finished run per configuration."""
    import signal
    import sys
    import time

    from tests.helpers import child_env

    sweep = ["-m", "model=gpt2_small", "device=meta", "batch.seq_len=128,256", "batch.size=1,2,4,8",
             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "tracking.experiment=group"]
    proc = subprocess.Popen([sys.executable, "-m", "flopsweep", *sweep], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while len(list(tmp_path.glob("outputs/sweeps/*/*/*/result.json"))) < 3 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # the group, as a terminal does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [e for e in err.splitlines() if e.startswith("flopsweep")]
    assert lines[-1].startswith("flopsweep: interrupted by SIGINT: what finished is in "), err
    (sweep_dir,) = tmp_path.glob("outputs/sweeps/*/*")
    # a worker cut after its job's result.json and before its run: said, with how to log it (the resume does too)
    cut = [r for r in map(json.loads, map(Path.read_text, sweep_dir.glob("*/result.json")))
           if "tracking" not in r["info"] and r["status"] in ("ok", "interrupted")]
    if cut:
        assert len(lines) == 2 and lines[0].startswith(f"flopsweep: warning: {len(cut)} of "), err
    else:
        assert len(lines) == 1, err
    with (sweep_dir / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert 3 <= len(rows) < 8
    # a worker cut while it runs a job records it interrupted; one cut as Hydra starts a job (its folder made, the
    # job not yet running) leaves it lost: either way the resume below measures it
    assert all(r["status"] == "ok" or "interrupted by SIGINT" in r["error"] or r["status"] == "lost" for r in rows), \
        rows
    (parent,) = sweeps(tmp_path, "group")
    assert parent.info.status == "KILLED"
    resumed = run_app(*sweep, "skip_existing=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    finished = client.search_runs([client.get_experiment_by_name("group").experiment_id],
                                  "tags.`flopsweep.kind` = 'job' and attributes.status = 'FINISHED'")
    assert Counter((r.data.params["batch.size"], r.data.params["batch.seq_len"]) for r in finished) == \
        Counter((str(b), str(s)) for b in (1, 2, 4, 8) for s in (128, 256))


@pytest.mark.slow
def test_a_job_interrupted_while_timed_is_recorded_interrupted_with_what_it_counted(tmp_path):
    from tests.helpers import custom_model

    proc = run_app("-m", *custom_model("tests.helpers.InterruptedWhenTimed", "[{name:x,shape:[batch,4]}]"),
                   "device=cpu", "batch.size=3", "tracking=none", cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert "1 job: 1 interrupted" in proc.stdout
    (row,) = list(csv.DictReader((next(tmp_path.glob("outputs/sweeps/*/*")) / "summary.csv").open()))
    assert row["status"] == "interrupted" and row["error"] == "interrupted by SIGINT before the job finished"
    assert float(row["flops/forward"]) == 2 * 3 * 4 * 4 and not row.get("time/step_median_s")  # counted, not timed
    single = run_app(*custom_model("tests.helpers.InterruptedWhenTimed", "[{name:x,shape:[batch,4]}]"),
                     "device=cpu", "batch.size=3", "tracking=none", cwd=tmp_path)
    (line,) = [e for e in single.stderr.splitlines() if e.startswith("flopsweep:")]
    (folder,) = tmp_path.glob("outputs/runs/*/*")
    assert single.returncode == 130 and line == f"flopsweep: interrupted by SIGINT: what the job measured before it " \
        f"is in {folder.resolve()}", single.stderr
    assert json.loads((folder / "result.json").read_text())["metrics"]["flops/forward"] == 2 * 3 * 4 * 4


def test_a_sweeps_job_cut_by_a_signal_is_logged_killed_and_the_jobs_never_started_are_counted(tmp_path):
    """The cut job's run is in the store as it is cut (KILLED, with what it counted), not left to a later sync; the
    summary counts the jobs the signal kept from starting."""
    from tests.helpers import custom_model

    proc = run_app("-m", *custom_model("tests.helpers.InterruptedWhenTimed", "[{name:x,shape:[batch,4]}]"),
                   "device=cpu", "batch.size=3,4,5", "tracking=local", "tracking.experiment=cut", cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert "3 jobs: 1 interrupted, 2 not started" in proc.stdout, proc.stdout
    (folder,) = [p.parent for p in tmp_path.glob("outputs/sweeps/*/*/*/result.json")]
    noted = json.loads((folder / "result.json").read_text())["info"]["tracking"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    run = client.get_run(noted["run_id"])
    assert noted["logged"] and run.info.status == "KILLED"
    assert run.data.metrics["flops/forward"] == 2 * 3 * 4 * 4 and "time/step_median_s" not in run.data.metrics


def test_an_interrupt_that_a_library_turns_into_another_error_still_ends_the_sweep(tmp_path):
    """It ended as "the launcher stopped (UnboundLocalError: ...)", exit status 1, once in some twenty SIGTERMs."""
    from tests.helpers import custom_model

    proc = run_app("-m", *custom_model("tests.helpers.SwallowsTheInterrupt", "[{name:x,shape:[batch,4]}]"),
                   "device=meta", "batch.size=1,2", cwd=tmp_path)
    assert proc.returncode == 143, proc.stderr
    (line,) = [e for e in proc.stderr.splitlines() if e.startswith("flopsweep")]
    assert line.startswith("flopsweep: interrupted by SIGTERM")
    (row,) = list(csv.DictReader((next(tmp_path.glob("outputs/sweeps/*/*")) / "summary.csv").open()))
    assert row["status"] == "interrupted" and "interrupted by SIGTERM" in row["error"]


@pytest.mark.slow  # joblib's workers
def test_a_workers_interrupt_that_a_library_turns_into_another_error_ends_its_job_as_interrupted(tmp_path):
    """Ctrl-C reaches joblib's workers too, where Python's own handler raised a bare interrupt that nothing
    remembered: one a library turned into its own error failed the job ("flopsweep: error: RuntimeError: ...") and
    the sweep went on to its next job."""
    import sys

    from tests.helpers import child_env, custom_model

    proc = subprocess.run([sys.executable, "-m", "flopsweep", "-m",
                           *custom_model("tests.helpers.SwallowsTheInterrupt", "[{name:x,shape:[batch,4]}]",
                                         signal_name="SIGINT"),
                           "device=meta", "batch.size=1,2,3,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 130, proc.stderr
    assert "the library's own error" not in proc.stderr + proc.stdout, proc.stderr
    rows = list(csv.DictReader((next(tmp_path.glob("outputs/sweeps/*/*")) / "summary.csv").open()))
    assert "interrupted" in {r["status"] for r in rows} <= {"interrupted", "lost"}, rows


@pytest.mark.slow
def test_an_interrupted_sweep_leaves_no_run_that_a_worker_cut_while_logging(tmp_path):
    """A worker that a terminal's Ctrl-C cuts while it logs its job leaves a RUNNING run under the sweep that no job
    folder names, and the job's folder with its result.json, which names no run (both made here by hand, as the cut
    leaves them). The sweep, interrupted, deletes the run once its workers are stopped (the resume logs that job
    whole, once), and says the job is not logged: its summary counted it ok and nothing more."""
    import shutil
    import signal
    import sys
    import time

    from tests.helpers import child_env

    model = ["model=custom", "model._target_=tests.helpers.Slow", "model.inputs=[{name:x,shape:[batch,4]}]",
             "model.loss=output", "device=meta"]
    done = run_app(*model, "+model.seconds=0", "batch.size=2", "tracking=none", "hydra.run.dir=done", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sweep = ["-m", *model, "+model.seconds=60", "batch.size=1,2,3", "tracking.experiment=cut"]
    proc = subprocess.Popen([sys.executable, "-m", "flopsweep", *sweep], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob("outputs/sweeps/*/*/*/.hydra")) and time.time() < deadline:
        time.sleep(0.2)  # the first job runs (its forward sleeps), so the sweep's run is open: the store is made
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (parent,) = sweeps(tmp_path, "cut")
    cut = client.create_run(parent.info.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id,
                                                              "flopsweep.kind": "job"})
    (sweep_dir,) = tmp_path.glob("outputs/sweeps/*/*")
    shutil.copytree(tmp_path / "done", sweep_dir / "1_custom")
    (sweep_dir / "2_custom" / ".hydra").mkdir(parents=True)  # and one cut as Hydra started it: lost
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "3 jobs: 1 ok, 1 lost, 1 interrupted" in out, out
    assert "lost: a job's process died" not in out  # the interrupt's own line says how to go on: not twice
    assert f"flopsweep: warning: 1 of 3 jobs not logged to MLflow (stopped before it was logged); " \
        f"`{sys.executable.rsplit('/', 1)[0]}/flopsweep-sync {sweep_dir.relative_to(tmp_path)}` logs them" \
        in err.splitlines(), err
    assert client.get_run(cut.info.run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(parent.info.run_id).info.status == "KILLED"
