"""Timings of a training step on cpu or cuda: forward (loss included), backward, optimizer step and the whole
step, after warm-up, as medians with their spread. CUDA is timed with events and synchronised per step."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn


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
    blocks: dict[str, int] = field(default_factory=dict)  # per_block: the block kinds timed and their counts


class _Clock:
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


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform
    return platform.processor() or platform.machine()


def time_step(model: nn.Module, inputs: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer],
              autocast: Callable[[], ContextManager], device: str, *, warmup: int, repeats: int,
              training: bool = True) -> TimingRecord:
    clock = _Clock(device)
    samples: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for i in range(warmup + repeats):
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        clock.sync()
        t0 = clock.mark()
        if training:
            with autocast():
                loss = model(**inputs)
            t1 = clock.mark()
            loss.backward()
            t2 = clock.mark()
            if optimizer is not None:
                optimizer.step()
            t3 = clock.mark()
        else:
            with torch.no_grad(), autocast():
                model(**inputs)
            t1 = t2 = t3 = clock.mark()
        clock.sync()
        if i >= warmup:
            samples["forward"].append(clock.seconds(t0, t1))
            samples["backward"].append(clock.seconds(t1, t2))
            samples["optimizer"].append(clock.seconds(t2, t3))
            samples["step"].append(clock.seconds(t0, t3))
    return TimingRecord(
        forward=Stats.of(samples["forward"]),
        backward=Stats.of(samples["backward"]) if training else None,
        optimizer=Stats.of(samples["optimizer"]) if training and optimizer is not None else None,
        step=Stats.of(samples["step"]), method="full", warmup=warmup, repeats=repeats,
        threads=torch.get_num_threads(), device_name=device_name(device))


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
    """Time the first block of each stack and multiply by the stack's length, as the prior profiler script
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

    clock = _Clock(device)
    totals = {"forward": [0.0] * repeats, "backward": [0.0] * repeats}
    for name, stack in stacks.items():
        args, kwargs = captured[name]
        args = tuple(_fresh(a, training) for a in args)
        kwargs = {k: _fresh(v, training) for k, v in kwargs.items()}
        for i in range(warmup + repeats):
            clock.sync()
            t0 = clock.mark()
            if training:
                with autocast():
                    out = stack[0](*args, **kwargs)
                t1 = clock.mark()
                out.backward(torch.ones_like(out))
            else:
                with torch.no_grad(), autocast():
                    stack[0](*args, **kwargs)
                t1 = clock.mark()
            t2 = clock.mark()
            clock.sync()
            if i >= warmup:
                totals["forward"][i - warmup] += len(stack) * clock.seconds(t0, t1)
                totals["backward"][i - warmup] += len(stack) * clock.seconds(t1, t2)
    opt_samples: list[float] = []
    if training and optimizer is not None:
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        for i in range(warmup + repeats):
            clock.sync()
            t0 = clock.mark()
            optimizer.step()
            t1 = clock.mark()
            clock.sync()
            if i >= warmup:
                opt_samples.append(clock.seconds(t0, t1))
        optimizer.zero_grad(set_to_none=True)
    steps = [f + (b if training else 0.0) + (opt_samples[i] if opt_samples else 0.0)
             for i, (f, b) in enumerate(zip(totals["forward"], totals["backward"]))]
    return TimingRecord(
        forward=Stats.of(totals["forward"]), backward=Stats.of(totals["backward"]) if training else None,
        optimizer=Stats.of(opt_samples) if opt_samples else None, step=Stats.of(steps), method="per_block",
        warmup=warmup, repeats=repeats, threads=torch.get_num_threads(), device_name=device_name(device),
        blocks={name: len(stack) for name, stack in stacks.items()})


def _fresh(value: Any, training: bool) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().clone().requires_grad_(training)
    return value
