"""Which phase a job is in (building, counting, sizing, timing, ...), for whoever listens: the sweep's console, which
says so when a phase runs long. The job's code only announces; it prints nothing."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Callable, Optional

LISTENER: ContextVar[Optional[Callable[[str], None]]] = ContextVar("flopsweep_phase_listener", default=None)


def entered(phase: str) -> None:
    """The job has entered ``phase``."""
    listener = LISTENER.get()
    if listener is not None:
        listener(phase)
