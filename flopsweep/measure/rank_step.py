"""One micro-batch of one rank's training step, as PyTorch runs it: forward through the stage's chunks with the
pipeline's receives and sends between them, backward in reverse, the gradients finished (partial sums all-reduced;
without ZeRO, all-reduced over dp), the optimizer's step; the wrappers that recompute in backward; context
parallelism's attention; and the process groups beyond the mesh's own that data, context and expert parallelism
use (:class:`RankGroups`)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from flopsweep.measure._torch import all_gather_autograd, flatten_mesh, function_mode_active, mesh_of_group
from flopsweep.measure.experts import EXPERT_DATA_DIM, expert_parameters
from flopsweep.measure.layout import DATA_DIM, EMBEDDING_DIM, Layout
from flopsweep.measure.rank_count import LocalSavedActivations, RankCounter
from flopsweep.measure.tp_plans import Stage


class Recomputed(nn.Module):
    """A layer whose forward ``torch.utils.checkpoint`` reruns in backward (``parallel.recompute=full``), its
    attention as in forward (``attention``, set by :func:`run_step`: the autograd engine runs the rerun without the
    step's function modes)."""

    def __init__(self, layer: nn.Module, counter: RankCounter, saved: LocalSavedActivations):
        super().__init__()
        self.layer, self._counter, self._saved = layer, counter, saved
        self.attention: Optional[TorchFunctionMode] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._saved.keep(args)  # what checkpointing keeps: the layer's input
        return checkpoint(self._run, *args, use_reentrant=False, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        rerun = self.attention is not None and not function_mode_active(self.attention)
        with self._counter.recomputable(), (self.attention if rerun else nullcontext()):
            return self.layer(*args, **kwargs)


class Attention(TorchFunctionMode):
    """While entered, attention (``F.scaled_dot_product_attention``) runs as the layout has it.

    - Context parallelism (``cp_group``): on this rank's part of each sequence against every key and value of it, the
      keys and values all-gathered over the context-parallel group (its backward reduce-scatters their gradients),
      as Llama 3 trained (Dubey et al. 2024, section 3.3.2) and torchtitan's ``allgather`` rotation does. A causal
      mask is kept as the call gave it: the counted pairs are the full Sq x Sk (the MFU convention), the kernel priced
      on its causal curve (load-balanced chunks leave each rank about half of them, as a square causal kernel does).
    - Selective recomputation (``selective``): attention's core under ``torch.utils.checkpoint``, its scores and
      softmax recomputed in backward (Korthikanti et al.); the gathered keys and values are kept, not gathered again.

    - A value head unlike the query's (multi-head latent attention: DeepSeek's 192-wide queries and keys, 128-wide
      values): no flash kernel takes it, and a GPU runs the memory-efficient one (PyTorch's choice on CUDA), not the
      CPU's decomposition that would keep every score; its cost is the same formula's.

    A layer that full recomputation reruns in backward enters it again (:class:`Recomputed`)."""

    def __init__(self, counter: RankCounter, saved: LocalSavedActivations, selective: bool, cp_group: Any = None):
        super().__init__()
        self.counter, self.saved, self.selective, self.cp_group = counter, saved, selective, cp_group

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        if self.cp_group is not None:
            query, key, value, *rest = args
            key, value = (all_gather_autograd(t, t.dim() - 2, self.cp_group) for t in (key, value))
            args = (query, key, value, *rest)
        if args[2].shape[-1] != args[0].shape[-1]:
            func = _efficient_attention
        if self.selective and torch.is_grad_enabled():
            self.saved.keep(args[:3])

            def core(*a: Any, **k: Any) -> Any:
                with self.counter.recomputable():
                    return func(*a, **k)
            return checkpoint(core, *args, use_reentrant=False, **kwargs)
        return func(*args, **kwargs)


def _efficient_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                         dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                         enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` through the memory-efficient kernel (what CUDA runs where the value's head
    is not the query's); fewer key and value heads are repeated first, as SDPA's ``enable_gqa`` does."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        key, value = (t.repeat_interleave(query.shape[-3] // t.shape[-3], dim=-3) for t in (key, value))
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, grad, dropout_p,
                                                                  is_causal, scale=scale)[0]


@dataclass
class RankGroups:
    """The groups a rank's step uses besides the mesh's tp and pp: ``data``, the mesh of the ranks whose gradients
    are reduced together (FSDP shards over them): dp's, or under context parallelism dp x cp's flattened
    (``layout.DATA_DIM``, from the same root as tp's, as FSDP needs to shard tensor-parallel weights); ``cp``,
    attention's gathers (a group of its own: with dp = 1 the flattened data group is the mesh's cp group, and the
    count tells traffic apart by group); ``ep``, the expert-parallel all-to-alls, the first ``ep`` of the data
    ranks; ``edp``, the mesh of the data ranks that hold the same experts (of one rank where ep = dp x cp: FSDP
    still casts them for mixed precision, and a group of one moves nothing); ``embedding``, under a pipeline, the
    first stage's rank and the last's, which hold the two copies of a tied table (Megatron-LM's embedding group)."""

    data: Any
    cp: Any = None
    ep: Any = None
    edp: Any = None
    embedding: Any = None

    @classmethod
    def of(cls, mesh: Any, layout: Layout) -> "RankGroups":
        data = mesh["dp"] if layout.cp == 1 else flatten_mesh(mesh["dp", "cp"], DATA_DIM)
        cp = dist.new_group(mesh["cp"].mesh.flatten().tolist()) if layout.cp > 1 else None
        ep = edp = None
        if layout.ep > 1:
            ranks = data.mesh.flatten().tolist()
            ep = dist.new_group(ranks[:layout.ep])
            edp = mesh_of_group(dist.new_group(ranks[::layout.ep]), ranks[::layout.ep], EXPERT_DATA_DIM)
        embedding = None
        if layout.pp > 1:  # the first stage's and the last's: a tied table's two copies
            stages = mesh["pp"].mesh.flatten().tolist()
            embedding = dist.new_group([stages[0], stages[-1]])
        return cls(data, cp, ep, edp, embedding)

    def names(self, layout: Layout) -> dict[str, tuple[str, int]]:
        """Each group's name and what it is (mesh dimension, size), for the rank counter: over the mesh's own
        (the data group may be the mesh's cp or dp group: named for what it carries)."""
        named = {self.data.get_group().group_name: (DATA_DIM if layout.cp > 1 else "dp", layout.data_parallel)}
        if self.cp is not None:
            named[self.cp.group_name] = ("cp", layout.cp)
        if self.ep is not None:
            named[self.ep.group_name] = ("ep", layout.ep)
        if self.edp is not None:
            named[self.edp.get_group().group_name] = (EXPERT_DATA_DIM, layout.data_parallel // layout.ep)
        if self.embedding is not None:
            named[self.embedding.group_name] = (EMBEDDING_DIM, 2)
        return named


def prime(opt: torch.optim.Optimizer, part: nn.Module) -> None:
    """Make the optimizer's state, as it is from the second step on (uncounted): a step on zero gradients."""
    for p in part.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def sharded(layout: Layout) -> bool:
    """Whether FSDP shards this layout's model over dp (x cp) (ZeRO 1 to 3 with more than one such rank)."""
    return layout.zero >= 1 and layout.data_parallel > 1


def _finish_gradients(part: Stage, layout: Layout, groups: RankGroups) -> None:
    """What follows backward besides FSDP: gradients that are partial sums over tp (the norms' under sequence
    parallelism) all-reduced once, as Megatron-LM does (DTensor would otherwise all-reduce them at each read by the
    optimizer); without ZeRO, every gradient all-reduced over dp x cp (DDP buckets them: the bytes are the same), a
    routed expert's over the ranks that hold it."""
    for p in part.parameters():
        if isinstance(p.grad, DTensor) and any(isinstance(pl, Partial) for pl in p.grad.placements):
            p.grad = p.grad.redistribute(placements=[Replicate() if isinstance(pl, Partial) else pl
                                                     for pl in p.grad.placements])
    if layout.data_parallel > 1 and not sharded(layout):
        experts = expert_parameters(part)
        for p in part.parameters():
            group = (groups.edp if id(p) in experts else groups.data).get_group()
            if p.grad is not None and group.size() > 1:
                dist.all_reduce(p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad, group=group)


def _sum_tied_tables(part: Stage, groups: RankGroups) -> None:
    """A tied embedding split over pipeline stages (the table on the first, the head on the last, each a copy): their
    gradients summed between the two before the optimizer steps, so that the copies stay equal (Megatron-LM's
    all-reduce over its embedding group, once a step, on the critical path)."""
    if groups.embedding is None or not part.tied or (part.first and part.last):
        return
    weight = part.embedding.weight if part.first else part.lm_head.weight
    grad = weight.grad
    if isinstance(grad, DTensor):  # the rank's shard of it, as the optimizer reads it (DTensor's embedding backward
        grad = grad.redistribute(placements=weight.placements).to_local()  # leaves it whole: a local slice)
    if grad is not None:
        dist.all_reduce(grad, group=groups.embedding)


class Pipe:
    """The pipeline's point-to-point traffic of a stage: activations received from the previous stage and sent to
    the next in forward, their gradients the other way in backward (``stage ± 1`` around the ring: an interleaved
    stage's later chunks follow the last stage's)."""

    def __init__(self, layout: Layout, mesh: Any, stage: int, shape: tuple[int, ...], dtype: torch.dtype,
                 ended: Callable[[str], None] = lambda phase: None):
        self.group, self.shape, self.dtype = mesh.get_group("pp"), shape, dtype
        self.before, self.after = (stage - 1) % layout.pp, (stage + 1) % layout.pp
        self.ended = ended
        self._hooks: list[Any] = []

    def mark(self, x: torch.Tensor) -> None:
        """A layer's input (or the loss's): its gradient's arrival in backward ends a segment of the backward, one
        layer's (``ended("backward_segment")``)."""
        if x.requires_grad:
            self._hooks.append(x.register_hook(lambda grad: self.ended("backward_segment")))

    def close(self) -> None:
        """The step is over: its hooks go. A tensor that outlives the step (held where PyTorch keeps it) would
        otherwise keep this pipe, its ``ended`` and what that holds (the memory tracker, the rank's model): some 4 MiB
        a count, over a layout search's hundreds of counts in one worker."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

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


def run_step(part: Stage, layout: Layout, mesh: Any, groups: RankGroups, stage: int, tokens: torch.Tensor,
             targets: torch.Tensor, counter: RankCounter, saved: LocalSavedActivations, opt: torch.optim.Optimizer,
             dtype: torch.dtype, ended: Callable[[str], None] = lambda phase: None) -> None:
    """One micro-batch through the stage's chunks, its backward in reverse, what follows backward, the optimizer;
    ``ended(phase)`` called as each ends: ``forward``, each segment of the backward (the loss's, then each layer's:
    ``backward_segment``), the ``backward``, ``optimizer``."""
    width = tokens.shape[1] // (layout.tp if layout.sequence_parallel and layout.tp > 1 else 1)
    pipe = Pipe(layout, mesh, stage, (tokens.shape[0], width, part.hidden_size), dtype, ended)
    try:
        counter.phase = "forward"
        attention = Attention(counter, saved, layout.recompute == "selective", groups.cp)
        for module in part.modules():
            if isinstance(module, Recomputed):
                module.attention = attention
        with saved, attention:
            part.begin(tokens.shape[1])
            runs = part(tokens, targets, pipe)
        ended("forward")
        counter.phase = "backward"
        for received, out in reversed(runs):
            pipe.backward(received, out)
        _finish_gradients(part, layout, groups)
        ended("backward")
        counter.phase = "optimizer"
        _sum_tied_tables(part, groups)
        opt.step()
        ended("optimizer")
    finally:
        pipe.close()  # whatever the step did: nothing it made stays held by its hooks
