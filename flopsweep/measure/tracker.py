"""Which module is running: the one module tracker, on PyTorch's global module hooks.

In forward, a stack of the named modules being called. For backward, each module call records the interval of
autograd sequence numbers its forward created, so that a backward op is attributed to the module whose forward made
the node running it (:meth:`ModuleTracker.backward_path`). Given a clock, it also times every module call, for the
module profile's forward latency (:meth:`ModuleTracker.end_pass`, :meth:`ModuleTracker.means`).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any, Optional

from torch import nn

from flopsweep.core.profile import ROOT
from flopsweep.measure._torch import node_sequence_nr, sequence_nr
from flopsweep.measure.timing import Clock


class ModuleTracker:
    """While entered, follows the calls of every named module of ``model``; with ``clock``, times them too. Hooks add a
    few microseconds per module call, so deep models of tiny layers read slow."""

    def __init__(self, model: nn.Module, clock: Optional[Clock] = None):
        self.names = {id(m): name for name, m in model.named_modules() if name}
        self.clock = clock
        self.stack: list[tuple[str, int, Any]] = []       # (module, first sequence number, clock mark)
        self.intervals: list[tuple[int, int, str]] = []   # (first, end, module): the nodes a module call created
        self.calls: list[tuple[str, Any, Any]] = []       # with a clock: (module, start, end) of this pass's calls
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.passes = 0
        self.module_calls = 0  # every module's forward calls (each costs the host Python's call machinery)
        self._index: Optional[tuple[list[int], list[int], list[str], list[int]]] = None
        self._cache: dict[int, str] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "ModuleTracker":
        self._handles = [nn.modules.module.register_module_forward_pre_hook(self._pre),
                         nn.modules.module.register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module: nn.Module, args: Any) -> None:
        self.module_calls += 1
        name = self.names.get(id(module))
        if name is not None:
            self.stack.append((name, sequence_nr(), self.clock.mark() if self.clock is not None else None))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self.names.get(id(module))
        if name is None or not self.stack or self.stack[-1][0] != name:
            return
        _, start, started = self.stack.pop()
        if self.clock is not None:
            self.calls.append((name, started, self.clock.mark()))
        end = sequence_nr()
        if end > start:
            self.intervals.append((start, end, name))
            self._index = None

    # -- where an op runs
    def forward_path(self) -> str:
        return self.stack[-1][0] if self.stack else ROOT

    def backward_path(self) -> str:
        seq = node_sequence_nr()
        if seq is None:
            return ROOT
        path = self._cache.get(seq)
        if path is None:
            path = self._cache[seq] = self._lookup(seq)
        return path

    def _lookup(self, seq: int) -> str:
        if self._index is None:
            ordered = sorted(self.intervals, key=lambda iv: (iv[0], -iv[1]))
            starts, ends, names = [iv[0] for iv in ordered], [iv[1] for iv in ordered], [iv[2] for iv in ordered]
            parents, open_ = [], []
            for i, (start, end) in enumerate(zip(starts, ends)):
                while open_ and ends[open_[-1]] <= start:
                    open_.pop()
                parents.append(open_[-1] if open_ else -1)
                open_.append(i)
            self._index = (starts, ends, names, parents)
        starts, ends, names, parents = self._index
        i = bisect.bisect_right(starts, seq) - 1
        while i >= 0 and ends[i] <= seq:  # intervals nest, so the holder is an ancestor of i
            i = parents[i]
        return names[i] if i >= 0 else ROOT

    # -- how long each module took (with a clock)
    def end_pass(self, start: Any, end: Any, keep: bool = True) -> None:
        """Close a forward pass that ran from mark ``start`` to ``end`` (read after the clock's sync, for CUDA
        events); ``keep=False`` drops it. A module called several times in a pass counts its calls together."""
        if keep:
            per_pass: dict[str, float] = defaultdict(float)
            for name, t0, t1 in self.calls:
                per_pass[name] += self.clock.seconds(t0, t1)
            per_pass[ROOT] = self.clock.seconds(start, end)
            for name, seconds in per_pass.items():
                self.samples[name].append(seconds)
            self.passes += 1
        self.calls.clear()
        self.stack.clear()
        self.intervals.clear()  # a timed pass attributes no backward op: they would only pile up
        self._index = None
        self._cache.clear()

    def means(self) -> dict[str, float]:
        """Mean latency per module over the kept passes (a pass without a module's call counts 0). Means, not
        medians: they add up, so the modules of one depth and the rest make the whole pass, as in every pass."""
        return {name: sum(v) / self.passes for name, v in self.samples.items()}
