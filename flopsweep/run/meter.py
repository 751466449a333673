"""Measure a step of your own training loop: ``flopsweep.meter(model, optimizer)``.

    meter = flopsweep.meter(model, optimizer, batch_size=8, seq_len=512)
    with meter:                      # the first step entered is counted: FLOPs, sizes, the module profile
        loss = model(x, y); loss.backward(); optimizer.step(); optimizer.zero_grad()
    for _ in range(5):
        with meter:                  # every later one is timed, without the counting's overhead
            ...one step...
    meter.result()                   # the record a sweep job writes (flopsweep.core.result.Result)
    meter.log(experiment="my-loop")  # logged to MLflow like a sweep job

Phases, as in a sweep job: ``backward`` is whatever autograd's engine runs; ``optimizer`` is
``optimizer.step()`` and whatever runs outside the model after the first backward (gradient clipping,
unscaling); ``forward`` is the rest (the model's forward pass and a loss computed outside it). The optimizer's
FLOPs are those of the step counted: a sweep job counts one as every later step runs it, its state made (SGD's
momentum buffer is a copy at the first step, three FLOPs a weight after), so meter a step after the loop's first
to count as a job does.
Timed steps: ``forward`` is the model's forward call, ``backward`` from the first backward node of the model's
output to the end of the backward pass, ``optimizer`` the ``optimizer.step()`` call, ``step`` the whole block;
with ``profile`` (the default), hooks time every module's forward too, a few microseconds per module call.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from flopsweep.core import metrics as M
from flopsweep.core.errors import require, require_int
from flopsweep.core.result import Result, TimingInfo
from flopsweep.measure._torch import at_backward_end, node_sequence_nr, tree_leaves
from flopsweep.measure.count import Counter, StepCount
from flopsweep.measure.formulas import CountOptions
from flopsweep.measure.settings import MeasureConf
from flopsweep.measure.size import SavedActivations, measure_size
from flopsweep.measure.timing import Clock, Stats, TimingRecord, device_name
from flopsweep.measure.tracker import ModuleTracker
from flopsweep.models.base import BatchShape
from flopsweep.run.assemble import FLOPS_CONVENTION, collect_metrics, optimizer_mean, step_breakdown


class Meter:
    """Counts the first step run inside it and times the later ones; see the module's docstring."""

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
                 batch_size: int = 1, seq_len: Optional[int] = None, name: Optional[str] = None,
                 peak_tflops: Optional[float] = None, causal_half: bool = False, profile: bool = True):
        self.model, self.optimizer = model, optimizer
        require_int(batch_size, "batch_size")  # the figures a second divide by them (0 read as 0 tokens a second)
        require(seq_len is None or (isinstance(seq_len, int) and seq_len >= 1), "seq_len", seq_len,
                "must be an integer >= 1, or None (not a sequence model)")
        self.batch = BatchShape(batch_size, seq_len)
        self.name, self.peak_tflops, self.causal_half, self.profile = name, peak_tflops, causal_half, profile
        param = next(model.parameters(), None)
        self.device = str(param.device) if param is not None else "cpu"
        self.dtype = str(param.dtype).removeprefix("torch.") if param is not None else "float32"
        self.count: Optional[StepCount] = None
        self.saved: Optional[SavedActivations] = None
        self.samples: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
        self._stack: Optional[contextlib.ExitStack] = None
        self._modules: Optional[ModuleTracker] = None  # per-module forward latency over the timed steps
        self._marks: dict[str, Any] = {}

    # ---- the step
    def __enter__(self) -> "Meter":
        self._stack = contextlib.ExitStack()
        if self.count is None:
            self._enter_counted(self._stack)
        else:
            self._enter_timed(self._stack)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._stack = self._stack, None
        if self.count is None:
            counter = self._counter
            stack.close()
            if exc_type is None:
                self.count = counter.result(self._seen_backward, self.optimizer is not None)
        else:
            self._clock.sync()
            self._marks["end"] = self._clock.mark()
            self._clock.sync()
            stack.close()
            if exc_type is None:
                self._record_times()
            if self._modules is not None and "forward_post" in self._marks:
                self._modules.end_pass(self._marks["forward_pre"], self._marks["forward_post"], keep=exc_type is None)

    def _enter_counted(self, stack: contextlib.ExitStack) -> None:
        self._in_forward = self._in_step = self._seen_backward = False
        tracker = stack.enter_context(ModuleTracker(self.model))
        self.saved = SavedActivations(self.model)
        self._hooks(stack, on_forward=self._forward_flag, on_step=self._step_flag)
        self._counter = stack.enter_context(Counter(tracker, CountOptions(self.causal_half), self._phase))
        stack.enter_context(self.saved)

    def _phase(self) -> str:
        if self._in_step:
            return "optimizer"
        if node_sequence_nr() is not None:
            self._seen_backward = True
            return "backward"
        return "forward" if self._in_forward or not self._seen_backward else "optimizer"

    def _forward_flag(self, when: str, output: Any = None) -> None:
        self._in_forward = when == "pre"

    def _step_flag(self, when: str) -> None:
        self._in_step = when == "pre"

    def _enter_timed(self, stack: contextlib.ExitStack) -> None:
        self._clock, self._marks = Clock(self.device), {}
        if self.profile:
            if self._modules is None:
                self._modules = ModuleTracker(self.model, self._clock)
            stack.enter_context(self._modules)
        self._hooks(stack, on_forward=self._forward_mark, on_step=self._step_mark)
        self._clock.sync()
        self._marks["start"] = self._clock.mark()

    def _forward_mark(self, when: str, output: Any = None) -> None:
        self._marks.setdefault(f"forward_{when}", self._clock.mark())
        if when == "post":
            node = next((t.grad_fn for t in tree_leaves(output)
                         if isinstance(t, torch.Tensor) and t.grad_fn is not None), None)
            if node is not None:
                node.register_prehook(self._backward_starts)

    def _backward_starts(self, grad_outputs: Any) -> None:
        if "backward_pre" not in self._marks:
            self._marks["backward_pre"] = self._clock.mark()
            at_backward_end(lambda: self._marks.setdefault("backward_post", self._clock.mark()))

    def _step_mark(self, when: str) -> None:
        self._marks.setdefault(f"optimizer_{when}", self._clock.mark())

    def _hooks(self, stack: contextlib.ExitStack, on_forward, on_step) -> None:
        handles = [self.model.register_forward_pre_hook(lambda m, a: on_forward("pre")),
                   self.model.register_forward_hook(lambda m, a, out: on_forward("post", out))]
        if self.optimizer is not None:
            handles += [self.optimizer.register_step_pre_hook(lambda o, a, k: on_step("pre")),
                        self.optimizer.register_step_post_hook(lambda o, a, k: on_step("post"))]
        for handle in handles:
            stack.callback(handle.remove)

    def _record_times(self) -> None:
        marks, seconds = self._marks, self._clock.seconds
        self.samples["step"].append(seconds(marks["start"], marks["end"]))
        for phase in ("forward", "backward", "optimizer"):
            if f"{phase}_pre" in marks and f"{phase}_post" in marks:
                self.samples[phase].append(seconds(marks[f"{phase}_pre"], marks[f"{phase}_post"]))

    # ---- the record
    def result(self) -> Result:
        """The record a sweep job writes: counts and sizes from the counted step, medians of the timed ones."""
        if self.count is None:
            raise RuntimeError("flopsweep.meter: no step was run inside `with meter:` yet")
        training = self.count.backward is not None
        size = measure_size(self.model, {}, self.optimizer, contextlib.nullcontext, training=training,
                            activations=self.saved.bytes)
        timing = self._timing(training)
        metrics = collect_metrics(self.batch, self.count, size, timing, training=training, dtype=self.dtype,
                                  peak_tflops=self.peak_tflops)
        mean = optimizer_mean(self.count, getattr(self.optimizer, "periodic_ops", {}))
        if mean is not None:
            metrics[M.FLOPS_OPTIMIZER_MEAN] = mean
        latency = self._modules.means() if self._modules is not None and self._modules.passes else None
        breakdown = step_breakdown(self.count, MeasureConf.module_depth, self.model, self.profile, latency)
        config = {"model": {"name": self.name or type(self.model).__name__, "family": "user"},
                  "batch": {"size": self.batch.size, "seq_len": self.batch.seq_len},
                  "device": {"type": self.device.split(":")[0]}, "dtype": {"name": self.dtype},
                  "optimizer": {"name": type(self.optimizer).__name__.lower() if self.optimizer else None},
                  "source": "flopsweep.meter"}
        info: dict[str, Any] = {"device": self.device, "causal_attention": "half" if self.causal_half else "full",
                                "flops_convention": FLOPS_CONVENTION}
        result = Result("ok", None, config, metrics, breakdown, info)
        if timing is not None:
            result.timing = TimingInfo(timing.method, timing.repeats, timing.threads, timing.device_name)
        return result

    def _timing(self, training: bool) -> Optional[TimingRecord]:
        steps = self.samples["step"]
        if not steps or self.device == "meta":
            return None
        stats = {phase: Stats.of(values) if len(values) == len(steps) else None
                 for phase, values in self.samples.items()}
        return TimingRecord(forward=stats["forward"] or Stats.of([0.0]),
                            backward=stats["backward"] if training else None,
                            optimizer=stats["optimizer"], step=stats["step"], method="loop", warmup=0,
                            repeats=len(steps), threads=torch.get_num_threads(), device_name=device_name(self.device),
                            device=self.device)

    def log(self, experiment: str = "flopsweep", uri: Optional[str] = None, folder: Optional[Path] = None) -> str:
        """Write the job folder (``folder``, default ``outputs/loop/<time>_<name>``) and log it to MLflow (``uri``,
        default ``MLFLOW_TRACKING_URI`` or the local store under ``outputs/``). Returns the run id."""
        from flopsweep.sinks.identity import fingerprint
        from flopsweep.sinks.record import record
        from flopsweep.sinks.target import target_at

        result = self.result()
        result.info["fingerprint"] = fingerprint(result.config, self.device, result.device_name)
        folder = folder or Path("outputs") / "loop" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{self.name or 'model'}"
        logged = record(result, folder, target_at(uri, None, experiment), {"source": "flopsweep.meter"})
        if not logged.logged:
            raise RuntimeError(f"flopsweep.meter: not logged to MLflow ({logged.error}); the result is in {folder}")
        return logged.run_id

