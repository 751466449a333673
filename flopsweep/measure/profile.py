"""The module profile: every module of the model once, with its parameters, MACs, forward and backward FLOPs
(from the counted step) and its forward latency and achieved FLOP/s (from timed forward passes with hooks).

Values are inclusive (a module with everything under it). Each parameter belongs to the first module that
names it (a tied output head shows no parameters of its own), and each FLOP to the innermost module running
when it ran, so that the modules at one depth plus the work done directly in shallower modules (the ``rest``
of :func:`by_depth`) add up to the whole model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from flopsweep.measure.count import ROOT, StepCount
from flopsweep.measure.timing import _Clock

REST = "(rest)"


class ModuleTimer:
    """While entered, times every call of every named module of ``model`` with hooks; :meth:`end_pass` closes
    one pass (after the clock's sync, for CUDA events). A module called several times in a pass counts its
    calls together. Hooks add a few microseconds per module call, so deep models of tiny layers read slow."""

    def __init__(self, model: nn.Module, clock: _Clock):
        self.clock = clock
        self.names = {id(m): name for name, m in model.named_modules() if name}
        self.marks: list[tuple[str, Any, Any]] = []
        self.open: list[tuple[str, Any]] = []
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.passes = 0

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self.names.get(id(module))
        if name is not None:
            self.open.append((name, self.clock.mark()))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self.names.get(id(module))
        if name is not None and self.open and self.open[-1][0] == name:
            _, start = self.open.pop()
            self.marks.append((name, start, self.clock.mark()))

    def __enter__(self) -> "ModuleTimer":
        self._handles = [nn.modules.module.register_module_forward_pre_hook(self._pre),
                         nn.modules.module.register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()

    def end_pass(self, start: Any, end: Any, keep: bool = True) -> None:
        """Close a pass whose whole forward ran from mark ``start`` to ``end``; ``keep=False`` drops it."""
        if keep:
            per_pass: dict[str, float] = defaultdict(float)
            for name, t0, t1 in self.marks:
                per_pass[name] += self.clock.seconds(t0, t1)
            per_pass[ROOT] = self.clock.seconds(start, end)
            for name, seconds in per_pass.items():
                self.samples[name].append(seconds)
            self.passes += 1
        self.marks.clear()
        self.open.clear()

    def means(self) -> dict[str, float]:
        """Mean latency per module over the kept passes (a pass without a module's call counts 0). Means, not
        medians: they add up, so the modules of one depth and the rest make the whole pass, as in every pass."""
        return {name: sum(v) / self.passes for name, v in self.samples.items()}


def forward_latency(model: nn.Module, inputs: dict[str, torch.Tensor], autocast: Callable[[], ContextManager],
                    device: str, *, warmup: int, repeats: int, training: bool = True) -> dict[str, float]:
    """Mean forward latency of every module that runs, in seconds, over ``repeats`` forward passes after
    ``warmup``; the whole pass is under :data:`ROOT`."""
    clock = _Clock(device)
    with ModuleTimer(model, clock) as timer:
        for i in range(warmup + repeats):
            clock.sync()
            t0 = clock.mark()
            with torch.set_grad_enabled(training), autocast():
                loss = model(**inputs)
            t1 = clock.mark()
            clock.sync()
            del loss
            timer.end_pass(t0, t1, keep=i >= warmup)
    return timer.means()


def module_rows(model: nn.Module, count: StepCount, latency: Optional[dict[str, float]] = None) -> list[dict[str, Any]]:
    """One row per module (the model first, as :data:`ROOT`, then in ``named_modules`` order), inclusive."""
    names = [ROOT] + [name for name, _ in model.named_modules() if name]
    own: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, p in model.named_parameters():  # each parameter once, under the first module that names it
        own[_parent(name)]["params"] += p.numel()
    for phase, phase_count in count.phases().items():
        if phase == "optimizer":
            continue
        for path, tally in phase_count.by_module.items():
            own[path][f"{phase}_flops"] += tally.matmul
            own[path][f"{phase}_elementwise"] += tally.elementwise
    types = {name or ROOT: type(m).__name__ for name, m in model.named_modules()}
    inclusive: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path, values in own.items():
        for ancestor in _ancestors(path):
            for key, value in values.items():
                inclusive[ancestor][key] += value
    if latency is not None:
        latency = dict(latency)
        children: dict[str, list[str]] = defaultdict(list)
        for name in names[1:]:
            children[_parent(name)].append(name)
        for name in reversed(names):  # containers never called (ModuleList): their children's time
            timed = [latency[c] for c in children[name] if c in latency]
            if name not in latency and timed:
                latency[name] = sum(timed)
    rows = []
    for name in names:
        row = inclusive[name]
        seconds = latency.get(name) if latency is not None else None
        forward = int(row["forward_flops"])
        rows.append({
            "module": name, "depth": 0 if name == ROOT else name.count(".") + 1, "type": types[name],
            "params": int(row["params"]), "macs": forward // 2, "forward_flops": forward,
            "backward_flops": int(row["backward_flops"]), "forward_elementwise": int(row["forward_elementwise"]),
            "backward_elementwise": int(row["backward_elementwise"]),
            "forward_latency_s": seconds if latency is not None else None,
            "forward_flops_per_s": forward / seconds if seconds and forward else None})
    return rows


def _parent(path: str) -> str:
    return path.rpartition(".")[0] or ROOT


def _ancestors(path: str) -> list[str]:
    """``path`` and every module above it, the model (:data:`ROOT`) included."""
    if path == ROOT:
        return [ROOT]
    parts = path.split(".")
    return [ROOT] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _exclusive(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Each module's own share of ``key``: its value less its children's."""
    by_name = {row["module"]: row for row in rows}
    own = {name: row[key] or 0 for name, row in by_name.items()}
    for row in rows:
        if row["depth"] > 0:
            own[_parent(row["module"])] -= row[key] or 0
    return own


SUMMED = ("params", "macs", "forward_flops", "backward_flops", "forward_latency_s")


def by_depth(rows: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """For each depth: its ``top`` modules by forward FLOPs (then latency), every module of that depth summed
    as ``(depth d, all)``, and :data:`REST`, what ran directly in shallower modules; ``all`` + ``rest`` is the
    model's total for each column."""
    timed = rows[0]["forward_latency_s"] is not None
    own = {key: _exclusive(rows, key) for key in SUMMED if timed or key != "forward_latency_s"}
    depth_of = {row["module"]: row["depth"] for row in rows}
    out = []
    for depth in range(1, max(depth_of.values()) + 1):
        level = [row for row in rows if row["depth"] == depth]
        ranked = sorted(level, key=lambda r: (-r["forward_flops"], -(r["forward_latency_s"] or 0)))[:top]
        for rank, row in enumerate(ranked, 1):
            out.append({"depth": depth, "rank": rank, **{k: row[k] for k in ("module", "type", *SUMMED)}})
        total = {key: sum(row[key] or 0 for row in level) for key in own}
        rest = {key: sum(v for name, v in values.items() if depth_of[name] < depth) for key, values in own.items()}
        out.append({"depth": depth, "rank": None, "module": f"(depth {depth}, all {len(level)})", "type": "",
                    **{k: total.get(k) for k in SUMMED}})
        out.append({"depth": depth, "rank": None, "module": REST, "type": "", **{k: rest.get(k) for k in SUMMED}})
    return out
