"""Stores that misbehave and output folders that cannot be written, with real components: a damaged SQLite store
(random bytes, a real store cut in half), a store locked by another process (``BEGIN EXCLUSIVE``), a loopback server
that accepts and never answers, one that stops answering after its first answer, a full tmpfs and a read-only one.
Each costs a sweep one check (seconds) and one line, never MLflow's minutes of retries; nothing measured is lost, and
``flopsweep-sync`` logs it once the store works."""

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flopsweep.cli.report import main as report_main
from flopsweep.cli.sync import main as sync_main
from tests.helpers import run_app, run_cli, run_main

SWEEP = ["-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16,32", "tracking.experiment=sf"]


def said(stderr: str) -> list[str]:
    """What flopsweep's commands said, less Hydra's own log lines."""
    return [line for line in stderr.splitlines() if line.startswith("flopsweep")]


def results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("**/result.json"))]


def job_runs(cwd: Path) -> tuple[dict[str, dict], list[dict]]:
    """The sweep runs (id -> tags and status) and the job runs of experiment ``sf`` in the local store under ``cwd``,
    read with SQLite itself (MLflow's client keeps an engine per URI: in this process, one to the file moved aside)."""
    with sqlite3.connect(cwd / "outputs" / "mlflow.db") as db:
        rows = db.execute("SELECT r.run_uuid, r.status, t.key, t.value FROM runs r JOIN experiments e ON "
                          "r.experiment_id = e.experiment_id JOIN tags t ON t.run_uuid = r.run_uuid "
                          "WHERE e.name = 'sf' AND r.lifecycle_stage = 'active'").fetchall()
    runs: dict[str, dict] = {}
    for run_id, status, key, value in rows:
        runs.setdefault(run_id, {"id": run_id, "status": status})[key] = value
    return ({k: r for k, r in runs.items() if r.get("flopsweep.kind") == "sweep"},
            [r for r in runs.values() if r.get("flopsweep.kind") == "job"])


def damage(store: Path, how: str) -> None:
    if how == "random bytes":
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_bytes(os.urandom(20000))
        return
    with sqlite3.connect(store) as connection:  # a real store, its log written into the file, then cut in half
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in ("-wal", "-shm"):
        Path(f"{store}{extra}").unlink(missing_ok=True)
    os.truncate(store, store.stat().st_size // 2)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["random bytes", "cut in half"])
def test_a_damaged_store_is_said_once_the_sweep_goes_on_and_sync_logs_it_into_a_new_store(tmp_path, how):
    """It was ten attempts over five minutes per job (MLflow's engine retries), a resume that hung, and tracebacks
    from sync and report."""
    store = tmp_path / "outputs" / "mlflow.db"
    if how == "cut in half":
        assert run_app(*SWEEP, "batch.size=2", "hydra.sweep.dir=before", cwd=tmp_path).returncode == 0
    damage(store, how)
    proc = run_app(*SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path, store=False)
    assert proc.returncode == 0, proc.stderr  # measured: a store that cannot be used is a warning
    assert "retried" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    start, end = said(proc.stderr)
    assert start.startswith("flopsweep: warning: could not open the sweep's MLflow run (the store ") and \
        "is damaged" in start and "move it aside" in start, start
    assert end.startswith("flopsweep: warning: 2 of 2 jobs not logged to MLflow") and "flopsweep-sync sweep" in end
    jobs = results(tmp_path / "sweep")
    assert [r["status"] for r in jobs] == ["ok", "ok"]
    assert all(not r["info"]["tracking"]["logged"] and "is damaged" in r["info"]["tracking"]["error"] for r in jobs)

    for main, args in ((report_main, ["sf"]), (sync_main, ["sweep"])):  # one line each, no traceback
        out = run_main(main, *args, cwd=tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert "cannot be used" in line and "is damaged" in line, line

    store.rename(tmp_path / "damaged.db")  # as the line says: the next command (a new process) makes a new store
    for extra in ("-wal", "-shm"):
        Path(f"{store}{extra}").unlink(missing_ok=True)
    synced = sync_process(tmp_path)
    assert synced.returncode == 0 and "2 logged" in synced.stdout, synced.stdout + synced.stderr
    parents, runs = job_runs(tmp_path)
    assert len(parents) == 1 and len(runs) == 2
    assert {r["mlflow.parentRunId"] for r in runs} == set(parents)
    assert "0 logged, 2 already" in sync_process(tmp_path).stdout


def sync_process(cwd: Path) -> subprocess.CompletedProcess:
    """``flopsweep-sync sweep`` in a new process, as a user runs it after the fault."""
    from tests.helpers import child_env

    return subprocess.run([sys.executable, "-m", "flopsweep.cli.sync", "sweep"], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_locked_store_costs_one_wait_and_its_sweep_gets_one_parent(tmp_path):
    """Another process holds the store's write lock for the whole sweep: one wait of a few seconds, said once (it
    split one sweep under two parents); once the lock is gone, sync logs the sweep under one parent."""
    assert run_app(*SWEEP, "batch.size=2", "hydra.sweep.dir=before", cwd=tmp_path).returncode == 0
    store = tmp_path / "outputs" / "mlflow.db"
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], "
                               "isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); "
                               "sys.stdin.read()", str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_app(*SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path, store=False)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    start, end = said(proc.stderr)
    assert "is locked by another process" in start and "2 of 2 jobs not logged" in end, proc.stderr
    assert all(not r["info"]["tracking"]["logged"] for r in results(tmp_path / "sweep"))
    synced = sync_process(tmp_path)
    assert synced.returncode == 0 and "2 logged" in synced.stdout, synced.stderr
    parents, runs = job_runs(tmp_path)
    mine = [p for p in parents.values() if p["flopsweep.sweep"] == str(tmp_path / "sweep")]
    assert len(mine) == 1 and mine[0]["status"] == "FINISHED"
    assert sum(r["mlflow.parentRunId"] == mine[0]["id"] for r in runs) == 2


@pytest.fixture
def silent_server():
    """A loopback port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.slow
def test_a_server_that_never_answers_costs_one_check_said_once(tmp_path, silent_server):
    """It cost 77 s per job (three requests of 20 s, with back-off)."""
    proc = run_app(*SWEEP, "tracking=server", f"tracking.uri={silent_server}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    start, end = said(proc.stderr)
    assert f"the store {silent_server} cannot be used: the server did not answer within 5 s" in start, start
    assert "2 of 2 jobs not logged" in end
    for main, args in ((report_main, ["sf", "--uri", silent_server]), (sync_main, ["outputs"])):
        out = run_main(main, *args, cwd=tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert "did not answer within 5 s" in out.stderr.strip().splitlines()[0], out.stderr
    from flopsweep.cli.project import main as project_main  # a projection is made, its logging said in a line

    out = run_main(project_main, "train", "--model", "gpt2_small", "--gpu", "H100", "--tokens", "1e9", "--mfu", "0.4",
                   "--uri", silent_server, cwd=tmp_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("flopsweep-project: warning: not logged to MLflow") and "did not answer within 5 s" in line


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["postgresql+psycopg2", "mysql+pymysql"])  # drivers of the test extras
def test_a_database_that_accepts_and_never_answers_is_found_by_one_check_and_its_password_never_shown(
        tmp_path, silent_server, scheme):
    """A PostgreSQL or MySQL store whose port accepts connections and says nothing (a hung server, a proxy with
    nothing behind it) was taken as up: its first word is asked for, in seconds. The URI's password is in no line of
    ours (Hydra's own log repeats the command) and not in result.json, where flopsweep-sync finds it again from
    MLFLOW_TRACKING_URI, or says in one line to give it."""
    port = silent_server.rsplit(":", 1)[1]
    uri = f"{scheme}://flopsweep:s3cr3t@127.0.0.1:{port}/mlflow"
    from flopsweep.sinks.target import SECRETS_ENV

    proc = run_app(*SWEEP, "tracking=server", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr
    start, end = said(proc.stderr)
    hidden = f"{scheme}://flopsweep:***@127.0.0.1:{port}/mlflow"
    assert f"the store {hidden} cannot be used: 127.0.0.1:{port} accepts connections but did not answer within 5 s" \
        in start, start
    assert "2 of 2 jobs not logged" in end
    assert "s3cr3t" not in proc.stdout + proc.stderr
    jobs = results(tmp_path / "outputs")
    assert all(r["info"]["tracking"]["uri"] == hidden for r in jobs)
    assert not [p for p in (tmp_path / "outputs").rglob("result.json") if b"s3cr3t" in p.read_bytes()]
    # flopsweep-sync goes back to the store the job recorded: with its password from the environment (or --uri),
    # and says so in one line without it
    again = run_main(sync_main, "outputs", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert again.returncode == 1 and "did not answer within 5 s" in again.stderr and "s3cr3t" not in again.stderr
    blind = run_main(sync_main, "outputs", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None, SECRETS_ENV: None})
    lines = blind.stderr.strip().splitlines()  # one a job
    assert blind.returncode != 0 and len(lines) == 2, blind.stderr
    assert all(line.endswith("was recorded without its password: give --uri or MLFLOW_TRACKING_URI") for line in lines)
    from flopsweep.core.errors import masked
    from flopsweep.sinks.target import unmasked

    assert masked("//[0.9, 0.99") == "//[0.9, 0.99"  # a param that is no address is logged as it is, not a crash
    from flopsweep.core.errors import one_line

    assert one_line(RuntimeError("API request to http://u:s3cr3t@h:1/api failed")) == \
        "RuntimeError: API request to http://u:***@h:1/api failed"  # MLflow's own errors name the address

    assert unmasked(hidden, None, "sqlite:///x.db", uri) == uri and unmasked(hidden, None) is None
    assert unmasked("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.mark.slow
def test_a_server_that_stops_answering_after_the_check_is_given_up_for_the_rest_of_the_sweep(tmp_path):
    """The server answers the check, then nothing: the first request that waits as long as a check may take marks
    the store unusable for the sweep, and no job waits for it again."""
    release = threading.Event()

    class AnswersOnce(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if "experiments/search" in self.path:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"experiments": []}')
            else:
                release.wait(120)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), AnswersOnce)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc = run_app(*SWEEP, "batch.size=1,2", "tracking=server", f"tracking.uri={uri}", cwd=tmp_path)
    finally:
        release.set()
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    start, end = said(proc.stderr)
    assert "could not open the sweep's MLflow run" in start and "and not logged" in start, start
    assert "4 of 4 jobs not logged" in end
    jobs = results(tmp_path / "outputs")
    assert all("did not answer in time" in r["info"]["tracking"]["error"] for r in jobs)


@pytest.mark.slow  # a real tmpfs filled by a sweep (the fast lane fills one before anything is written)
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_disk_that_fills_mid_sweep_stops_it_in_one_line_and_every_file_on_it_is_whole(tmp_path, tmpfs, launcher):
    """A 64 KiB disk holds the first jobs' folders only: the sweep stops (every later job would be lost the same
    way) with one line naming the folder, and how to resume; it was a traceback, and a half result.json the summary
    called a dead process."""
    disk = tmpfs(tmp_path / "outputs", size="128k")  # a job folder takes some 48 KiB of pages: two fit, not six
    proc = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16,32,64,128,256,512",
                   "tracking=none", *(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib"
                                      else []), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = [e for e in said(proc.stderr) if "error" in e]
    # the folder the disk filled in: a job's (absolute, as Hydra gives it) or the sweep's, where Hydra's own files go
    assert line.startswith((f"flopsweep: error: {disk}/sweeps/", "flopsweep: error: outputs/sweeps/")) and \
        "cannot be written (No space left on device); the sweep stopped" in line and "skip_existing=true" in line
    found = list(disk.glob("**/result.json"))
    assert found and all(json.loads(p.read_text())["status"] == "ok" for p in found)  # each whole
    assert not list(disk.glob("**/*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("room_kib", [90, 200])
def test_a_disk_that_fills_under_a_joblib_sweep_with_its_store_leaves_nothing_running_after_a_sync_or_resume(
        tmp_path, tmpfs, room_kib):
    """Issue 28 item 6: the store and the sweep on one disk that fills as the sweep starts its jobs (its run opened;
    with 90 KiB left nothing recorded yet, with 200 KiB jobs measured and cut as they were logged). One warning for
    the sweep's run, one for the jobs not logged if any were measured, one error; no MLflow traceback (it logged one
    for the full database). Once there is room again, flopsweep-sync closes the sweep's run left RUNNING (it looked
    only where jobs had results), and a resume measures every job once with nothing left RUNNING (the runs of jobs
    cut while logging were left RUNNING under their ended sweep's run)."""
    disk = tmpfs(tmp_path / "outputs", size="8m")
    sweep = ["-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16,32,64,128,256,512",
             "tracking.experiment=sf", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert run_app(*sweep[:-2], "batch.seq_len=16", cwd=tmp_path).returncode == 0  # the store, its WAL grown
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - room_kib * 1024))
    proc = run_cli(*sweep, cwd=tmp_path)  # a process of its own, which ends: its run is a dead sweep's
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    *unlogged, warning, error = said(proc.stderr)
    assert len(unlogged) <= 1, unlogged
    assert all(re.fullmatch(r"flopsweep: warning: [12] of 2 jobs not logged to MLflow \(stopped before (it was|they "
                            r"were) logged\); `\S+flopsweep-sync outputs/sweeps/\S+` logs them", line)
               for line in unlogged), unlogged
    assert warning.startswith("flopsweep: warning: could not close the sweep's MLflow run") and \
        "database or disk is full" in warning and "bin/flopsweep-sync outputs/sweeps/" in warning, warning
    assert error.startswith("flopsweep: error: ") and "(No space left on device)" in error, error
    parents, _ = job_runs(tmp_path)
    # the sweep's run, opened before the disk filled, is left RUNNING; on a loaded machine the disk can fill before
    # SQLite commits its opening, and then there is none to close
    running = [r for r in parents.values() if r["status"] == "RUNNING"]
    assert len(running) <= 1, parents
    (disk / "filler").unlink()
    for left in running:
        synced = run_main(sync_main, left["flopsweep.sweep"], cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        parents, _ = job_runs(tmp_path)
        assert parents[left["id"]]["status"] == "KILLED"
    resume = run_app(*sweep, "skip_existing=true", cwd=tmp_path)
    assert resume.returncode == 0, resume.stderr
    with sqlite3.connect(tmp_path / "outputs" / "mlflow.db") as db:
        # as MLflow's UI lists them (a run cut while logging is deleted: its job logged itself again whole)
        assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING' AND lifecycle_stage = 'active'"
                          ).fetchone() == (0,)
    _, jobs = job_runs(tmp_path)  # the first run's job (seq 16, which the resume skips), then the sweep's others once
    assert len(jobs) == len({r["flopsweep.fingerprint"] for r in jobs}) == 6, jobs


@pytest.mark.parametrize("launcher", ["basic", "joblib", "single"])
def test_a_disk_full_before_anything_is_written_is_one_line_naming_the_folder(tmp_path, tmpfs, launcher):
    """Nothing fits: the store cannot be made, nor Hydra's own multirun.yaml (it was Hydra's traceback under both
    launchers), nor a single run's folder. One warning for the store (no SQL statement in it), one error naming the
    folder, exit status 1; no run left open anywhere."""
    disk = tmpfs(tmp_path / "outputs", size="64k")
    (disk / "filler").write_bytes(b"\0" * 60 * 1024)
    args = [a.replace("16,32", "16") for a in SWEEP if a != "-m"] if launcher == "single" else \
        [*SWEEP, *(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else [])]
    proc = run_app(*args, cwd=tmp_path, store=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = said(proc.stderr)
    assert all("[SQL:" not in line for line in lines)
    (error,) = [line for line in lines if line.startswith("flopsweep: error:")]
    where = "outputs/sweeps/" if launcher != "single" else "the output folder"
    assert error.startswith(f"flopsweep: error: {where}") and "(No space left on device); nothing was measured" in error
    assert not list(disk.glob("**/result.json"))


@pytest.mark.slow
def test_a_job_measured_when_the_disk_filled_is_logged_to_a_store_with_room(tmp_path, tmpfs):
    """The job folders on a disk that fills (a 128 KiB tmpfs), the store on another: the job whose folder could not be
    written is logged all the same, and a resume (elsewhere, skip_existing=true) measures only what never was."""
    from mlflow.tracking import MlflowClient

    disk = tmpfs(tmp_path / "outputs" / "sweeps", size="128k")
    sweep = ["-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16,32,64,128,256,512",
             "tracking.experiment=full"]
    proc = run_app(*sweep, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    written = list(disk.glob("**/result.json"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("full")
    runs = client.search_runs([experiment.experiment_id], "tags.`flopsweep.kind` = 'job' and tags.status = 'ok'")
    unwritten = [r for r in runs if not (Path(r.data.tags["flopsweep.job_folder"]) / "result.json").exists()]
    assert written and len(runs) == len(written) + 1 and len(unwritten) == 1, proc.stdout
    assert unwritten[0].data.metrics["flops/forward"] > 0 and "logged to MLflow (run" in proc.stdout
    # its result.json, which the disk had no room for, is in the run, from memory
    saved = client.download_artifacts(unwritten[0].info.run_id, "result.json", str(tmp_path))
    assert json.loads(Path(saved).read_text())["metrics"]["flops/forward"] == unwritten[0].data.metrics["flops/forward"]
    resume = run_app(*sweep, "skip_existing=true", f"hydra.sweep.dir={tmp_path / 'more'}", cwd=tmp_path)
    assert resume.returncode == 0, resume.stderr
    statuses = [r["status"] for r in results(tmp_path / "more")]
    assert sorted(statuses) == ["ok"] * (6 - len(runs)) + ["skipped"] * len(runs)


def test_a_job_logged_whose_result_json_could_not_say_so_is_not_counted_unlogged(tmp_path, monkeypatch):
    """The disk filled between a job's folder and the line of its result.json that says where it was logged: the sweep
    stopped on it, then said '1 of 1 jobs not logged to MLflow (stopped before it was logged)' of a run in the store."""
    import errno

    from flopsweep.core.result import Result

    write = Result.write

    def full_once_logged(self, path):  # the rewrite after the run is logged: as a full disk refuses it
        if self.tracking is not None and self.tracking.logged:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, path)

    monkeypatch.setattr(Result, "write", full_once_logged)
    proc = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16,32",
                   "tracking.experiment=sf", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = said(proc.stderr)
    assert line.startswith(f"flopsweep: error: {tmp_path}/sweep/0_gpt2_small: cannot be written (No space left on "
                           "device)"), line
    _, jobs = job_runs(tmp_path)
    assert [r["status"] for r in jobs] == ["ok"] and "1 ok" in proc.stdout  # its run: the tag status, ok


def test_a_read_only_output_folder_is_one_line_before_anything_is_measured(tmp_path, tmpfs):
    tmpfs(tmp_path / "outputs", read_only=True)
    for args in (SWEEP, SWEEP[1:3]):  # a sweep, a single run
        proc = run_app(*args, "tracking=none", cwd=tmp_path)
        assert proc.returncode == 1
        (line,) = said(proc.stderr)
        assert line.startswith("flopsweep: error: outputs/") and \
            "cannot be written (Read-only file system); nothing was measured" in line, proc.stderr
