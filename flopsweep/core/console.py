"""How commands write and end: a line written whole, output whose reader left (``| head``) dropped rather than a
traceback, and an exit that skips the interpreter's long collection."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, Callable, NoReturn


def say(text: str, stream: Any = None) -> None:
    """Write ``text`` and its newline in one write: the lines of jobs running side by side then stay whole
    (print writes the newline apart, and with PYTHONUNBUFFERED each part reaches the shared pipe on its own). Where
    the stream's reader has left, the line and the rest go nowhere and the work goes on: a sweep piped into ``head``
    still measures and logs every job."""
    stream = stream or sys.stdout
    try:
        stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError:
        _reader_gone(stream)


def _reader_gone(stream: Any) -> None:
    """Send what is still to be written to ``stream`` (and what its buffer holds) to the null device."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):  # not a file (a test's capture): nothing to redirect
        pass


def run_command(main: Callable[[], int]) -> NoReturn:
    """Run a command's ``main`` and end with its status (:func:`exit_command`); output whose reader left (``| head``)
    ends it quietly with status 1, as Python's docs advise, not with a BrokenPipeError traceback."""
    try:
        code = main()
    except BrokenPipeError:
        _reader_gone(sys.stdout)
        code = 1
    exit_command(code)


def exit_command(code: int) -> NoReturn:
    """End a command with ``code``. What it imported (torch, MLflow, SQLAlchemy: some 300k objects) is frozen first:
    the interpreter's exit otherwise collects them all, several times over, 1.2 s after the work is done."""
    gc.freeze()
    sys.exit(code)
