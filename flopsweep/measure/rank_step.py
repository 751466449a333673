"""One micro-batch of one rank's training step, as PyTorch runs it: forward through the stage's chunks with the
pipeline's receives and sends between them, backward in reverse, the gradients finished (partial sums all-reduced;
without ZeRO, all-reduced over dp), the optimizer's step; and the wrappers that recompute in backward."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from flopsweep.measure.layout import Layout
from flopsweep.measure.rank_count import LocalSavedActivations, RankCounter
from flopsweep.measure.tp_plans import Stage


class Recomputed(nn.Module):
    """A layer whose forward ``torch.utils.checkpoint`` reruns in backward (``parallel.recompute=full``)."""

    def __init__(self, layer: nn.Module, counter: RankCounter, saved: LocalSavedActivations):
        super().__init__()
        self.layer, self._counter, self._saved = layer, counter, saved

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._saved.keep(args)  # what checkpointing keeps: the layer's input
        return checkpoint(self._run, *args, use_reentrant=False, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        with self._counter.recomputable():
            return self.layer(*args, **kwargs)


class RecomputedAttention(TorchFunctionMode):
    """While entered, attention's core (``F.scaled_dot_product_attention``) runs under ``torch.utils.checkpoint``:
    its scores and softmax are recomputed in backward (``parallel.recompute=selective``, Korthikanti et al.)."""

    def __init__(self, counter: RankCounter, saved: LocalSavedActivations):
        super().__init__()
        self.counter, self.saved = counter, saved

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and torch.is_grad_enabled():
            self.saved.keep(args[:3])

            def core(*a: Any, **k: Any) -> Any:
                with self.counter.recomputable():
                    return func(*a, **k)
            return checkpoint(core, *args, use_reentrant=False, **kwargs)
        return func(*args, **kwargs)


def prime(opt: torch.optim.Optimizer, part: nn.Module) -> None:
    """Make the optimizer's state, as it is from the second step on (uncounted): a step on zero gradients."""
    for p in part.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def sharded(layout: Layout) -> bool:
    """Whether FSDP shards this layout's model over dp (ZeRO 1 to 3 with more than one dp rank)."""
    return layout.zero >= 1 and layout.dp > 1


def _finish_gradients(part: Stage, layout: Layout, mesh: Any) -> None:
    """What follows backward besides FSDP: gradients that are partial sums over tp (the norms' under sequence
    parallelism) all-reduced once, as Megatron-LM does (DTensor would otherwise all-reduce them at each read by the
    optimizer); without ZeRO, every gradient all-reduced over dp (DDP buckets them: the bytes are the same)."""
    for p in part.parameters():
        if isinstance(p.grad, DTensor) and any(isinstance(pl, Partial) for pl in p.grad.placements):
            p.grad = p.grad.redistribute(placements=[Replicate() if isinstance(pl, Partial) else pl
                                                     for pl in p.grad.placements])
    if layout.dp > 1 and not sharded(layout):
        for p in part.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad, group=mesh.get_group("dp"))


class Pipe:
    """The pipeline's point-to-point traffic of a stage: activations received from the previous stage and sent to
    the next in forward, their gradients the other way in backward (``stage ± 1`` around the ring: an interleaved
    stage's later chunks follow the last stage's)."""

    def __init__(self, layout: Layout, mesh: Any, stage: int, shape: tuple[int, ...], dtype: torch.dtype,
                 ended: Callable[[str], None] = lambda phase: None):
        self.group, self.shape, self.dtype = mesh.get_group("pp"), shape, dtype
        self.before, self.after = (stage - 1) % layout.pp, (stage + 1) % layout.pp
        self.ended = ended

    def mark(self, x: torch.Tensor) -> None:
        """A layer's input (or the loss's): its gradient's arrival in backward ends a segment of the backward, one
        layer's (``ended("backward_segment")``)."""
        if x.requires_grad:
            x.register_hook(lambda grad: self.ended("backward_segment"))

    def receive(self) -> torch.Tensor:
        x = torch.empty(self.shape, dtype=self.dtype)
        dist.recv(x, group=self.group, group_src=self.before)
        return x.requires_grad_()

    def send(self, x: torch.Tensor) -> None:
        dist.send(x.detach(), group=self.group, group_dst=self.after)

    def backward(self, received: Optional[torch.Tensor], out: torch.Tensor) -> None:
        if out.dim() == 0:
            out.backward()
        else:
            grad = torch.empty_like(out)
            dist.recv(grad, group=self.group, group_src=self.after)
            out.backward(grad)
        if received is not None:
            dist.send(received.grad, group=self.group, group_dst=self.before)


def run_step(part: Stage, layout: Layout, mesh: Any, stage: int, tokens: torch.Tensor, targets: torch.Tensor,
             counter: RankCounter, saved: LocalSavedActivations, opt: torch.optim.Optimizer,
             dtype: torch.dtype, ended: Callable[[str], None] = lambda phase: None) -> None:
    """One micro-batch through the stage's chunks, its backward in reverse, what follows backward, the optimizer;
    ``ended(phase)`` called as each ends: ``forward``, each segment of the backward (the loss's, then each layer's:
    ``backward_segment``), the ``backward``, ``optimizer``."""
    width = tokens.shape[1] // (layout.tp if layout.sequence_parallel and layout.tp > 1 else 1)
    pipe = Pipe(layout, mesh, stage, (tokens.shape[0], width, part.hidden_size), dtype, ended)
    counter.phase = "forward"
    selective = RecomputedAttention(counter, saved) if layout.recompute == "selective" else contextlib.nullcontext()
    with saved, selective:
        part.begin(tokens.shape[1])
        runs = part(tokens, targets, pipe)
    ended("forward")
    counter.phase = "backward"
    for received, out in reversed(runs):
        pipe.backward(received, out)
    _finish_gradients(part, layout, mesh)
    ended("backward")
    counter.phase = "optimizer"
    opt.step()
    ended("optimizer")
