"""The module profile: every module of the model once, with its parameters, MACs, forward and backward FLOPs
(from the counted step) and its forward latency and achieved FLOP/s (from timed forward passes with hooks).

Values are inclusive (a module with everything under it). Each parameter belongs to the first module that
names it (a tied output head shows no parameters of its own), and each FLOP to the innermost module running
when it ran, so that the modules at one depth plus the work done directly in shallower modules (the ``rest``
of :func:`flopsweep.core.profile.by_depth`) add up to the whole model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from flopsweep.core.profile import ROOT, ancestors, parent
from flopsweep.measure.count import StepCount
from flopsweep.measure.timing import Clock, repeat
from flopsweep.measure.tracker import ModuleTracker


def forward_latency(model: nn.Module, inputs: dict[str, torch.Tensor], autocast: Callable[[], ContextManager],
                    device: str, *, warmup: int, repeats: int, training: bool = True) -> dict[str, float]:
    """Mean forward latency of every module that runs, in seconds, over ``repeats`` forward passes after
    ``warmup``; the whole pass is under :data:`ROOT`."""
    clock = Clock(device)
    losses = []  # each pass's graph is freed after its end mark, outside the time measured

    def forward() -> list[Any]:
        t0 = clock.mark()
        with torch.set_grad_enabled(training), autocast():
            losses.append(model(**inputs))
        return [t0, clock.mark()]

    def after(kept: bool, marks: list[Any]) -> None:
        tracker.end_pass(*marks, keep=kept)
        losses.clear()

    with ModuleTracker(model, clock) as tracker:
        repeat(clock, warmup, repeats, forward, after, what="the forward, module by module")
    return tracker.means()


def module_rows(model: nn.Module, count: StepCount, latency: Optional[dict[str, float]] = None) -> list[dict[str, Any]]:
    """One row per module (the model first, as :data:`ROOT`, then in ``named_modules`` order), inclusive."""
    names = [ROOT] + [name for name, _ in model.named_modules() if name]
    own: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, p in model.named_parameters():  # each parameter once, under the first module that names it
        own[parent(name)]["params"] += p.numel()
    first: dict[int, str] = {}
    tied: dict[str, str] = {}  # a module whose parameter another module names first: a tied head
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            tied[parent(name)] = first[id(p)]
    for phase, phase_count in count.phases().items():
        if phase == "optimizer":
            continue
        for path, tally in phase_count.by_module.items():
            own[path][f"{phase}_flops"] += tally.matmul
            own[path][f"{phase}_elementwise"] += tally.elementwise
    types = {name or ROOT: type(m).__name__ for name, m in model.named_modules()}
    inclusive: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path, values in own.items():
        for ancestor in ancestors(path):
            for key, value in values.items():
                inclusive[ancestor][key] += value
    if latency is not None:
        latency = dict(latency)
        children: dict[str, list[str]] = defaultdict(list)
        for name in names[1:]:
            children[parent(name)].append(name)
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
            "forward_flops_per_s": forward / seconds if seconds and forward else None,
            "tied_to": tied.get(name)})
    return rows
