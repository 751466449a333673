"""Timings of a training step on cpu or cuda: forward (loss included), backward, optimizer step and the whole
step, after warm-up, as medians with their spread, through one timing loop (:func:`repeat`). CUDA is timed with
events and synchronised per step."""

from __future__ import annotations

import contextlib
import statistics
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence

import torch
from torch import nn

from flopsweep.core.hardware import cpu_model
from flopsweep.measure._torch import reset_compiler


@dataclass(frozen=True)
class Stats:
    median: float
    iqr: float
    minimum: float
    maximum: float
    cv: float  # standard deviation / mean

    @classmethod
    def of(cls, samples: list[float]) -> "Stats":
        if len(samples) >= 2:
            q1, _, q3 = statistics.quantiles(samples, n=4)
            cv = statistics.stdev(samples) / statistics.fmean(samples) if statistics.fmean(samples) else 0.0
        else:
            q1 = q3 = samples[0]
            cv = 0.0
        return cls(statistics.median(samples), q3 - q1, min(samples), max(samples), cv)


@dataclass(frozen=True)
class TimingRecord:
    forward: Stats
    backward: Optional[Stats]
    optimizer: Optional[Stats]
    step: Stats
    method: str                # "full" or "per_block"
    warmup: int
    repeats: int
    threads: int
    device_name: str
    device: str                # the device timed: cpu, cuda:0
    blocks: dict[str, int] = field(default_factory=dict)  # per_block: the block kinds timed and their counts
    load_average: Optional[float] = None  # the machine's over the minute before the timing (None: not known here)
    cores: Optional[int] = None
    other_cores: Optional[float] = None   # the cores other processes kept busy while it timed, on average


class Clock:
    """Marks in time on the job's device: CUDA events on a GPU (read after a sync), ``perf_counter`` on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0 if self.cuda else end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


# who hears of each timed run (the command's progress line): (runs done, runs in all); measurement never prints
TICK: ContextVar[Optional[Callable[[int, int, str], None]]] = ContextVar("flopsweep_timing_tick", default=None)


def repeat(clock: Clock, warmup: int, repeats: int, run: Callable[[], Sequence[Any]],
           after: Optional[Callable[[bool, Sequence[Any]], None]] = None, what: str = "the step") -> list[list[float]]:
    """The one timing loop: ``run`` ``warmup + repeats`` times, each between two syncs of the device. ``run`` returns
    the clock's marks at the boundaries of its phases (n + 1 marks for n phases); ``after(kept, marks)`` is called
    after each run (``kept``: not a warm-up), and :data:`TICK`'s listener, if one is set, with ``what`` is timed (a
    job with several loops says which). Returns, for each kept run, its phases' seconds."""
    kept_runs = []
    tick = TICK.get()
    for i in range(warmup + repeats):
        clock.sync()
        marks = run()
        clock.sync()
        if tick is not None:
            tick(i + 1, warmup + repeats, what)
        if after is not None:
            after(i >= warmup, marks)
        if i >= warmup:
            kept_runs.append([clock.seconds(a, b) for a, b in zip(marks, marks[1:])])
    return kept_runs


@contextlib.contextmanager
def weights_kept(optimizer: Optional[torch.optim.Optimizer]) -> Iterator[None]:
    """The optimizer's learning rates at zero while its steps are timed: every op of the update still runs, but the
    weights stay as built. Timed steps train on one batch over and over, so a model that learns it drives its softmax's
    losing probabilities to denormal floats, which an x86 core computes many times slower (GPT-2's backward went from
    2 s to 21 s in eight steps on a 2-core Xeon); flushing them to zero reaches only the calling thread, not the
    intra-op pool's. Real training on real data never sits there."""
    saved = [group["lr"] for group in optimizer.param_groups] if optimizer is not None else []
    for group in optimizer.param_groups if optimizer is not None else []:
        group["lr"] = group["lr"] * 0 if isinstance(group["lr"], torch.Tensor) else 0.0
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups if optimizer is not None else [], saved):
            group["lr"] = lr


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model (``AMD EPYC 7B13``, not ``x86_64``: a fingerprint tells two CPUs apart)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def time_step(model: nn.Module, inputs: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer],
              autocast: Callable[[], ContextManager], device: str, *, warmup: int, repeats: int,
              training: bool = True) -> TimingRecord:
    clock = Clock(device)

    def step() -> list[Any]:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        t0 = clock.mark()
        if not training:
            with torch.no_grad(), autocast():
                model(**inputs)
            t1 = clock.mark()
            return [t0, t1, t1, t1]
        with autocast():
            loss = model(**inputs)
        t1 = clock.mark()
        loss.backward()
        t2 = clock.mark()
        if optimizer is not None:
            optimizer.step()
        return [t0, t1, t2, clock.mark()]

    with weights_kept(optimizer):
        runs = repeat(clock, warmup, repeats, step)
    forward, backward, step_s = ([run[k] for run in runs] for k in range(3))
    return TimingRecord(
        forward=Stats.of(forward), backward=Stats.of(backward) if training else None,
        optimizer=Stats.of(step_s) if training and optimizer is not None else None,
        step=Stats.of([sum(run) for run in runs]), method="full", warmup=warmup, repeats=repeats,
        threads=torch.get_num_threads(), device_name=device_name(device), device=device)


def compiled(model: nn.Module, inputs: dict[str, torch.Tensor], autocast: Callable[[], ContextManager], device: str,
             *, training: bool = True) -> tuple[nn.Module, float]:
    """``model`` under ``torch.compile`` (its forward, and so its backward), and the seconds its first step took:
    the compile, timed apart from the steps after it. A model that does not compile raises here."""
    clock = Clock(device)
    reset_compiler()
    model_c = torch.compile(model)
    clock.sync()
    start = time.perf_counter()
    if training:
        with autocast():
            loss = model_c(**inputs)
        loss.backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad(), autocast():
            model_c(**inputs)
    clock.sync()
    return model_c, time.perf_counter() - start


def block_lists(model: nn.Module) -> dict[str, nn.ModuleList]:
    """The stacks of repeated blocks: outermost ``nn.ModuleList``s of modules of one type."""
    found: dict[str, nn.ModuleList] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and \
                len({type(m) for m in module}) == 1 and not any(name.startswith(f"{k}.") for k in found):
            found[name] = module
    return found


def time_per_block(model: nn.Module, inputs: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer],
                   autocast: Callable[[], ContextManager], device: str, *, warmup: int, repeats: int,
                   training: bool = True) -> TimingRecord:
    """Time the first block of each stack and multiply by the stack's length, as the transformer profiler script
    did: cheaper for deep models, but it leaves out embeddings, head and loss. The optimizer step is timed
    whole, on zero gradients."""
    stacks = block_lists(model)
    captured: dict[str, tuple[tuple, dict]] = {}
    hooks = [stack[0].register_forward_pre_hook(
        lambda m, args, kwargs, name=name: captured.setdefault(name, (args, kwargs)) and None, with_kwargs=True)
        for name, stack in stacks.items()]
    with torch.no_grad(), autocast():
        model(**inputs)
    for hook in hooks:
        hook.remove()

    clock = Clock(device)
    forward, backward = [0.0] * repeats, [0.0] * repeats
    for name, stack in stacks.items():
        args, kwargs = captured[name]
        args = tuple(_fresh(a, training) for a in args)
        kwargs = {k: _fresh(v, training) for k, v in kwargs.items()}

        def block(block=stack[0]) -> list[Any]:
            t0 = clock.mark()
            if not training:
                with torch.no_grad(), autocast():
                    block(*args, **kwargs)
                t1 = clock.mark()
                return [t0, t1, t1]
            with autocast():
                out = block(*args, **kwargs)
            t1 = clock.mark()
            out.backward(torch.ones_like(out))
            return [t0, t1, clock.mark()]

        for i, (f, b) in enumerate(repeat(clock, warmup, repeats, block, what=f"{name}.0 (one of {len(stack)} alike)")):
            forward[i] += len(stack) * f
            backward[i] += len(stack) * b
    optimizer_s: list[float] = []
    if training and optimizer is not None:
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)

        def optimizer_step() -> list[Any]:
            t0 = clock.mark()
            optimizer.step()
            return [t0, clock.mark()]

        optimizer_s = [run[0] for run in repeat(clock, warmup, repeats, optimizer_step,
                                                what="the optimizer's step")]
        optimizer.zero_grad(set_to_none=True)
    steps = [f + (b if training else 0.0) + (optimizer_s[i] if optimizer_s else 0.0)
             for i, (f, b) in enumerate(zip(forward, backward))]
    return TimingRecord(
        forward=Stats.of(forward), backward=Stats.of(backward) if training else None,
        optimizer=Stats.of(optimizer_s) if optimizer_s else None, step=Stats.of(steps), method="per_block",
        warmup=warmup, repeats=repeats, threads=torch.get_num_threads(), device_name=device_name(device), device=device,
        blocks={name: len(stack) for name, stack in stacks.items()})


def _fresh(value: Any, training: bool) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().clone().requires_grad_(training)
    return value
