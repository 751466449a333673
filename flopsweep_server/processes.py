"""Processes and ports: whether a process or a process group still runs, signalling a group, the tail of a log, and
a port that must be free."""

from __future__ import annotations

import glob
import os
import socket
import time
from pathlib import Path

from flopsweep_server.settings import ServerError


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_ended(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for every process of the group to end; whether they did."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies, which their parent or init reaps, do not count)."""
    if Path("/proc/self/stat").exists():
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


def require_free(option: str, host: str, port: int) -> None:
    """Fail in one line when something already listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ServerError(f"{option} {port}: cannot listen on {host}:{port} ({err.strerror}): another program "
                              f"uses it; choose another with {option}") from None
