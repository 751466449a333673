"""``hydra/launcher=slurm``'s jobs (and ``submitit_slurm``'s): submitted as Hydra's submitit launcher submits them,
one job array with the launcher's settings and Hydra's ``run_job`` in each task, then watched by the sweep so that
nothing is waited on forever and nothing is left behind:

- the request is checked against the partition's nodes before anything is submitted: CPUs, memory, GPUs, nodes
  and the time limit that no node or the partition allows are one line naming the launcher key (the slurm preset's
  defaults of 8 CPUs and a GPU a job included), and so is a submission Slurm refuses;
- a job that Slurm keeps pending for a reason that never clears by itself (a partition's limit, an invalid
  account or QOS) is cancelled within seconds, with Slurm's reason and the keys to change;
- an interrupted sweep (SIGINT, SIGTERM) cancels the jobs it submitted: none is left queued or running; those
  running get a SIGINT first, as joblib's workers get a terminal's Ctrl-C, and record themselves interrupted with
  what they counted (their runs KILLED), rather than being killed and left lost;
- a job that reaches its time limit records itself as cut by it (on Slurm's warning, ``signal_delay_s`` before the
  limit), naming ``hydra.launcher.timeout_min``; a job that Slurm ended before it recorded anything (its time limit,
  its memory, a node that failed, a cancel) is recorded by the sweep with Slurm's state;
- a preempted job runs again when Slurm requeues it and is measured once: its first attempt was killed before it
  logged anything, or the run it left is deleted once the sweep's jobs have ended.

Why one file: it is one path, from the partition's nodes read before submitting to the last job's end, and its
parts share what they read of Slurm (the partition's record, the queue's states and reasons, the keys each names).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus

from flopsweep.core.console import error
from flopsweep.core.errors import one_line
from flopsweep.core.result import Result
from flopsweep.sweep import state
from flopsweep.sweep.jobdirs import job_folders, record_failed

POLL_S = 2.0  # how often the queue is asked; a result file is looked for every tenth of that
GRACE_S = 30.0  # how long an interrupted sweep waits for its running jobs to record themselves before cancelling them
ANSWER_S = 60.0  # how long a Slurm command may stay silent (a busy or restarting controller) before it is let be
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED",
          "STOPPED", "SIGNALING", "STAGE_OUT")  # states of a job that has not ended

# Reasons for which Slurm keeps a job pending until someone changes it or the cluster, and the keys that change it
NEVER_CLEARS = {
    "PartitionConfig": "hydra.launcher.cpus_per_task, tasks_per_node or partition",
    "PartitionTimeLimit": "hydra.launcher.timeout_min",
    "PartitionNodeLimit": "hydra.launcher.nodes or exclude",
    "BadConstraints": "hydra.launcher.constraint",
    "InvalidAccount": "hydra.launcher.account",
    "InvalidQOS": "hydra.launcher.qos",
    "QOSMaxWallDurationPerJobLimit": "hydra.launcher.timeout_min",
    "AssocMaxWallDurationPerJobLimit": "hydra.launcher.timeout_min",
    "QOSMaxCpuPerJobLimit": "hydra.launcher.cpus_per_task",
    "QOSMaxMemoryPerJob": "hydra.launcher.mem_gb",
    "QOSMaxGRESPerJob": "hydra.launcher.gpus_per_node",
}


PRESET = {"hydra.launcher.cpus_per_task=8": "8 CPUs", "hydra.launcher.gpus_per_node=1": "a GPU"}  # launcher/slurm.yaml


# What sbatch says when it refuses a submission, and the keys that change it
REFUSED = {
    "Requested node configuration is not available": "hydra.launcher.exclude, constraint, nodes, cpus_per_task or "
                                                     "mem_gb",
    "Invalid feature specification": "hydra.launcher.constraint",
    "Invalid generic resource (gres) specification": "hydra.launcher.gpus_per_node or gres",
    "Memory specification can not be satisfied": "hydra.launcher.mem_gb",
    "Invalid account": "hydra.launcher.account",
    "Invalid qos": "hydra.launcher.qos",
    "invalid partition": "hydra.launcher.partition",
}


class SlurmRefused(RuntimeError):
    """The cluster cannot run the sweep's jobs as asked: one line naming the launcher key."""


@dataclass(frozen=True)
class Nodes:
    """What the largest node of a partition has, and the partition's time limit (None: unlimited)."""
    partition: str
    count: int
    cpus: int
    memory_mb: int
    gpus: int
    time_limit_min: Optional[int]


def launch_slurm(launcher: Any, batch: Sequence[Sequence[str]], first: int) -> tuple[list[JobReturn], bool]:
    """Run the batch as Hydra's submitit launcher would (its settings, its log lines, one job array), checked before
    it is submitted and watched until every job has ended; the submitted jobs are cancelled if this stops. Hydra's
    job returns, and whether Slurm requeued a job that had started (its first attempt may have left a run)."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides, setup_globals

    from flopsweep.sweep._hydra import submitit_parameters

    setup_globals()
    params = launcher.params
    refused = _request_refusal(params)
    if refused is not None:
        raise SlurmRefused(refused)
    init, settings = submitit_parameters(params)
    executor = submitit.AutoExecutor(cluster="slurm", **init)
    executor.update_parameters(**settings)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(__name__)
    log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
    for i, overrides in enumerate(batch):
        log.info(f"\t#{first + i} : {' '.join(filter_overrides(overrides))}")
    calls = [(list(overrides), "hydra.sweep.dir", first + i, f"job_id_for_{first + i}", Singleton.get_state())
             for i, overrides in enumerate(batch)]
    try:
        jobs = executor.map_array(Task(launcher), *zip(*calls))
    except Exception as err:  # noqa: BLE001 - sbatch's refusal, in its own words
        words = _slurm_words(err)
        keys = [key for said, key in REFUSED.items() if said.lower() in words.lower()]
        raise SlurmRefused(f"hydra/launcher=slurm: Slurm refused the jobs: {words}" +
                           (f" ({'; '.join(keys)})" if keys else "")) from None
    try:
        return _watch(jobs, batch, first, sweep_dir, params)
    except BaseException as err:
        cancel(jobs, interrupted=isinstance(err, KeyboardInterrupt))
        raise


NOT_HERE = ("hydra/launcher=slurm: Slurm's commands (sinfo, sbatch) are not on this machine's PATH; run the sweep on "
            "a Slurm login node, or choose another hydra/launcher")


def _here() -> bool:
    """Whether Slurm's commands are on this machine's PATH."""
    return shutil.which("sinfo") is not None and shutil.which("sbatch") is not None


def slurm_refusal(launcher: Any) -> Optional[str]:
    """The refusal of a Slurm sweep (``launcher``: the ``hydra.launcher`` node), said before the sweep makes its
    folder and its run (it left an empty folder and a FAILED run): a machine without Slurm's commands, or a request
    :func:`_request_refusal` refuses; None for another launcher, or a request the cluster can run. The launch checks
    the request again (:func:`launch_slurm`)."""
    from omegaconf import OmegaConf

    from flopsweep.sweep.plan import launcher_class

    if launcher_class(launcher) != "SlurmLauncher":
        return None
    if not _here():
        return NOT_HERE
    try:
        return _request_refusal({key: OmegaConf.select(launcher, key) for key in launcher if key != "submitit_folder"})
    except SlurmRefused as err:  # no such partition, sinfo failing
        return str(err)


def _request_refusal(params: dict[str, Any]) -> Optional[str]:
    """What no node of the request's partition can run, or a time limit Slurm would warn of as a job starts (one
    line naming the keys); None where the cluster can run the jobs as asked."""
    return warned_at_start(params) or refusal(
        params, partition_nodes(params.get("partition") or os.environ.get("SBATCH_PARTITION")))


def partition_nodes(partition: Optional[str]) -> Nodes:
    """The largest node of ``partition`` (None: the cluster's default), from ``sinfo``."""
    if not _here():
        raise SlurmRefused(NOT_HERE)
    rows = _run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l", *(["-p", partition] if partition else [])])
    found: list[tuple[str, int, int, int, Optional[int]]] = []
    for row in rows.splitlines():
        name, cpus, memory, gres, limit = row.split("|")
        if partition is None and not name.endswith("*"):
            continue
        found.append((name.rstrip("*"), _number(cpus), _number(memory), _gpus(gres), _minutes(limit)))
    if not found:
        where = f"hydra.launcher.partition={partition}: no such partition" if partition else \
            "hydra.launcher.partition: the cluster has no default partition; name one"
        raise SlurmRefused(f"{where} (sinfo lists them)")
    return Nodes(found[0][0], len(found), max(f[1] for f in found), max(f[2] for f in found),
                 max(f[3] for f in found), found[0][4])


def warned_at_start(params: dict[str, Any]) -> Optional[str]:
    """One line naming the keys if Slurm may send the warning before the time limit (``signal_delay_s`` before it,
    or up to a minute earlier: sbatch's ``--signal``) as a job starts, before it can take the warning: the job would
    die of it, not record itself as cut; None otherwise."""
    limit_s, warned_s = 60 * (params.get("timeout_min") or 0), params.get("signal_delay_s") or 0
    if not limit_s or warned_s + 60 < limit_s:
        return None
    return (f"hydra.launcher.signal_delay_s={warned_s}, hydra.launcher.timeout_min={params.get('timeout_min')}: Slurm "
            f"warns a job {warned_s} s before its time limit (or up to 60 s earlier), as it starts with a limit of "
            f"{limit_s} s; raise timeout_min" + (f" or lower signal_delay_s below {limit_s - 60}" if limit_s > 60
                                                 else ""))


def refusal(params: dict[str, Any], nodes: Nodes) -> Optional[str]:
    """What in the launcher's request no node of the partition can give, in one line naming the keys; None if
    a node can run a job as asked."""
    tasks = params.get("tasks_per_node") or 1
    asked = {
        "cpus_per_task": ((params.get("cpus_per_task") or 1) * tasks, nodes.cpus, f"{nodes.cpus} CPUs"),
        "mem_gb": (round((params.get("mem_gb") or 0) * 1024), nodes.memory_mb, f"{nodes.memory_mb / 1024:.1f} GB"),
        "gpus_per_node": (params.get("gpus_per_node") or 0, nodes.gpus,
                          f"{nodes.gpus} GPUs" if nodes.gpus else "no GPU"),
        "nodes": (params.get("nodes") or 1, nodes.count, f"{nodes.count} nodes"),
        "timeout_min": (params.get("timeout_min") or 0, nodes.time_limit_min or float("inf"),
                        f"a time limit of {nodes.time_limit_min} minutes"),
    }
    over = [f"hydra.launcher.{key}={params.get(key)}" + (f" (x{tasks} tasks)" if key == "cpus_per_task" and tasks > 1
                                                          else "")
            for key, (want, have, _) in asked.items() if want > have]
    if not over:
        return None
    has = ", ".join(said for key, (want, have, said) in asked.items() if want > have)
    defaults = [said for key, said in PRESET.items() if any(o.split(" ")[0] == key for o in over)]  # those refused
    preset = f" (the slurm preset's default{'s' if len(defaults) > 1 else ''}: {' and '.join(defaults)} a job)" \
        if defaults else ""
    where = "its nodes" if nodes.count > 1 else "its node"
    return (f"{', '.join(over)}: partition {nodes.partition} cannot run the jobs, {where} and limits give at most "
            f"{has}{preset}; lower {'them' if len(over) > 1 else 'it'} or choose another hydra.launcher.partition")


class Task:
    """What each Slurm task runs: Hydra's launcher's job, with Slurm's warning before the time limit (submitit's
    ``--signal``) turned into the job's own record of being cut by it. The same warning on a preemption (well before
    the limit) is left alone: Slurm requeues the job and it runs again."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def __call__(self, *args: Any) -> JobReturn:
        from submitit.slurm.slurm import SlurmJobEnvironment

        params, started = self.launcher.params, time.monotonic()
        limit_s, warned_s = 60 * (params.get("timeout_min") or 0), params.get("signal_delay_s") or 0
        cause = time_limit(params)

        def on_warning(signum: int, _frame: Any) -> None:
            if time.monotonic() - started >= limit_s - warned_s - 2 * 60:  # Slurm warns within a minute or so
                state.interrupt(signum, cause)

        signal.signal(signal.Signals[f"SIG{SlurmJobEnvironment.USR_SIG}"], on_warning)
        try:
            return self.launcher(*args)
        except state.Interrupted as err:
            if err.cause != cause:
                raise
            return _recorded(args[0])  # its folder says what cut it


def time_limit(params: dict[str, Any]) -> str:
    """What a job cut by its time limit is recorded as, naming the key that sets it."""
    return f"cut by Slurm's time limit (hydra.launcher.timeout_min={params.get('timeout_min')})"


def cancel(jobs: Sequence[Any], interrupted: bool = False) -> None:
    """Cancel the jobs of a batch (its job array): whatever is queued or running of it ends. ``interrupted`` (the
    sweep was): those queued are cancelled, those running get SIGINT and up to :data:`GRACE_S` to record themselves
    interrupted and end (a job whose measurement ends meanwhile records itself ok), then whatever is left is
    cancelled."""
    arrays = sorted({str(job.job_id).split("_")[0] for job in jobs})
    if not arrays:
        return
    try:
        if interrupted:
            _scancel("--state=PENDING", *arrays)
            _scancel("--signal=INT", *arrays)
            deadline = time.monotonic() + GRACE_S
            while time.monotonic() < deadline and _queue([job.job_id for job in jobs]) != {}:
                time.sleep(POLL_S / 4)
    finally:
        _scancel(*arrays)


def _scancel(*args: str) -> None:
    """``scancel ARGS``; a controller silent for :data:`ANSWER_S` is not waited on longer, nor raised over what stops
    the sweep (it is asked again by the next cancel, and the jobs' time limits end them)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["scancel", *args], capture_output=True, timeout=ANSWER_S)


def _watch(jobs: Sequence[Any], batch: Sequence[Sequence[str]], first: int, sweep_dir: Path,
           params: dict[str, Any]) -> tuple[list[JobReturn], bool]:
    """Wait until each job has its result or has left the queue: Hydra's job returns, and whether a job that had
    started was requeued; a job pending for a reason that never clears stops the batch (:class:`SlurmRefused`)."""
    waiting = dict(enumerate(jobs))
    started: set[int] = set()
    requeued = False
    returns: dict[int, JobReturn] = {}
    gone: dict[int, int] = {}  # jobs not in the queue without a result: polls since (its result may be on its way)
    asked = 0.0
    while waiting:
        for i, job in list(waiting.items()):
            if job.paths.result_pickle.exists():
                try:
                    returns[i] = job.results()[0]
                except Exception as err:  # noqa: BLE001 - the task failed outside its job (a job's failure is
                    returns[i] = _task_failed(batch[i], first + i, sweep_dir, err)  # its result): the rest go on
                else:
                    _say_failure(sweep_dir, first + i, batch[i])
                del waiting[i]
        if waiting and time.monotonic() - asked >= POLL_S:
            asked = time.monotonic()
            queue = _queue([job.job_id for job in waiting.values()])
            for i, job in list(waiting.items()) if queue is not None else ():
                if job.job_id in queue:
                    gone.pop(i, None)
                    status, reason = queue[job.job_id]
                    if status == "RUNNING":
                        started.add(i)
                    requeued |= i in started and status in ("PENDING", "REQUEUED", "REQUEUE_HOLD")
                    if status == "PENDING" and reason in NEVER_CLEARS:
                        raise SlurmRefused(f"{NEVER_CLEARS[reason]}: Slurm will never start job {first + i} "
                                           f"(Slurm job {job.job_id}) as asked, it is pending for {reason} "
                                           "(squeue's reason); its jobs were cancelled")
                    continue
                gone[i] = gone.get(i, 0) + 1
                if gone[i] >= 3:
                    status, reason = _state(job.job_id)
                    if status is None or status in ACTIVE:  # squeue missed it (a busy controller): not ended
                        gone[i] = 0
                        continue
                    returns[i] = _ended(job, batch[i], first + i, sweep_dir, params, status, reason)
                    del waiting[i]
        time.sleep(POLL_S / 10)
    return [returns[i] for i in range(len(jobs))], requeued


def _state(job_id: str) -> tuple[Optional[str], str]:
    """A job's state and reason as slurmctld has them (``UNKNOWN`` once it has forgotten the job; None where it did
    not answer in :data:`ANSWER_S`: asked again later)."""
    try:
        done = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                              timeout=ANSWER_S)
    except subprocess.TimeoutExpired:
        return None, "None"
    fields = dict(pair.split("=", 1) for pair in done.stdout.split() if "=" in pair)
    return fields.get("JobState", "UNKNOWN"), fields.get("Reason", "None")


def _ended(job: Any, overrides: Sequence[str], number: int, sweep_dir: Path, params: dict[str, Any], status: str,
           reason: str) -> JobReturn:
    """A job that left Slurm's queue without a result: its own record of why where it wrote one (a time limit it was
    warned of), else one written here with Slurm's ``status`` and ``reason``."""
    (folder,) = job_folders(sweep_dir, [overrides])
    recorded = folder is not None and (folder / "result.json").exists()
    if not recorded:
        why = {"TIMEOUT": time_limit(params),
               "OUT_OF_MEMORY": "killed by Slurm for its memory (hydra.launcher.mem_gb)"}.get(
                   status, f"ended on Slurm as {status}" + (f" ({reason})" if reason != "None" else ""))
        record_failed(sweep_dir, number, overrides,
                      f"{why} before it recorded a result (Slurm job {job.job_id}; its log: {job.paths.stderr})")
    return _recorded(overrides)


def _recorded(overrides: Sequence[str]) -> JobReturn:
    """Hydra's return for a job whose folder holds its record, whatever became of its task: the sweep's summary reads
    the folders, and Hydra goes on to the next batch."""
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)


def _task_failed(overrides: Sequence[str], number: int, sweep_dir: Path, err: Exception) -> JobReturn:
    """A Slurm task whose job never ran (Hydra could not compose its combination of values): recorded failed with
    the error's last line, as the other launchers record it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = next((line for line in reversed(lines) if ": " in line and not line.startswith("File ")), one_line(err))
    record_failed(sweep_dir, number, overrides, f"failed: {said}")
    return _recorded(overrides)


def _say_failure(sweep_dir: Path, number: int, overrides: Sequence[str]) -> None:
    """A failed job's error on the sweep's console: a Slurm job's own lines go to its log, not to the terminal."""
    (folder,) = job_folders(sweep_dir, [overrides])
    result = Result.read_or_none(folder / "result.json") if folder is not None else None
    if result is not None and result.status.failed:
        error(f"job {number} ({' '.join(overrides)}) {result.error}")


def _queue(ids: Sequence[str]) -> Optional[dict[str, tuple[str, str]]]:
    """The jobs of ``ids`` that are in Slurm's queue (an array's tasks one by one): their state and reason; None
    where squeue could not say (slurmctld busy or restarting: ask again), empty where Slurm has forgotten them (jobs
    that ended long ago)."""
    arrays = sorted({str(i).split("_")[0] for i in ids})
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(arrays)], capture_output=True,
                              text=True, timeout=ANSWER_S)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None
    queue = {}
    for row in done.stdout.splitlines():
        parts = row.strip().split("|")
        if len(parts) == 3:
            queue[parts[0]] = (parts[1], parts[2])
    return queue


NO_CLUSTER = ("hydra/launcher=slurm: this machine is in no Slurm cluster: Slurm's commands are here but find no "
              "configuration (no slurm.conf, SLURM_CONF unset, no controller named in DNS); run the sweep on a Slurm "
              "login node, set SLURM_CONF, or choose another hydra/launcher")


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ANSWER_S)
    except subprocess.TimeoutExpired:
        raise SlurmRefused(f"hydra/launcher=slurm: `{command[0]}` did not answer within {ANSWER_S:g} s") from None
    if done.returncode != 0:
        if "Could not establish a configuration source" in done.stderr:  # after its DNS lookup's own lines
            raise SlurmRefused(NO_CLUSTER)
        raise SlurmRefused(f"hydra/launcher=slurm: `{' '.join(command)}` failed: {_slurm_words(done.stderr)}")
    return done.stdout


def _slurm_words(err: Any) -> str:
    """Slurm's own error lines (``sbatch: error: ...``) out of a command's output or an error, in one line."""
    text = str(err)
    said = [line.split("error:", 1)[1].strip() for line in text.splitlines() if "error:" in line]
    return "; ".join(dict.fromkeys(said)) if said else one_line(text)


def _number(text: str) -> int:
    digits = "".join(c for c in text if c.isdigit())
    return int(digits) if digits else 0


def _gpus(gres: str) -> int:
    """GPUs in a node's GRES (``gpu:8``, ``gpu:h100:8(S:0-1)``, ``(null)``)."""
    total = 0
    for item in gres.split(","):
        kind, *rest = item.split(":")
        if kind == "gpu" and rest:
            total += _number(rest[-1].split("(")[0])
    return total


def _minutes(limit: str) -> Optional[int]:
    """A partition's time limit in minutes from sinfo's ``[days-][hours:]minutes:seconds``; None if unlimited."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, clock = limit.rpartition("-")
    hours, minutes, seconds = ([0, 0, 0] + [int(p) for p in clock.split(":")])[-3:]
    return int(days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
