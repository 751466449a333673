"""Files written whole: each goes to a temporary name beside its place and is renamed into it, so that a reader (a
summary, a resume, ``flopsweep-sync``) sees the whole file or none, even when the disk fills or the process dies
half-way; the temporary file is removed if the write fails. And a lock file, for what one process at a time does."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing) until the block ends; another process that asks
    for it waits. The lock goes with the process: one that dies leaves no stale lock."""
    with Path(path).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def user_cache() -> Path:
    """Where flopsweep keeps what it made once for a user: ``$XDG_CACHE_HOME/flopsweep`` (``~/.cache/flopsweep``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flopsweep"


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)  # readers see the old file or the new one; no disk sync per file (a sweep
                                     # writes several per job), as the store's commits do not sync either
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
