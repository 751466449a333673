"""How commands write and end: a line written whole (:func:`say`; a warning and an error the same way for every
command), output whose reader left (``| head``) dropped rather than a traceback, and an exit that skips the
interpreter's long collection."""

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


def warning(text: str, command: str = "flopsweep") -> None:
    """``COMMAND: warning: TEXT`` on stderr, one line written whole: every command's warnings."""
    say(f"{command}: warning: {text}", sys.stderr)


def error(text: str, command: str = "flopsweep") -> None:
    """``COMMAND: error: TEXT`` on stderr, one line written whole: every command's errors."""
    say(f"{command}: error: {text}", sys.stderr)


def _reader_gone(stream: Any) -> None:
    """Send what is still to be written to ``stream`` (and what its buffer holds) to the null device."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):  # not a file (a test's capture): nothing to redirect
        pass


class ForgivingStream:
    """A process's stdout that outlives its reader: once the reader has left (``| head``), what is written goes to the
    null device instead of raising BrokenPipeError in whatever wrote it (a print, a logging handler: Hydra's sends
    its job lines there, and logging would print a traceback of its own)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _reader_gone(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _reader_gone(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def forgive_stdout() -> None:
    """Make this process's stdout a :class:`ForgivingStream` (a command's, a sweep worker's)."""
    if not isinstance(sys.stdout, ForgivingStream) and sys.stdout is not None:
        sys.stdout = ForgivingStream(sys.stdout)


def run_command(main: Callable[[], int]) -> NoReturn:
    """Run a command's ``main`` and end with its status (:func:`exit_command`), its stdout forgiving
    (:class:`ForgivingStream`); output whose reader left ends it quietly with status 1 where something still raised,
    as Python's docs advise, not with a BrokenPipeError traceback."""
    forgive_stdout()
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
