"""What a sweep's process knows of the sweep, in one object that the app, its callback and the sweeper share:
whether anything failed (the exit status), the sweep's open MLflow run and folder, whether the user asked for
Hydra's whole errors, and a signal waiting for a job's record to be whole. A job in another process (a joblib or
Slurm worker) learns the sweep's run, size and start from the environment instead (:class:`SweepContext`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from flopsweep.sinks.target import Target

CONTEXT_ENV = "FLOPSWEEP_SWEEP"  # the sweep's context for its jobs (:class:`SweepContext`, as JSON)


@dataclass(frozen=True)
class SweepContext:
    """What a sweep's jobs learn of it, in whatever process they run (this one, joblib's workers, Slurm's nodes): its
    MLflow run (``parent``: their runs' parent), its size and start (their progress lines) and the keys that tell
    its jobs apart (their runs' short names). The sweep callback publishes it once the sweep's run is open (the
    layout search again once it knows its layouts); jobs read it from the environment, which every launcher passes
    on."""

    parent: Optional[str] = None
    total: Optional[int] = None
    start: Optional[float] = None
    swept: tuple[str, ...] = ()
    at_once: int = 1  # jobs the launcher runs side by side: above 1, a job's figures say whose they are

    def publish(self) -> None:
        os.environ[CONTEXT_ENV] = json.dumps(asdict(self))

    @classmethod
    def current(cls) -> "SweepContext":
        """The published context; an empty one outside a sweep."""
        text = os.environ.get(CONTEXT_ENV)
        if not text:
            return cls()
        fields = json.loads(text)
        return cls(**{**fields, "swept": tuple(fields.get("swept") or ())})

    @staticmethod
    def withdraw() -> None:
        """The sweep has ended: a later command in this process is in no sweep."""
        os.environ.pop(CONTEXT_ENV, None)


@dataclass
class SweepState:
    failed: bool = False                 # a job failed, the sweeper gave up, or the summary found a failure
    refused: bool = False                # a single command's config refused before anything ran: exit status 2
    full_errors: bool = False            # HYDRA_FULL_ERROR=1 from the user: raise, don't shorten
    parent: Optional[str] = None         # the sweep's MLflow run, while it is open
    target: Optional[Target] = None      # where that run is
    sweep_dir: Optional[Path] = None     # the sweep's folder, once it starts
    deferring: int = 0                   # inside what a signal must not cut in half (see interrupts_deferred)
    pending: Optional[int] = None        # a signal that arrived meanwhile
    signalled: Optional[int] = None      # the last SIGINT or SIGTERM received, whatever became of its interrupt
    cause: Optional[str] = None          # what that signal meant, where not an interrupt from a user (a time limit)
    unwritten: dict[str, Any] = field(default_factory=dict)  # job folder -> its Result, measured, not written
    cut: Optional[Path] = None           # the folder of a job a signal cut, holding what it measured before
    heartbeat: Any = None                # the sweep's Heartbeat (sinks.sweep_run), while it runs
    coda: Optional[str] = None           # what the sweeper says after the summary (a layout search's fastest)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (what Ctrl-C, ``kill``, ``timeout`` and Slurm's preemption send): the sweep ends cleanly."""

    def __init__(self, signum: int, cause: Optional[str] = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.cause = cause or f"interrupted by {signal.Signals(signum).name}"  # said of the job it cut

    def __reduce__(self) -> tuple[type, tuple[int, str]]:  # a joblib worker's, sent to the sweep's process
        return Interrupted, (self.signum, self.cause)


class Unwritable(BaseException):
    """The sweep's output folder cannot be written (a full disk, a read-only one, no permission): the sweep stops,
    as for a signal, since every later job would be lost the same way; what finished stays whole. A BaseException,
    as a signal's is, so that Hydra's job runner does not take it for one job's failure and go on."""

    def __init__(self, path: Optional[Path], err: OSError) -> None:
        self.path, self.error = (Path(err.filename) if err.filename else path), err
        where = self.path if self.path is not None else "the output folder"
        super().__init__(f"{where}: cannot be written ({err.strerror or err})")


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def disk_error(err: BaseException) -> Optional[OSError]:
    """The full, read-only or forbidden disk behind ``err`` (itself, or what caused it: OmegaConf wraps a resolver's
    error, the sweep folder's), or None."""
    seen: Optional[BaseException] = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def on_signal(signum: int, _frame: Any) -> None:
    """The sweep's handler of SIGINT and SIGTERM: :func:`interrupt`."""
    interrupt(signum)


def interrupt(signum: int, cause: Optional[str] = None) -> None:
    """An :class:`Interrupted` now, or once what must not be cut in half is done. The signal is remembered too:
    raised inside a library, the interrupt can come out as another error (a ``finally`` that reads a name the
    interrupt kept from being set), and the sweep must still end as interrupted (:func:`again`)."""
    _state.signalled, _state.cause = signum, cause
    if _state.deferring:
        _state.pending = signum
        return
    raise Interrupted(signum, cause)


def in_a_job() -> None:
    """What a job's process needs, whichever launcher runs it (this process, a joblib worker forked from loky's
    server, submitit's): an interrupt swallowed where Python can only print it is delivered again, and SIGINT (a
    terminal's Ctrl-C reaches the workers too) raises the sweep's interrupt, remembered, so that one a library turns
    into an error of its own still ends the job as interrupted, not failed. A handler someone set is left alone."""
    keep_swallowed_interrupts()
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)


def keep_swallowed_interrupts() -> None:
    """Install :func:`_unraisable` as ``sys.unraisablehook`` in this process (a sweep's, a worker's)."""
    if sys.unraisablehook is not _unraisable:
        _unraisable.default = sys.unraisablehook  # type: ignore[attr-defined]
        sys.unraisablehook = _unraisable


def _unraisable(unraisable: Any) -> None:
    """An interrupt raised where Python can only print it (a weak-reference callback, a finalizer: "Exception
    ignored in ...", and the interrupt lost, the sweep going on) is delivered again as its signal, a moment later,
    until it lands in code that can raise it; anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        again_in = threading.Timer(0.05, os.kill, (os.getpid(), signal_of(unraisable.exc_value)))
        again_in.daemon = True
        again_in.start()
        return
    _unraisable.default(unraisable)  # type: ignore[attr-defined]


_unraisable.default = sys.unraisablehook  # type: ignore[attr-defined]


def again() -> Interrupted:
    """The interrupt of the signal this process received, to raise where a library turned it into another error."""
    return Interrupted(_state.signalled, _state.cause)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Writing a job's folder and logging its run: a signal cutting a store's transaction in half left the store locked
    for the summary and the sweep's run open. A signal that arrives meanwhile is raised when this ends."""
    sweep = _state
    sweep.deferring += 1
    try:
        yield
    finally:
        sweep.deferring -= 1
        if not sweep.deferring and sweep.pending is not None:
            signum, sweep.pending = sweep.pending, None
            raise Interrupted(signum, sweep.cause)


def signal_of(err: KeyboardInterrupt) -> int:
    """The signal an interrupt came from: Python raises a plain KeyboardInterrupt for SIGINT."""
    return err.signum if isinstance(err, Interrupted) else signal.SIGINT


_state = SweepState()


def current() -> SweepState:
    """This process's sweep state."""
    return _state


def begin(full_errors: bool) -> SweepState:
    """A new state for a command that starts now."""
    global _state
    _state = SweepState(full_errors=full_errors)
    return _state
