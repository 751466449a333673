"""A resume's claim on a job: two sweeps resumed at once (``skip_existing=true``) must not both measure a configuration
that neither finds finished in the store. Before a resumed job looks for its finished run it takes an exclusive lock
on a file named by its experiment and fingerprint, and keeps it until its run is logged; a job that finds the lock
held is left to the sweep holding it. The lock is the operating system's (``flock``), so a claim whose process is gone
(killed, crashed, its machine rebooted) is free again at once: the next resume takes it over.

The claims live beside a local store (``outputs/claims/``), which every resume of it shares; for a store on a server,
in the user's cache folder (``~/.cache/flopsweep/claims/``), which resumes on one machine, or on machines sharing a
home folder over NFSv4, share. The files stay (empty) after their jobs: removing one while another process opens it
would let two processes lock two different files."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from pathlib import Path
from typing import Optional, Union

from flopsweep.sinks.target import Target


def claims_folder(target: Target) -> Path:
    """Where the claims on ``target``'s runs live."""
    if target.uri.startswith("sqlite:///"):
        return Path(target.uri[len("sqlite:///"):]).parent / "claims"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "flopsweep" / "claims" / hashlib.sha256(target.uri.encode()).hexdigest()[:16]


class Claim:
    """A held claim: released (the lock dropped, the file emptied) once the job's run is logged."""

    def __init__(self, fd: int):
        self._fd: Optional[int] = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:  # a full or read-only disk: the lock still goes with the descriptor
            pass
        os.close(fd)


def claim(target: Target, fingerprint: str) -> Union[Claim, str, None]:
    """Claim the job of ``fingerprint`` in ``target``'s experiment: a :class:`Claim`, or who holds it (``pid 123 on
    host``: another sweep measures it now), or None where no claim can be made (a folder that cannot be written: the
    job is measured as before claims were)."""
    name = hashlib.sha256(f"{target.experiment}\0{fingerprint}".encode()).hexdigest()[:32]
    try:
        folder = claims_folder(target)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        os.close(fd)
        return holder or "another process"
    except OSError:  # a file system without locks
        os.close(fd)
        return None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    except OSError:  # a full disk: the lock holds without the holder's name
        pass
    return Claim(fd)
