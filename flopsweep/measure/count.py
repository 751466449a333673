"""Count the FLOPs of one training step at the dispatcher: forward (loss included), backward and optimizer
step, each from the aten ops that really run, attributed to ops and to modules.

Ops are attributed to modules by :class:`~flopsweep.measure.tracker.ModuleTracker`: forward ops to the innermost
module running, backward ops to the module whose forward created the autograd node that runs them.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from flopsweep.core.profile import OPTIMIZER, ROOT
from flopsweep.measure._torch import EagerDispatchMode
from flopsweep.measure.formulas import CountOptions, cost_of
from flopsweep.measure.ops import OpTrace, op_name
from flopsweep.measure.tracker import ModuleTracker

PHASES = ("forward", "backward", "optimizer")


@dataclass
class OpTally:
    calls: int = 0
    matmul: int = 0
    elementwise: int = 0


@dataclass
class PhaseCount:
    """The FLOPs of one phase: totals, per aten op, and per module (exclusive: ops run directly in it)."""

    matmul: int = 0
    elementwise: int = 0
    by_op: dict[str, OpTally] = field(default_factory=lambda: defaultdict(OpTally))
    by_module: dict[str, OpTally] = field(default_factory=lambda: defaultdict(OpTally))

    @property
    def macs(self) -> int:
        return self.matmul // 2


@dataclass
class StepCount:
    """One step's count: each phase's FLOPs by op and by module, the ops no formula covers, and the op trace."""

    forward: PhaseCount
    backward: Optional[PhaseCount]
    optimizer: Optional[PhaseCount]
    uncounted: dict[str, int]  # ops with arithmetic but no formula -> calls
    causal_half: bool
    trace: OpTrace = field(default_factory=OpTrace)  # every op in the order it ran, with its cost inputs

    @property
    def model_flops(self) -> int:
        """Matmul-class FLOPs of forward and backward: the MFU numerator (PaLM's model FLOPs)."""
        return self.forward.matmul + (self.backward.matmul if self.backward else 0)

    def phases(self) -> dict[str, PhaseCount]:
        return {name: count for name, count in zip(PHASES, (self.forward, self.backward, self.optimizer))
                if count is not None}

    def module_table(self, depth: int, model: Optional[nn.Module] = None) -> list[dict[str, Any]]:
        """Inclusive FLOPs per module down to ``depth`` (0 = the whole model), one row per module; with ``model``, each
        row's parameters too (each tensor once; none for the optimizer's row)."""
        totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for phase, count in self.phases().items():
            for path, tally in count.by_module.items():
                parts = [] if path in (ROOT, OPTIMIZER) else path.split(".")
                prefixes = [ROOT if path != OPTIMIZER else OPTIMIZER] + \
                    [".".join(parts[:i]) for i in range(1, min(depth, len(parts)) + 1)]
                for prefix in prefixes:
                    totals[prefix][f"{phase}_flops"] += tally.matmul
                    totals[prefix][f"{phase}_elementwise"] += tally.elementwise
        rows = []
        modules = dict(model.named_modules()) if model is not None else {}
        for path in sorted(totals, key=_module_order):
            row = {"module": path, "depth": 0 if path in (ROOT, OPTIMIZER) else path.count(".") + 1}
            module = model if path == ROOT else modules.get(path)
            if model is not None:
                row["params"] = sum({id(p): p.numel() for p in module.parameters()}.values()) \
                    if module is not None else None
            for phase in PHASES:
                row[f"{phase}_flops"] = totals[path].get(f"{phase}_flops", 0)
                row[f"{phase}_elementwise"] = totals[path].get(f"{phase}_elementwise", 0)
            rows.append(row)
        return rows

    def op_table(self) -> list[dict[str, Any]]:
        rows = []
        for phase, count in self.phases().items():
            for op, tally in sorted(count.by_op.items(), key=lambda kv: -(kv[1].matmul + kv[1].elementwise)):
                rows.append({"phase": phase, "op": op, "calls": tally.calls, "flops": tally.matmul,
                             "elementwise": tally.elementwise})
        return rows


def _module_order(path: str) -> tuple:
    if path in (ROOT, OPTIMIZER):
        return (0 if path == ROOT else 2, ())
    return (1, tuple(int(p) if p.isdigit() else p for p in path.split(".")))


_names: dict[Any, str] = {}


def _name(func: Any) -> str:
    """``aten.mm``: the op's name without its overload, as the tables show it (made once per overload);
    ``higher_order.flex_attention`` for a higher-order op."""
    name = _names.get(func)
    if name is None:
        name = _names[func] = op_name(func)
    return name


class Counter(EagerDispatchMode):
    """Counts every op into ``phase``, which the caller moves on, or which ``phase_of`` tells for each op."""

    def __init__(self, tracker: ModuleTracker, opts: CountOptions, phase_of: Optional[Callable[[], str]] = None):
        super().__init__()
        self.uncounted: dict[str, int] = defaultdict(int)  # also what a formula could only approximate
        self.tracker, self.opts, self.phase_of = tracker, replace(opts, said=self._said), phase_of
        self.phase = "forward"
        self.counts: dict[str, PhaseCount] = {}
        self.trace = OpTrace()

    def _said(self, what: str) -> None:
        self.uncounted[what] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self.run(func, args, kwargs)
        cost = cost_of(func, args, kwargs, out, self.opts)
        phase = self.phase_of() if self.phase_of else self.phase
        self.trace.add(phase, func, args, kwargs, out, cost)
        if cost is None:
            self.uncounted[_name(func)] += 1
            return out
        if not (cost.matmul or cost.elementwise):
            return out
        if phase == "forward":
            path = self.tracker.forward_path()
        elif phase == "backward":
            path = self.tracker.backward_path()
        else:
            path = OPTIMIZER
        count = self.counts.get(phase)
        if count is None:
            count = self.counts[phase] = PhaseCount()
        count.matmul += cost.matmul
        count.elementwise += cost.elementwise
        for tally in (count.by_op[_name(func)], count.by_module[path]):
            tally.calls += 1
            tally.matmul += cost.matmul
            tally.elementwise += cost.elementwise
        return out

    def result(self, backward: bool, optimizer: bool) -> "StepCount":
        phases = self.counts
        return StepCount(
            forward=phases.get("forward", PhaseCount()),
            backward=phases.get("backward", PhaseCount()) if backward else None,
            optimizer=phases.get("optimizer", PhaseCount()) if backward and optimizer else None,
            uncounted=dict(self.uncounted), causal_half=self.opts.causal_half, trace=self.trace)


def count_step(model: nn.Module, inputs: dict[str, torch.Tensor],
               optimizer: Optional[torch.optim.Optimizer], *, causal_half: bool = False,
               backward: bool = True, context: Callable[[], Any] = None) -> StepCount:
    """Run one training step (or only the forward pass when ``backward`` is false) and count it.

    ``context`` makes the context manager the forward pass runs in (autocast, for mixed precision)."""
    if not backward:
        return count_call(model, lambda: model(**inputs), causal_half=causal_half, context=context)[0]
    tracker = ModuleTracker(model)
    counter = Counter(tracker, CountOptions(causal_half=causal_half))
    with tracker, counter:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        with (context() if context else contextlib.nullcontext()):
            loss = model(**inputs)
        counter.trace.module_calls["forward"] = tracker.module_calls
        counter.phase = "backward"
        loss.backward()
        if optimizer is not None:
            counter.phase = "optimizer"
            optimizer.step()
    return counter.result(True, optimizer is not None)


def count_call(model: nn.Module, run: Callable[[], Any], *, causal_half: bool = False,
               context: Callable[[], Any] = None) -> tuple[StepCount, Any]:
    """Count what ``run()`` computes with ``model`` (no gradients: a step of generation) as a forward pass; returns
    the count and what ``run`` returned."""
    tracker = ModuleTracker(model)
    counter = Counter(tracker, CountOptions(causal_half=causal_half))
    with tracker, counter, torch.no_grad(), (context() if context else contextlib.nullcontext()), _unfused():
        out = run()
    counter.trace.module_calls["forward"] = tracker.module_calls
    return counter.result(backward=False, optimizer=False), out


@contextlib.contextmanager
def _unfused() -> Iterator[None]:
    """PyTorch's own layers counted op by op: without gradients nn.TransformerEncoderLayer and nn.MultiheadAttention
    run one fused op (``aten._transformer_encoder_layer_fwd``, ``aten._native_multi_head_attention``) that no formula
    counts, and a forward pass counted 0 FLOPs on the CPU (on meta they never take it)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
