"""Files written whole: each goes to a temporary name beside its place and is renamed into it, so that a reader (a
summary, a resume, ``flopsweep-sync``) sees the whole file or none, even when the disk fills or the process dies
half-way; the temporary file is removed if the write fails."""

from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
