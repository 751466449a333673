"""What the console says while a sweep runs: each job's line with the sweep's pace, and signs of life inside a long
job."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from flopsweep.core.console import say
from flopsweep.core.result import model_label
from flopsweep.sinks.identity import run_name, short_name
from flopsweep.sweep.state import SweepContext


def progress_line(job_num: Optional[int], config: dict[str, Any], changed: Sequence[str] = (),
                  folder: Optional[Path] = None) -> str:
    """``[job 3/48] gpt3_13b|s2048  elapsed 12 s, about 3 min left``: the job's number in the sweep, what tells it
    apart from the sweep's other jobs (the values of the keys the sweep varies, as its run is named; the whole name
    outside a sweep, with the model's ``changed`` fields) and an ETA from the sweep's pace so far (its start, size,
    jobs side by side and varied keys: the sweep's :class:`~flopsweep.sweep.state.SweepContext`; its first job's
    start, from the job ``folder``'s sweep folder)."""
    context = SweepContext.current()
    name = job_name(config, job_num is not None, changed)
    total, start = context.total, context.start
    if job_num is None or not total or not start:
        return f"[job] {name}"
    done, now = int(job_num), time.time()
    ended = done - context.at_once + 1  # jobs over as this one starts: side by side, the others still run
    eta = f", about {_duration((now - _paced_from(start, folder)) / ended * (total - ended))} left" if ended > 0 else ""
    return f"[job {done + 1}/{total}] {name}  elapsed {_duration(now - start)}{eta}"


def _paced_from(start: float, folder: Optional[Path]) -> float:
    """When the sweep's first job started (Hydra made its folder, ``0_*``): its pace counts from there, not from the
    sweep's start, which joblib's workers' start-up follows (an ETA of 9 min 43 s on a 38 s sweep); else ``start``."""
    first = [p.stat().st_mtime for p in folder.parent.glob("0_*/.hydra")] if folder is not None else []
    return max([start, *first])


def job_name(config: dict[str, Any], in_sweep: bool, changed: Sequence[str] = ()) -> str:
    """What tells a job apart: in a sweep, the values of the keys it varies (``gpt2_small: b4|s128``, the model's
    name before them where the sweep does not vary it); else its run's whole name."""
    swept = list(SweepContext.current().swept)
    if swept and in_sweep:
        return ("" if "model" in swept else f"{model_label(config.get('model') or {})}: ") + short_name(config, swept)
    return run_name(config, changed)


PHASES = {"memory check": "the memory pre-check on meta", "build": "building the model", "count": "counting its ops",
          "size": "sizing its memory", "compile": "compiling (torch.compile)", "profile": "profiling its modules",
          "count ranks": "counting the layout rank by rank",
          "time": "timing the step"}  # said only where the timing loop has said nothing for as long (a slow warm-up)


class Ticker:
    """Signs of life in a long job: once the job has run ``first`` seconds, and then after gaps of a third of the
    time it has run (``first`` at least, ``every`` at most: 5 s apart in its first 15 s, 15 s apart from 45 s on), a
    line saying what it is doing: how far its timing loop is (the loop calls it after each timed run:
    ``measure.timing.TICK``), or which phase it is in (the job announces them, ``core.progress``; a watcher thread
    says one that runs long, and in the timing loop which run is under way). :meth:`close` stops the watcher."""

    def __init__(self, every: float = 15.0, first: float = 5.0):
        self.started = time.monotonic()
        self.every, self.first = every, min(first, every)
        self.last = self.started  # the first line after ``first`` (a CPU ResNet-50's pre-check, count and warm-up
        self.glance = max(0.1, min(1.0, self.first))  # were 15 s of silence, then 12 s more); a glance a second
        self.heard = self.started  # the timing loop's last call: while it goes on, the loop says how far it is
        self.phase: Optional[str] = None
        self.run: Optional[tuple[int, int, str]] = None  # the timing loop's last run: done, in all, what
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None  # started at the first phase

    def _due(self, now: float) -> bool:
        return now - self.last >= max(self.first, min(self.every, (now - self.started) / 3))

    def __call__(self, done: int, total: int, what: str = "the step") -> None:
        now = self.heard = time.monotonic()
        self.run = (done, total, what)
        if self._due(now):
            self.last = now
            say(f"  ... timing {what}: run {done} of {total} (warm-up included), {_duration(now - self.started)} "
                "into the job")

    def entered(self, phase: str) -> None:
        self.phase, self.heard, self.run = phase, time.monotonic(), None
        if self._watcher is None and not self._stop.is_set():
            self._watcher = threading.Thread(target=self._watch, name="flopsweep-ticker", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.glance):
            now, words = time.monotonic(), PHASES.get(self.phase or "")
            quiet = self._due(now) and (self.phase != "time" or now - self.heard >= self.first)
            if words is not None and quiet:
                self.last = now
                if self.phase == "time" and self.run and self.run[0] < self.run[1]:  # a run under way: which
                    done, total, what = self.run
                    words = f"timing {what}: run {done + 1} of {total} under way"
                say(f"  ... {words}, {_duration(now - self.started)} into the job")

    def close(self) -> None:
        self._stop.set()


def _duration(seconds: float) -> str:
    """``45 s``, ``1 min 38 s`` (it said 2 min at 98 s, after 80 s; and 82 s after 1 min 31 s), ``12 min``,
    ``1.5 h``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 600:
        return f"{whole // 60} min {whole % 60} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
