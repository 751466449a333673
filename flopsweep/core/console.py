"""How commands write and end: a line written whole, and an exit that skips the interpreter's long collection."""

from __future__ import annotations

import gc
import sys
from typing import Any, NoReturn


def say(text: str, stream: Any = None) -> None:
    """Write ``text`` and its newline in one write: the lines of jobs running side by side then stay whole
    (print writes the newline apart, and with PYTHONUNBUFFERED each part reaches the shared pipe on its own)."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def exit_command(code: int) -> NoReturn:
    """End a command with ``code``. What it imported (torch, MLflow, SQLAlchemy: some 300k objects) is frozen first:
    the interpreter's exit otherwise collects them all, several times over, 1.2 s after the work is done."""
    gc.freeze()
    sys.exit(code)
