"""Which phase a job is in (building, counting, sizing, timing, ...), for whoever listens: the sweep's console, which
says so when a phase runs long. The job's code only announces; it prints nothing. And the pace of a loop's signs of
life (:func:`throttled`)."""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Callable, Optional

LISTENER: ContextVar[Optional[Callable[[str], None]]] = ContextVar("flopsweep_phase_listener", default=None)


def entered(phase: str) -> None:
    """The job has entered ``phase``."""
    listener = LISTENER.get()
    if listener is not None:
        listener(phase)


def throttled(say: Callable[[str], None], every: float) -> Callable[[str], None]:
    """``say`` for a loop that reports each step: a line passes once ``every`` seconds have gone by since the last
    one (or since the start), the others are dropped (a calibration's phase and a budget's presets were silent for
    20 s; each step's line would be hundreds)."""
    last = time.monotonic()

    def line(text: str) -> None:
        nonlocal last
        if time.monotonic() - last >= every:
            last = time.monotonic()
            say(text)
    return line
