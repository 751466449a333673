"""A real ``mlflow server`` that goes down in the middle of a sweep: the jobs after the outage are still measured
and written, record that they were not logged, and do not fail the sweep; once the server is back (same store,
same port), ``flopsweep-sync`` logs exactly the missed jobs under the sweep's parent run, and a second sync logs
nothing."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import FLOPSWEEP, free_port, read_results

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).with_name("mlflow")
JOBS = 6
# a tiny GPT-2 timed on the CPU: a few seconds a job, so the outage falls between two jobs
SWEEP = ["-m", "model=gpt2_small", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.vocab_size=1000",
         "batch.seq_len=32", "device=cpu", "measure.warmup=1", "measure.repeats=5", "tracking=server",
         "tracking.experiment=outage", "batch.size=" + ",".join(str(n) for n in range(1, JOBS + 1))]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group that ``proc`` leads, SIGKILL it after ``timeout``, and wait until the whole
    group is gone: a server worker left behind would keep answering on the port."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL if time.monotonic() > deadline or proc.poll() is None else 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline + 10:
            break  # only zombies left, which init reaps
        time.sleep(0.1)
    proc.wait(timeout=10)


class Server:
    """``mlflow server`` on 127.0.0.1 with an SQLite store and local artifacts under ``root``; restartable on
    the same port."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc, self.starts = root, free_port(), None, 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / f"server-{self.starts}.log"

    def start(self, timeout: float = 120) -> None:
        self.starts += 1
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # as flopsweep-server runs it: no GenAI job runner (8 more processes importing MLflow)
                env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mlflow server exited:\n{self.log.read_text()[-5000:]}"
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:  # URLError included: not listening yet
                pass
            time.sleep(0.2)
        pytest.fail(f"mlflow server did not answer in {timeout} s:\n{self.log.read_text()[-5000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    srv = Server(tmp_path / "server")
    yield srv
    srv.stop()


@pytest.fixture
def start_sweep(tmp_path):
    """Starts ``flopsweep ARGS`` in ``tmp_path/work``, its output in ``sweep.out``/``sweep.err``; the finaliser
    stops it if the test ended before it did."""
    procs = []

    def start(*args: str) -> subprocess.Popen:
        (tmp_path / "work").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
        env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # fail fast once the server is down: 5 s of backoff a call
        with open(tmp_path / "sweep.out", "w") as out, open(tmp_path / "sweep.err", "w") as err:
            procs.append(subprocess.Popen([*FLOPSWEEP, *args], cwd=tmp_path / "work", env=env, stdout=out,
                                          stderr=err, start_new_session=True))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            stop_group(proc, timeout=10)


def logged_jobs(work: Path) -> int:
    return sum(bool(r["info"].get("tracking", {}).get("logged")) for r in read_results(work).values())


def job_number(folder: Path) -> int:
    return int(folder.name.split("_", 1)[0])


def sync(folder: Path, uri: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flopsweep.cli.sync", str(folder), "--uri", uri], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def job_runs(client: MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string="tags.`flopsweep.kind` = 'job'")


def test_a_password_in_the_stores_uri_reaches_no_param_artifact_file_or_line(tmp_path, server, monkeypatch):
    """A server reached as http://user:password@host (a password holding an escaped @ and a :): the sweep is logged,
    and neither a run's params or tags (the overrides, the description), the experiment's description, the job
    folders' files as artifacts (Hydra's config and overrides, result.json), any file the sweep writes (Hydra's
    multirun.yaml, hydra.yaml, overrides.yaml), nor any line on the terminal (Hydra's launcher lines included)
    carries the password; from the command line or from MLFLOW_TRACKING_URI."""
    from mlflow.tracking import MlflowClient

    from flopsweep.sinks.target import SECRETS_ENV
    from tests.helpers import child_env, run_app, run_cli

    monkeypatch.setenv(SECRETS_ENV, "[]")  # the command keeps the address there: not for the tests after this one
    server.start()
    uri = server.uri.replace("http://", "http://flopsweep:s3cr3t%40x:y@")
    proc = run_app("-m", "model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16", "batch.size=1,2",
                   "tracking=server", f"tracking.uri={uri}", "tracking.experiment=pw", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[HYDRA]" in proc.stdout + proc.stderr and "s3cr3t" not in proc.stdout + proc.stderr
    env = run_cli("model=gpt2_small", "device=meta", "model.n_layer=1", "batch.seq_len=16", "tracking=server",
                  "tracking.experiment=pw", cwd=tmp_path, env=child_env(MLFLOW_TRACKING_URI=uri))
    assert env.returncode == 0 and "s3cr3t" not in env.stdout + env.stderr, env.stderr
    written = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file() and p.suffix in (".json", ".yaml")]
    assert {"multirun.yaml", "hydra.yaml", "overrides.yaml", "config.yaml", "result.json"} <= {p.name for p in written}
    assert not [p for p in written if b"s3cr3t" in p.read_bytes()]
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("pw")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4  # the sweep and its two jobs, the job from the environment's address
    jobs = [r for r in runs if r.data.tags["flopsweep.kind"] == "job"]
    assert all(r.data.params["tracking.uri"] == server.uri.replace("http://", "http://flopsweep:***@") for r in jobs)
    said = [*experiment.tags.values(), *(v for r in runs for v in [*r.data.tags.values(), *r.data.params.values()])]
    assert "flopsweep\\:***@" in " ".join(said) and not [v for v in said if "s3cr3t" in v]
    stored = [p for p in (server.root / "artifacts").rglob("*") if p.is_file()]
    assert {"config.yaml", "overrides.yaml", "result.json"} <= {p.name for p in stored}
    assert not [p for p in stored if b"s3cr3t" in p.read_bytes()]


def test_server_outage_mid_sweep_then_sync(tmp_path, server, start_sweep):
    server.start()
    proc = start_sweep(*SWEEP, f"tracking.uri={server.uri}")
    work = tmp_path / "work"

    deadline = time.monotonic() + 300
    while logged_jobs(work) < 2:
        assert proc.poll() is None, (tmp_path / "sweep.err").read_text()[-5000:]
        assert time.monotonic() < deadline, "2 jobs not logged in 300 s"
        time.sleep(0.05)
    # Freeze the sweep while the server stops: on a busy machine job 3 could otherwise reach the store while
    # the server is half down, and be half logged.
    os.killpg(proc.pid, signal.SIGSTOP)
    server.stop()
    os.killpg(proc.pid, signal.SIGCONT)
    returncode = proc.wait(timeout=300)
    stderr = (tmp_path / "sweep.err").read_text()
    assert returncode == 0, stderr[-5000:]

    results = read_results(work)
    assert len(results) == JOBS
    (sweep_dir,) = {folder.parent for folder in results}
    for folder, result in results.items():
        assert result["status"] == "ok", (folder, result["error"])
        assert result["metrics"]["flops/forward"] > 0
    tracking = [results[f]["info"]["tracking"] for f in sorted(results, key=job_number)]
    assert [t["logged"] for t in tracking] == [True, True] + [False] * (JOBS - 2)
    assert all(t["error"] for t in tracking[2:])
    assert stderr.count("warning: not logged to MLflow") == 1  # the first job that met the outage; the others wait
    # in the words of the check before a sweep, not urllib3's page (HTTPConnectionPool(...): Max retries exceeded...)
    assert f"warning: not logged to MLflow (the store {server.uri} cannot be used: the server cannot be reached (" \
        in stderr and "HTTPConnectionPool" not in stderr, stderr[-5000:]
    assert f"{JOBS - 2} of {JOBS} jobs not logged to MLflow" in stderr  # for no store found down, counted at the end

    server.start()
    # run as the README runs it: from the folder the sweep ran in, with the sweep folder relative to it
    first = sync(sweep_dir, server.uri, work)
    assert first.returncode == 0, first.stderr[-5000:]
    # the sweep's run, which its ended process could not close while the server was down, closed and said
    assert f"flopsweep-sync: {JOBS - 2} logged, 2 already in the store, 0 failed; 1 run of a sweep whose process is " \
        f"gone closed, with what its folder holds  ({server.uri})" in first.stdout, first.stdout + first.stderr[-5000:]

    client = MlflowClient(tracking_uri=server.uri)
    experiment_id = client.get_experiment_by_name("outage").experiment_id
    jobs = job_runs(client, experiment_id)
    assert len(jobs) == JOBS
    results = read_results(work)
    fingerprints = {r.data.tags["flopsweep.fingerprint"] for r in jobs}
    assert len(fingerprints) == JOBS and fingerprints == {r["info"]["fingerprint"] for r in results.values()}
    assert all(r["info"]["tracking"]["logged"] is True for r in results.values())
    (parent,) = client.search_runs([experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert parent.info.status != "RUNNING"

    second = sync(sweep_dir, server.uri, work)
    assert second.returncode == 0, second.stderr[-5000:]
    assert f"flopsweep-sync: 0 logged, {JOBS} already in the store, 0 failed" in second.stdout, second.stdout
    assert len(job_runs(client, experiment_id)) == JOBS
