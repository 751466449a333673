"""The shared tracking server recipe, for real: ``flopsweep-server`` creates a PostgreSQL cluster (initdb, pg_ctl,
127.0.0.1, free ports) and an ``mlflow server`` on it with its artifacts in a folder of their own; parallel
(joblib) sweeps log to it. Eight workers: every run present exactly once, in PostgreSQL, with its artifacts
downloadable through the server, under one complete parent run. The server killed in the middle of a parallel
sweep: no result lost, and ``flopsweep-sync`` completes the store, exactly once. Every process the recipe started
is gone afterwards, whatever happened in the test.

Skips, with the reason, where PostgreSQL's initdb or psycopg2 is missing (or, as root, no unprivileged account
to run PostgreSQL as)."""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flopsweep_server import postgres, settings
from tests.helpers import FLOPSWEEP
from tests.helpers import free_port, read_results

pytestmark = pytest.mark.slow

SERVER = [sys.executable, "-m", "flopsweep_server"]
TINY = ["model=gpt2_small", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.vocab_size=1000",
        "batch.seq_len=32", "device=meta", "tracking=server"]


def why_not_runnable() -> str | None:
    """Why the recipe cannot run here, or None: the same checks ``flopsweep-server start`` makes first."""
    try:
        postgres.find_pg_bin(None)
        postgres.require_psycopg2()
        postgres.pg_account(None)
    except settings.ServerError as err:
        return str(err)
    return None


# -- processes: the recipe's own, found by their working folder --------------------------------------------------

def become_subreaper() -> None:
    """Processes the recipe leaves in the background (the postmaster once pg_ctl exits, the MLflow server once the
    start command exits) become children of this process rather than of init, so that the finaliser can reap them
    (init does not reap everywhere: a sandbox's PID 1 may not)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def processes_in(folder: Path) -> dict[int, str]:
    """Live processes whose working folder is ``folder`` or below it (PostgreSQL's are in the cluster folder,
    the MLflow server's in the server folder), by pid, with their command line."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone, or a zombie (no cwd)
        if cwd == folder or folder in cwd.parents:
            found[int(proc.name)] = cmdline
    return found


def reap(pids) -> None:
    """Collect those of ``pids`` that are (now) this process's children and have exited."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def kill_and_reap(pids: dict[int, str], timeout: float = 15) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(pids)
        if not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids):
            break
        time.sleep(0.1)
    reap(pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class Recipe:
    """One server folder with its PostgreSQL cluster and MLflow server, driven through the command."""

    def __init__(self, root: Path):
        self.root, self.port, self.db_port = root, free_port(), free_port()
        self.layout = settings.Layout(root)
        self.seen: dict[int, str] = {}  # every process of the recipe seen, for the finaliser

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*SERVER, *args, "--dir", str(self.root)], capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args: str) -> None:
        done = self.command("start", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        self.note_processes()

    def note_processes(self) -> None:
        self.seen.update(processes_in(self.root))

    def kill_mlflow(self) -> None:
        """The fault: the MLflow server's whole process group dies at once (SIGKILL), mid-request or not."""
        self.note_processes()
        pgid = int(self.layout.mlflow_pid.read_text())
        mine = {pid: cmd for pid, cmd in processes_in(self.root).items() if _group(pid) == pgid}
        assert any("mlflow" in cmd for cmd in mine.values()), mine
        os.killpg(pgid, signal.SIGKILL)
        kill_and_reap(mine)

    def sql(self, query: str, *params) -> list[tuple]:
        """Ask PostgreSQL itself, not the MLflow server."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.db_port, user="mlflow", dbname="mlflow",
                                      password=self.layout.password(), connect_timeout=10)
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def server():
    reason = why_not_runnable()
    if reason:
        pytest.skip(f"no PostgreSQL tracking server here: {reason}")
    become_subreaper()
    # not under pytest's tmp_path: that is private to its owner, and as root PostgreSQL runs as another account
    root = Path(tempfile.mkdtemp(prefix="flopsweep-pg-"))
    root.chmod(0o755)
    srv = Recipe(root / "server")
    try:
        srv.start("--port", str(srv.port), "--db-port", str(srv.db_port), "--workers", "1")
        yield srv
    finally:
        srv.note_processes()
        stopped = srv.command("stop", timeout=120)
        left = processes_in(srv.root)
        kill_and_reap(left)  # only if the stop failed: everything the recipe started, nothing else
        reap(srv.seen)
        zombies = [pid for pid in srv.seen if _state(pid) == "Z" and _parent(pid) == os.getpid()]
        after = processes_in(srv.root)  # before the folder goes: a process in a deleted folder no longer matches
        shutil.rmtree(root, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not left, f"still running after flopsweep-server stop: {left}"
        assert not zombies, f"not reaped: {zombies}"
        assert not after, f"still running after being killed: {after}"


def _group(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


# -- sweeps ------------------------------------------------------------------------------------------------------

def sweep_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
    env.update(extra)
    return env


def job_runs(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string="tags.`flopsweep.kind` = 'job'", max_results=1000)


def sweep_runs(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'", max_results=1000)


def sync(sweep_dir: Path, uri: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flopsweep.cli.sync", str(sweep_dir), "--uri", uri], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_a_real_postgresql_answers_the_stores_check(server):
    """The check asks PostgreSQL for its first word (an SSL request), without its driver: a real server answers."""
    from flopsweep.sinks import health

    assert health.probe(f"postgresql+psycopg2://mlflow:x@127.0.0.1:{server.db_port}/mlflow") is None


def test_a_start_with_other_options_than_the_running_servers_is_refused_not_taken_for_done(server):
    """It said 'already running' and exited 0 with its options ignored: a script went on as if --host 0.0.0.0 held."""
    again = server.command("start")  # nothing asked: as it runs
    assert again.returncode == 0 and "already running: " + server.uri in again.stdout, again.stdout + again.stderr
    line = one_line_error(subprocess.run([*SERVER, "start", "--dir", str(server.root), "--host", "0.0.0.0", "--",
                                          "--allowed-hosts", "tracking-host"], capture_output=True, text=True,
                                         timeout=120))
    assert line == (f"flopsweep-server: error: --host, --: the server in {server.root.resolve()} already runs (at "
                    f"{server.uri}) with other options; stop it first (flopsweep-server stop --dir "
                    f"{server.root.resolve()})"), line


def test_eight_workers_log_every_run_once_to_postgres(server, tmp_path):
    from mlflow.tracking import MlflowClient

    jobs = 16
    work = tmp_path / "work"
    work.mkdir()
    # the preset as users run it: tracking=server takes MLFLOW_TRACKING_URI
    done = subprocess.run([*FLOPSWEEP, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8", *TINY,
                           "tracking.experiment=pg_parallel", "batch.size=" + ",".join(map(str, range(1, jobs + 1)))],
                          cwd=work, env=sweep_env(MLFLOW_TRACKING_URI=server.uri), capture_output=True, text=True,
                          timeout=600)
    server.note_processes()
    assert done.returncode == 0, done.stderr[-5000:]
    assert "not logged to MLflow" not in done.stderr and "could not" not in done.stderr, done.stderr[-5000:]

    results = read_results(work)
    assert len(results) == jobs
    assert all(r["status"] == "ok" and r["metrics"]["flops/step"] > 0 for r in results.values())
    tracking = [r["info"]["tracking"] for r in results.values()]
    assert all(t["logged"] is True and t["uri"] == server.uri for t in tracking), tracking

    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("pg_parallel")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied to the server's store
    runs = job_runs(client, experiment.experiment_id)
    assert len(runs) == jobs
    assert {r.info.run_id for r in runs} == {t["run_id"] for t in tracking}
    assert sorted(r.data.tags["flopsweep.fingerprint"] for r in runs) == \
        sorted(r["info"]["fingerprint"] for r in results.values())
    assert len({r.data.tags["flopsweep.fingerprint"] for r in runs}) == jobs
    assert sorted(int(r.data.params["batch.size"]) for r in runs) == list(range(1, jobs + 1))
    assert {r.info.status for r in runs} == {"FINISHED"}

    (parent,) = sweep_runs(client, experiment.experiment_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs/ok"] == jobs
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # the runs are rows of PostgreSQL (16 jobs and the parent, nothing else) ...
    (count,) = server.sql("SELECT count(*) FROM runs JOIN experiments USING (experiment_id) "
                          "WHERE experiments.name = %s AND runs.lifecycle_stage = 'active'", "pg_parallel")
    assert count == (jobs + 1,)
    # ... and the artifacts files of the server's own store, which clients reach through the server only
    by_run = {t["run_id"]: folder for folder, t in zip(results, tracking)}
    for run in runs:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        on_disk = server.root / "artifacts" / experiment.experiment_id / run.info.run_id / "artifacts"
        assert (on_disk / "result.json").is_file() and (on_disk / "stats.txt").is_file()
        downloaded = Path(client.download_artifacts(run.info.run_id, "result.json", str(tmp_path)))
        served, local = json.loads(downloaded.read_text()), results[by_run[run.info.run_id]]
        assert served["info"]["fingerprint"] == local["info"]["fingerprint"] == \
            run.data.tags["flopsweep.fingerprint"]
        assert served["metrics"] == local["metrics"]
        assert run.data.metrics["flops/step"] == local["metrics"]["flops/step"]


def test_server_killed_mid_parallel_sweep_then_sync_completes_the_store(server, tmp_path):
    from mlflow.tracking import MlflowClient

    jobs = 6
    work = tmp_path / "work"
    work.mkdir()
    # a dead server should fail a job's logging at once, not after MLflow's retries with backoff
    env = sweep_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    with open(tmp_path / "sweep.out", "w") as out, open(tmp_path / "sweep.err", "w") as err:
        sweep = subprocess.Popen([*FLOPSWEEP, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
                                  f"tracking.uri={server.uri}", "tracking.experiment=pg_outage",
                                  "batch.size=" + ",".join(map(str, range(1, jobs + 1)))],
                                 cwd=work, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        # the outage starts as soon as the first job is in the store: every worker still has jobs to log
        deadline = time.monotonic() + 300
        while not any(r["info"].get("tracking", {}).get("logged") for r in read_results(work).values()):
            assert sweep.poll() is None, (tmp_path / "sweep.err").read_text()[-5000:]
            assert time.monotonic() < deadline, "no job logged in 300 s"
            time.sleep(0.05)
        server.kill_mlflow()
        returncode = sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait(timeout=30)
    stderr = (tmp_path / "sweep.err").read_text()
    assert returncode == 0, stderr[-5000:]  # a store that is down fails no job

    results = read_results(work)
    assert len(results) == jobs  # nothing measured is lost
    assert all(r["status"] == "ok" and r["metrics"]["flops/step"] > 0 for r in results.values())
    logged = [f for f, r in results.items() if r["info"]["tracking"]["logged"]]
    missed = [f for f, r in results.items() if not r["info"]["tracking"]["logged"]]
    assert logged and missed, f"the outage should split the sweep: {len(logged)} logged, {len(missed)} missed"
    assert all(results[f]["info"]["tracking"]["error"] for f in missed)
    assert f"{len(missed)} of {jobs} jobs not logged to MLflow" in stderr  # counted once, at the sweep's end
    assert 1 <= stderr.count("warning: not logged to MLflow") <= 2  # said by each worker that met it, not per job
    assert "could not close the sweep's MLflow run" in stderr
    (sweep_dir,) = {f.parent for f in results}

    server.start()  # same folder, same ports (remembered), same PostgreSQL: nothing of the store was lost
    first = sync(sweep_dir, server.uri, work)
    assert first.returncode == 0, first.stdout + first.stderr[-5000:]
    counts = re.search(r"flopsweep-sync: (\d+) logged, (\d+) already in the store, 0 failed", first.stdout)
    assert counts, first.stdout + first.stderr[-3000:]
    synced, present = map(int, counts.groups())
    # jobs caught mid-logging by the outage may be whole in the store (present) or half (logged again); the jobs
    # that began logging after it are in neither
    assert synced + present == jobs and 1 <= synced <= len(missed), (synced, present, len(missed))

    client = MlflowClient(tracking_uri=server.uri)
    experiment_id = client.get_experiment_by_name("pg_outage").experiment_id
    runs = job_runs(client, experiment_id)
    results = read_results(work)
    assert len(runs) == jobs
    assert sorted(r.data.tags["flopsweep.fingerprint"] for r in runs) == \
        sorted(r["info"]["fingerprint"] for r in results.values())
    assert {r.info.status for r in runs} == {"FINISHED"}  # a run the outage cut off midway was replaced
    assert all(r["info"]["tracking"]["logged"] is True for r in results.values())
    assert {r["info"]["tracking"]["run_id"] for r in results.values()} == {r.info.run_id for r in runs}
    (parent,) = sweep_runs(client, experiment_id)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs/ok"] == jobs

    second = sync(sweep_dir, server.uri, work)
    assert second.returncode == 0, second.stderr[-5000:]
    assert f"flopsweep-sync: 0 logged, {jobs} already in the store, 0 failed" in second.stdout, second.stdout
    assert len(job_runs(client, experiment_id)) == jobs


# -- the command's errors: one line each, naming the option ------------------------------------------------------

def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flopsweep-server: error: "), done.stderr
    return lines[0]


def test_a_busy_port_is_one_line_naming_it(tmp_path):
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([*SERVER, "start", "--dir", str(tmp_path / "srv"), "--port", str(port),
                               "--db-port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in one_line_error(done)
        done = subprocess.run([*SERVER, "start", "--dir", str(tmp_path / "srv"), "--port", str(free_port()),
                               "--db-port", str(port)], capture_output=True, text=True, timeout=60)
        assert f"--db-port {port}: cannot listen on 127.0.0.1:{port}" in one_line_error(done)
    assert not (tmp_path / "srv" / "postgres").exists()  # refused before creating anything


def test_a_folder_postgresql_cannot_enter_is_one_line_and_leaves_no_folder():
    """As root, PostgreSQL runs as its own account: a --dir under a folder that account cannot enter (root's home)
    was refused in one line, and the folder the start had made was left, empty."""
    reason = why_not_runnable()
    if reason or os.geteuid() != 0:
        pytest.skip(reason or "PostgreSQL runs as this user: any folder it can make, it can enter")
    with tempfile.TemporaryDirectory() as top:  # pytest's own folders are closed to others: the one shut is ours
        os.chmod(top, 0o755)
        closed = Path(top) / "closed"
        closed.mkdir(mode=0o700)
        done = subprocess.run([*SERVER, "start", "--dir", str(closed / "new" / "srv"), "--port", str(free_port()),
                               "--db-port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert f"cannot enter {closed}; choose a folder it can reach" in one_line_error(done)
        assert list(closed.iterdir()) == []


def test_missing_postgresql_says_how_to_install(tmp_path, monkeypatch):
    done = subprocess.run([*SERVER, "start", "--dir", str(tmp_path / "srv"), "--pg-bin", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    line = one_line_error(done)
    assert f"--pg-bin {tmp_path}: no initdb or pg_ctl there" in line and "apt-get install postgresql" in line
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(settings.ServerError, match=r"^initdb: not found on PATH .*install PostgreSQL"):
        postgres.find_pg_bin(None)


def test_bad_settings_are_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    line = one_line_error(subprocess.run([*SERVER, "start", "--dir", str(tmp_path / "srv"), "--port", "70000"],
                                         capture_output=True, text=True, timeout=60))
    assert "--port 70000: must be between 1 and 65535" in line
    line = one_line_error(subprocess.run([*SERVER, "start", "--dir", str(tmp_path / "file")], capture_output=True,
                                         text=True, timeout=60))
    assert f"--dir {tmp_path / 'file'}: not a folder" in line
    (tmp_path / "srv2").mkdir()
    (tmp_path / "srv2" / "server.json").write_text("{not json")
    line = one_line_error(subprocess.run([*SERVER, "status", "--dir", str(tmp_path / "srv2")], capture_output=True,
                                         text=True, timeout=60))
    assert "server.json: unreadable" in line


def test_options_after_a_double_dash_are_remembered_replaced_or_cleared(tmp_path):
    """mlflow server's options (`-- --allowed-hosts ...`) stayed in server.json for good: neither another start
    without them nor `start --` could clear them, and the server kept refusing the hosts they left out."""
    import argparse

    layout = settings.Layout(tmp_path)
    layout.settings.write_text(json.dumps({"host": "0.0.0.0", "mlflow_args": ["--allowed-hosts", "tracking-host"]}))

    def given(mlflow_args):
        return settings.load_settings(layout, argparse.Namespace(host=None, mlflow_args=mlflow_args))

    assert given(None).mlflow_args == ["--allowed-hosts", "tracking-host"]  # no --: as remembered
    assert given(["--workers", "2"]).mlflow_args == ["--workers", "2"]
    assert given([]).mlflow_args == [] and given([]).host == "0.0.0.0"  # -- alone: cleared, the rest kept


def test_server_preset_defaults_to_the_recipe_url(compose_cfg, monkeypatch):
    from flopsweep.sinks.target import target_of

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg("tracking=server")
    assert target_of(cfg.tracking, Path.cwd()).uri == "http://127.0.0.1:5000" == \
        f"http://127.0.0.1:{settings.Settings().port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:8080")
    assert target_of(compose_cfg("tracking=server").tracking, Path.cwd()).uri == "http://tracking.example:8080"
    assert target_of(compose_cfg("tracking=server", "tracking.uri=http://other:1").tracking,
                     Path.cwd()).uri == "http://other:1"
