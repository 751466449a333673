"""``hydra/launcher=slurm`` against a real Slurm: a one-node cluster (munged, slurmctld and slurmd from Debian's
munge and slurm-wlm packages, on 127.0.0.1 with free ports, everything in a folder of its own) started by this
module and stopped after it. Sweeps run through it as a user runs them: every job's run under the sweep's parent,
once; what no node can give refused before anything is queued, naming the key (the preset's own defaults on this
GPU-less node); a job Slurm never starts cancelled with its reason; an interrupted sweep leaves nothing queued or
running; a job cut by its time limit recorded as such; a preempted and requeued job measured once.

Skipped, with the reason, where the packages are missing (``.ci/run`` installs them) or the tests do not run as
root (slurmd must, to start jobs as their users)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from mlflow import MlflowClient

from tests.helpers import FLOPSWEEP, child_env, free_port

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd")
TINY = ["model=gpt2_small", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.vocab_size=1000",
        "batch.seq_len=32", "device=meta", "tracking.experiment=slurm"]
FITS = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.timeout_min=5"]  # what this node can run: 1 CPU, no GPU, inside the partition's 10 minutes


def slow(seconds: float) -> list[str]:
    """A model whose forward sleeps: a job still running when the test interrupts, requeues or times it out."""
    return ["model=custom", "model._target_=tests.helpers.Slow", "model.inputs=[{name:x,shape:[batch,4]}]",
            "model.loss=output", f"+model.seconds={seconds}", "device=meta", "tracking.experiment=slurm"]


def why_not_runnable() -> str | None:
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing: Debian's slurm-wlm and munge; .ci/run "
                "installs them)")
    if os.geteuid() != 0:
        return "slurmd must run as root (it starts jobs as their users)"
    return None


def daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    """A one-node Slurm cluster in ``root``: its config, its daemons, and the environment its commands need."""

    def __init__(self, root: Path):
        self.root, self.node = root, socket.gethostname().split(".")[0]
        for sub in ("state", "spool", "log", "run"):
            (root / sub).mkdir()
        self.conf = root / "slurm.conf"
        self.env = child_env(SLURM_CONF=str(self.conf))
        self.daemons: list[subprocess.Popen] = []  # in the foreground: this process waits for each at the end

    def _daemon(self, *command: str) -> None:
        with (self.root / "log" / f"{Path(command[0]).name}.out").open("w") as out:
            self.daemons.append(subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT))

    def start(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        r = self.root
        self._daemon(daemon("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={r}/run/munge.sock",
                     f"--pid-file={r}/run/munged.pid", f"--log-file={r}/log/munged.log",
                     f"--seed-file={r}/state/munge.seed")
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        self.conf.write_text(f"""\
ClusterName=flopsweep
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/run/munge.sock
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=5
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=10 State=UP
PartitionName=onecpu Nodes={self.node} MaxCPUsPerNode=1 MaxTime=10 State=UP
""")
        while not (r / "run" / "munge.sock").exists():
            assert self.daemons[0].poll() is None, (r / "log" / "munged.out").read_text()
            time.sleep(0.1)
        for name in ("slurmctld", "slurmd"):
            self._daemon(daemon(name), "-D", "-f", str(self.conf))
        deadline = time.monotonic() + 60
        while "idle" not in self.slurm("sinfo", "-h", "-o", "%T"):
            assert time.monotonic() < deadline, (self.root / "log" / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)

    def slurm(self, *command: str) -> str:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60).stdout

    def queue(self) -> list[str]:
        """The jobs in the queue: ``id state``."""
        return self.slurm("squeue", "-h", "-r", "-o", "%i %T").split("\n")[:-1]

    def drained(self, timeout: float = 30) -> list[str]:
        """The queue once it is empty, or as it is after ``timeout`` s: a job that ended or was cancelled leaves it
        once its processes are gone."""
        deadline = time.monotonic() + timeout
        while self.queue() and time.monotonic() < deadline:
            time.sleep(0.5)
        return self.queue()

    def stop(self) -> None:
        """Every job cancelled and gone, then the daemons, last started first, each waited for."""
        if len(self.daemons) == 3:
            self.slurm("scancel", "--user", str(os.getuid()))
            self.drained()
        for process in reversed(self.daemons):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def flopsweep(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*FLOPSWEEP, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=self.env)

    def start_flopsweep(self, *args: str, cwd: Path) -> subprocess.Popen:
        return subprocess.Popen([*FLOPSWEEP, "-m", *args], cwd=cwd, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_for(self, state: str, timeout: float = 120) -> str:
        """The id of the first job of the queue in ``state``, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line.split()[0] for line in self.queue() if line.endswith(f" {state}")]
            if found:
                return found[0]
            time.sleep(0.5)
        raise AssertionError(f"no job became {state}: {self.queue()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = why_not_runnable()
    if why is not None:
        pytest.skip(why)
    running = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def runs(cwd: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("slurm")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("flopsweep:")]


def test_a_slurm_sweep_logs_every_job_once_under_the_sweeps_run(cluster, tmp_path):
    done = cluster.flopsweep(*TINY, *FITS, "batch.size=1,2,3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 jobs: 3 ok" in done.stdout
    found = runs(tmp_path)
    (sweep,) = [r for r in found if r.data.tags["flopsweep.kind"] == "sweep"]
    jobs = [r for r in found if r.data.tags["flopsweep.kind"] == "job"]
    assert sweep.info.status == "FINISHED"
    assert sorted(int(r.data.params["batch.size"]) for r in jobs) == [1, 2, 3]
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweep.info.run_id}
    assert {r.info.status for r in jobs} == {"FINISHED"}
    assert list(tmp_path.glob("outputs/sweeps/*/*/.submitit/*/*_log.out"))  # they ran as Slurm jobs
    assert cluster.drained() == []


def test_a_queue_that_cannot_answer_for_a_while_is_asked_again_not_taken_for_ended_jobs(cluster, tmp_path):
    """slurmctld busy or restarting: squeue fails (here its first 8 calls, as Slurm says it) while the jobs run.
    The sweep asks again; its jobs are not taken for ended, and all of them finish."""
    shim = tmp_path / "bin"
    shim.mkdir()
    calls = tmp_path / "calls"
    (shim / "squeue").write_text(f"""#!/bin/sh
echo x >> {calls}
if [ $(wc -l < {calls}) -le 8 ]; then
  echo "squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1
fi
exec {shutil.which("squeue") or "/usr/bin/squeue"} "$@"
""")
    (shim / "squeue").chmod(0o755)
    env = {**cluster.env, "PATH": f"{shim}{os.pathsep}{cluster.env['PATH']}"}
    done = subprocess.run([*FLOPSWEEP, "-m", *slow(3), *FITS, "batch.size=1,2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 jobs: 2 ok" in done.stdout and len(calls.read_text().split()) > 8


def test_a_combination_that_cannot_be_composed_fails_alone_and_the_other_jobs_run(cluster, tmp_path):
    """ViT's d_ff cannot be null: that Slurm task fails before its job runs; it is recorded failed with Hydra's
    reason and the sweep goes on (it cancelled every job)."""
    done = cluster.flopsweep("model=gpt2_small,vit_b16", "model.d_ff=null,128", "model.n_layer=1", "device=meta",
                             "tracking.experiment=slurm", *FITS, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    (line,) = errors(done.stderr)
    assert line.startswith("flopsweep: error: job 2 (model=vit_b16 model.d_ff=null ") and \
        "ConfigCompositionException" in line and "Traceback" not in line, line
    assert "4 jobs: 3 ok, 1 failed" in done.stdout
    assert cluster.drained() == []


def test_what_no_node_can_give_is_refused_before_anything_is_queued_naming_the_keys(cluster, tmp_path):
    started = time.monotonic()
    preset = cluster.flopsweep(*TINY, "hydra/launcher=slurm", "hydra.launcher.timeout_min=5", "batch.size=1,2",
                               cwd=tmp_path)
    # refused before the sweep starts, as a usage error: no folder, no run (it left both, and said 2 jobs not started)
    assert preset.returncode == 2 and time.monotonic() - started < 60 and preset.stdout == "", preset.stdout
    (line,) = errors(preset.stderr)  # the preset's defaults: 8 CPUs and a GPU, on a GPU-less node
    assert line.startswith("flopsweep: error: ") and "partition debug cannot run the jobs" in line, line
    assert "hydra.launcher.gpus_per_node=1" in line and "no GPU" in line
    assert ("hydra.launcher.cpus_per_task=8" in line) == ("defaults: 8 CPUs and a GPU a job" in line) == \
        (os.cpu_count() < 8), line
    assert "Traceback" not in preset.stderr
    assert not list(tmp_path.glob("outputs/sweeps/*/*")) and runs(tmp_path) == []
    if os.cpu_count() < 8:  # without the GPU, the note names only the default still refused
        cpus = cluster.flopsweep(*TINY, "hydra/launcher=slurm", "hydra.launcher.timeout_min=5",
                                 "hydra.launcher.gpus_per_node=0", "batch.size=1,2", cwd=tmp_path)
        (line,) = errors(cpus.stderr)
        assert line.endswith("(the slurm preset's default: 8 CPUs a job); lower it or choose another "
                             "hydra.launcher.partition"), line
    memory = cluster.flopsweep(*TINY, *FITS, "hydra.launcher.mem_gb=100000", "hydra.launcher.timeout_min=60",
                               "batch.size=1", cwd=tmp_path)
    (line,) = errors(memory.stderr)
    assert line.startswith("flopsweep: error: hydra.launcher.mem_gb=100000, hydra.launcher.timeout_min=60: "), line
    assert "a time limit of 10 minutes" in line and "slurm preset" not in line
    nowhere = cluster.flopsweep(*TINY, *FITS, "hydra.launcher.partition=nowhere", "batch.size=1", cwd=tmp_path)
    assert errors(nowhere.stderr) == ["flopsweep: error: hydra.launcher.partition=nowhere: no such partition (sinfo "
                                      "lists them)"], nowhere.stderr
    warned = cluster.flopsweep(*TINY, *FITS, "hydra.launcher.timeout_min=1", "batch.size=1", cwd=tmp_path)
    assert errors(warned.stderr) == [  # the default warning, 120 s before a one-minute limit: as the job starts
        "flopsweep: error: hydra.launcher.signal_delay_s=120, hydra.launcher.timeout_min=1: Slurm warns a job 120 s "
        "before its time limit (or up to 60 s earlier), as it starts with a limit of 60 s; raise timeout_min"
    ], warned.stderr
    assert not list(tmp_path.glob("outputs/sweeps/*/*/.submitit")) and cluster.queue() == []  # nothing submitted


def test_a_job_slurm_would_never_start_is_cancelled_with_slurms_reason(cluster, tmp_path):
    """A partition that lets a job use one CPU of its node (MaxCPUsPerNode, which sinfo does not show): Slurm queues
    a two-CPU job and keeps it pending for PartitionConfig for ever."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the node needs two CPUs for a job the partition's limit keeps pending")
    started = time.monotonic()
    done = cluster.flopsweep(*TINY, *FITS, "hydra.launcher.partition=onecpu", "hydra.launcher.cpus_per_task=2",
                             "batch.size=1,2", cwd=tmp_path)
    assert done.returncode == 1 and time.monotonic() - started < 60, done.stderr
    (line,) = errors(done.stderr)
    assert line.startswith("flopsweep: error: hydra.launcher.cpus_per_task, tasks_per_node or partition: Slurm will "
                           "never start job 0"), line
    assert "pending for PartitionConfig" in line and "cancelled" in line
    assert cluster.drained() == []


def test_a_submission_slurm_refuses_is_one_line_with_slurms_words_and_the_keys(cluster, tmp_path):
    done = cluster.flopsweep(*TINY, *FITS, f"hydra.launcher.exclude={cluster.node}", "batch.size=1", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    (line,) = errors(done.stderr)
    assert line == ("flopsweep: error: hydra/launcher=slurm: Slurm refused the jobs: Batch job submission failed: "
                    "Requested node configuration is not available (hydra.launcher.exclude, constraint, nodes, "
                    "cpus_per_task or mem_gb)"), line
    assert cluster.drained() == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_sweep_leaves_none_of_its_jobs_queued_or_running(cluster, tmp_path, signum):
    """The job running gets SIGINT, as joblib's workers get a terminal's Ctrl-C, and records itself interrupted (its
    run KILLED): it was cancelled, killed after KillWait and summarised lost, with a line to rerun beside the
    interrupt's own. The jobs queued behind it (the launcher's memory lets one run at a time here) are cancelled."""
    (tmp_path / "started").mkdir()
    sweep = cluster.start_flopsweep(*slow(600), f"+model.started={tmp_path / 'started'}", *FITS, "batch.size=1,2,3,4",
                                    cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started" / "1").exists():  # job 0 measures
        assert time.monotonic() < deadline and sweep.poll() is None, "job 0 did not start measuring"
        time.sleep(0.2)
    sweep.send_signal(signum)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert cluster.drained() == []
    assert "4 jobs: 1 interrupted, 3 not started" in out and "lost" not in out, out
    (job,) = [r for r in runs(tmp_path) if r.data.tags["flopsweep.kind"] == "job"]
    assert job.info.status == "KILLED" and job.data.params["batch.size"] == "1"
    (parent,) = [r for r in runs(tmp_path) if r.data.tags["flopsweep.kind"] == "sweep"]
    assert parent.info.status == "KILLED"


def test_a_job_cut_by_its_time_limit_is_recorded_as_such(cluster, tmp_path):
    """A two-minute limit with Slurm's warning 30 s before it (the launcher's signal_delay_s; Slurm may send it up to
    a minute earlier): the job, running by then, records itself; the sweep says so and goes on."""
    done = cluster.flopsweep(*slow(600), *FITS, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
                             "batch.size=1", cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr
    (line,) = errors(done.stderr)
    assert line.endswith("cut by Slurm's time limit (hydra.launcher.timeout_min=2) before the job finished"), line
    assert "1 job: 1 interrupted" in done.stdout
    assert cluster.drained() == []


def test_a_preempted_and_requeued_job_is_measured_once(cluster, tmp_path):
    sweep = cluster.start_flopsweep(*slow(4), *FITS, "batch.size=1", cwd=tmp_path)
    job = cluster.wait_for("RUNNING")
    time.sleep(2)
    cluster.slurm("scontrol", "requeue", job)  # what a preemption with PreemptMode=REQUEUE does to it
    cluster.wait_for("PENDING")
    cluster.slurm("scontrol", "update", f"JobId={job}", "StartTime=now")  # Slurm holds a requeued job two minutes
    out, err = sweep.communicate(timeout=240)
    assert sweep.returncode == 0, err
    assert "1 job: 1 ok" in out
    assert "Restarts=1" in cluster.slurm("scontrol", "-o", "show", "job", job)
    jobs = [r for r in runs(tmp_path) if r.data.tags["flopsweep.kind"] == "job"]
    assert [r.info.status for r in jobs] == ["FINISHED"]
