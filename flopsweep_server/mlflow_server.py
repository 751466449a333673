"""The ``mlflow server`` process: its command line, starting it in a process group of its own and waiting until it
answers, and stopping the whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from flopsweep_server.processes import group_alive, group_ended, last_line, log_tail, require_free, signal_group
from flopsweep_server.settings import PROG, Layout, ServerError, Settings, backend_uri, local_url


def mlflow_command(layout: Layout, settings: Settings) -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]
    return [*head, "server", "--backend-store-uri", backend_uri(settings),
            "--serve-artifacts", "--artifacts-destination", layout.artifacts(settings),
            "--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers),
            *settings.mlflow_args]


def mlflow_group(layout: Layout) -> Optional[int]:
    """The process group of this folder's running MLflow server (the CLI and its uvicorn workers), or None."""
    try:
        pgid = int(layout.mlflow_pid.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pgid if group_alive(pgid) else None


def healthy(settings: Settings, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"{local_url(settings)}/health", timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def start_mlflow(layout: Layout, settings: Settings, wait_s: float = 300) -> subprocess.Popen:
    require_free("--port", settings.host, settings.port)
    artifacts = layout.artifacts(settings)
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PGPASSFILE=str(layout.pgpass))
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow 3's job runner (GenAI scorers, prompt optimisation: nothing a sweep uses) is 8 more processes (its
    # runner and 7 consumers, each importing MLflow);
    # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment turns it back on
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(layout.mlflow_log, "a") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {PROG} start\n")
        log.flush()
        proc = subprocess.Popen(mlflow_command(layout, settings), cwd=layout.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    layout.mlflow_pid.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s  # the first start creates MLflow's tables: tens of seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            layout.mlflow_pid.unlink(missing_ok=True)
            raise ServerError(f"mlflow server: exited with status {proc.returncode}: "
                              f"{last_line(log_tail(layout.mlflow_log))} (see {layout.mlflow_log})")
        if healthy(settings):
            return proc
        time.sleep(0.25)
    stop_mlflow(layout)
    raise ServerError(f"mlflow server: did not answer on {local_url(settings)} in {wait_s:.0f} s "
                      f"(see {layout.mlflow_log})")


def stop_mlflow(layout: Layout, timeout: float = 20) -> bool:
    """SIGTERM the server's process group, SIGKILL it after ``timeout`` s. Returns whether one was running."""
    pgid = mlflow_group(layout)
    if pgid is None:
        layout.mlflow_pid.unlink(missing_ok=True)
        return False
    signal_group(pgid, signal.SIGTERM)
    if not group_ended(pgid, timeout):
        signal_group(pgid, signal.SIGKILL)
        group_ended(pgid, 10)
    layout.mlflow_pid.unlink(missing_ok=True)
    return True
