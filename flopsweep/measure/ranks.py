"""A parallel layout counted rank by rank with PyTorch's own parallelism, in one process, on a fake process group.

For each pipeline position that differs (the first stage, with the embedding, and the last, with the head and loss),
one rank's model is built as PyTorch runs it: a fake process group of ``dp*tp*pp*cp`` ranks, a device mesh
(``pp, dp, cp, tp``), the stage's layers only, tensor (and sequence) parallelism by ``parallelize_module``
(``measure.tp_plans``), ``torch.utils.checkpoint`` for recomputation, FSDP2's ``fully_shard`` over ``dp`` for ZeRO,
its parameters fake tensors (shapes, no data). One micro-batch then runs forward, backward and an AdamW step, with
the pipeline's sends and receives between stages, counted by :class:`~flopsweep.measure.rank_count.RankCounter` and
PyTorch's memory tracker. The conventions are in docs/parallel.md.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.parallel import loss_parallel

from flopsweep.core.errors import require
from flopsweep.measure._torch import fake_store, fake_tensor_mode, memory_tracker, peak_since
from flopsweep.measure.count import PhaseCount
from flopsweep.measure.experts import ExpertsShard
from flopsweep.measure.formulas import CountOptions
from flopsweep.measure.layout import MESH_DIMS, Layout
from flopsweep.measure.ops import OpTrace
from flopsweep.measure.rank_count import CollectiveKey, CollectiveTally, LocalSavedActivations, RankCounter
from flopsweep.measure.rank_memory import RankMemory
from flopsweep.measure.rank_sample import alike, grown, samples
from flopsweep.measure.rank_step import RankGroups, Recomputed, prime, run_step, sharded
from flopsweep.measure.tp_plans import Stage, layers_of, make_stage


@dataclass
class RankCount:
    """One rank counted: its local FLOPs by phase (``forward``, ``backward``, ``recompute``, ``optimizer``) for one
    micro-batch (the optimizer's once a step), its local ops in order (the same phases), its collectives, its
    memory."""

    stage: int
    rank: int
    layers: int
    params: int                                         # elements of the parameters this rank holds
    flops: dict[str, PhaseCount]
    collectives: dict[CollectiveKey, CollectiveTally]
    memory: RankMemory
    uncounted: dict[str, int] = field(default_factory=dict)
    trace: OpTrace = field(default_factory=OpTrace)
    model_layers: int = 0                               # the whole model's
    sampled: Optional[tuple[int, int]] = None           # the layers of the two samples it was counted from

    def step_flops(self, micro_batches: int, hardware: bool = False) -> int:
        """Matmul FLOPs of one optimizer step: forward and backward per micro-batch; recomputation too if
        ``hardware`` (model FLOPs leave it out)."""
        phases = ("forward", "backward", "recompute") if hardware else ("forward", "backward")
        return micro_batches * sum(self.flops[p].matmul for p in phases)


@dataclass
class LayoutCount:
    layout: Layout
    batch_size: int
    seq_len: int
    ranks: list[RankCount]  # the first pipeline stage's rank 0, then the last stage's first rank (pp > 1)

    @property
    def micro_batches(self) -> int:
        return self.layout.micro_batches(self.batch_size)

    def global_flops(self, hardware: bool = False) -> int:
        """Matmul FLOPs of one step over every GPU (recomputation too if ``hardware``): the counted stages', a
        middle stage's layers at the first stage's rate a layer (its embedding is a look-up), times tp, dp and the
        micro-batches (and cp: each of its ranks computes its part of every sequence)."""
        first, last = self.ranks[0], self.ranks[-1]
        per_micro = [r.step_flops(1, hardware) for r in self.ranks]
        total = sum(per_micro)
        middle = first.model_layers - first.layers - (last.layers if len(self.ranks) > 1 else 0)
        if middle > 0:
            total += per_micro[0] * middle // first.layers
        return total * self.layout.tp * self.layout.data_parallel * self.micro_batches

    @property
    def busiest(self) -> RankCount:
        """The rank with the most memory at its peak (ties: the most FLOPs)."""
        return max(self.ranks, key=lambda r: (r.memory.peak_in_flight_bytes, r.step_flops(self.micro_batches, True)))


@dataclass(frozen=True)
class Workload:
    """What one optimizer step trains: ``batch_size`` sequences (the global batch) of ``seq_len`` tokens; the
    weights stored in ``dtype`` (so their gradients and AdamW's state); with ZeRO, ``compute_dtype`` the dtype FSDP
    gathers them in and the activations take (its ``MixedPrecisionPolicy``; gradients reduced in ``dtype``)."""

    batch_size: int
    seq_len: int
    dtype: torch.dtype = torch.float32
    compute_dtype: Optional[torch.dtype] = None
    causal_half: bool = False  # count only the unmasked half of causal attention

    @property
    def activation_dtype(self) -> torch.dtype:
        return self.compute_dtype or self.dtype


def param_groups(params: Any) -> list[dict[str, Any]]:
    """A rank's parameters as optimizer groups: DTensors (tensor-parallel shards) and plain tensors (what no plan
    touched) apart, since a foreach update cannot mix the two (``_foreach_mul_ got mixed torch.Tensor and DTensor``)."""
    params = list(params)
    groups = [[p for p in params if isinstance(p, DTensor)], [p for p in params if not isinstance(p, DTensor)]]
    return [{"params": group} for group in groups if group]


def adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(params))


def count_layout(build: Callable[[], nn.Module], layout: Layout, work: Workload,
                 optimizer: Callable[[Any], torch.optim.Optimizer] = adamw, sample: bool = True) -> LayoutCount:
    """Count ``layout`` for the model ``build()`` makes (called under ``torch.device("meta")``, once per pipeline
    position counted) training ``work``. ``sample``: a stage of identical layers counted from two small samples of
    its layers (:mod:`~flopsweep.measure.rank_sample`), as it counts whole."""
    layout.check()
    layout.check_counted(mixed_precision=work.compute_dtype not in (None, work.dtype), causal_half=work.causal_half)
    with torch.device("meta"):
        template = build().to(work.dtype)  # built once: each rank counted copies the stage it holds
    layers = layers_of(template)
    require(layout.pp * layout.vpp <= len(layers), "parallel.pp", layout.pp,
            f"leaves a pipeline stage without a layer: the model has {len(layers)}")
    ranks = []
    for stage in sorted({0, layout.pp - 1}):
        chunks = layout.stage_layers(len(layers), stage)
        plan = samples(chunks) if sample and alike([layers[i] for chunk in chunks for i in chunk]) else None
        rank = None
        if plan is not None:
            small, large, more = plan
            counted = [_in_own_thread(_count_rank, template, layout, stage, part, work, optimizer)
                       for part in (small, large)]
            rank = grown(*counted, more)
            if rank is not None:
                rank.sampled = (len(small[0]), len(large[0]))
        ranks.append(rank or _in_own_thread(_count_rank, template, layout, stage, chunks, work, optimizer))
    if layout.dualpipe:  # each rank holds stage i and pp - 1 - i: the first and the last stage, the counted ranks
        first, last = ranks
        first.memory, last.memory = (replace(first.memory, partner_states=last.memory.states_bytes),
                                     replace(last.memory, partner_states=first.memory.states_bytes))
    return LayoutCount(layout, work.batch_size, work.seq_len, ranks)


def _in_own_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own. A device mesh equals any other of the same shape and names made in the
    same thread (its hash leaves its process groups out), so DTensor's caches would give a fresh fake world the
    meshes, and process groups, of the last one; a mesh made in another thread is another mesh."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = err
    thread = threading.Thread(target=run, name="flopsweep-rank")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextlib.contextmanager
def fake_world(layout: Layout, rank: int) -> Iterator[Any]:
    """A fake process group of ``layout.world_size`` ranks seen as ``rank``, and its device mesh; torn down after,
    with the ``sys.excepthook`` each one wraps in its own ``[rankN]:`` prefix (a later traceback in the process had
    18 of them a line)."""
    if dist.is_initialized():
        raise RuntimeError("a default process group exists already: ranks are counted in a process without one")
    hook = sys.excepthook
    dist.init_process_group("fake", store=fake_store(), rank=rank, world_size=layout.world_size)
    try:
        yield init_device_mesh("cpu", layout.mesh_shape, mesh_dim_names=MESH_DIMS)
    finally:
        dist.destroy_process_group()
        sys.excepthook = hook


def _count_rank(template: nn.Module, layout: Layout, stage: int, chunks: list[list[int]], work: Workload,
                optimizer: Callable[[Any], torch.optim.Optimizer]) -> RankCount:
    """Pipeline stage ``stage``'s first rank counted holding the layers ``chunks`` (lists of layer indices), a copy
    of them (and of the embedding, norm and head it holds) taken from ``template``, the model built on meta."""
    rank = stage * (layout.world_size // layout.pp)
    with fake_world(layout, rank) as mesh:
        groups = {mesh.get_group(dim).group_name: (dim, getattr(layout, dim)) for dim in MESH_DIMS}
        rank_groups = RankGroups.of(mesh, layout)
        groups.update(rank_groups.names(layout))
        counter = RankCounter(groups, CountOptions(causal_half=work.causal_half))
        layers = len(layers_of(template))
        # a deep copy keeps tied parameters tied; the template's other layers are never copied
        part = copy.deepcopy(make_stage(template, chunks, first=stage == 0, last=stage == layout.pp - 1))
        saved = LocalSavedActivations(part)
        _parallelize(part, layout, mesh, rank_groups, counter, saved, work)
        with fake_tensor_mode():
            _materialize(part)
            opt = optimizer(part.parameters())
            prime(opt, part)
            shape = (layout.micro_batch_size, work.seq_len // layout.cp)  # cp: its part of each sequence
            tokens = torch.randint(0, part.vocab_size, shape)
            targets = torch.randint(0, part.vocab_size, shape)
            tracker = memory_tracker(part, opt, fsdp=sharded(layout))
            segments: list[tuple[str, dict[str, int]]] = []
            with counter, tracker, (loss_parallel() if layout.tp > 1 else contextlib.nullcontext()), \
                    warnings.catch_warnings():
                # its module tracker warns of a module called inside one of the same name (a hub kernel's wrapper
                # in transformers); its per-module figures may suffer, the peak it records does not
                warnings.filterwarnings("ignore", message="The module hierarchy tracking maybe")
                run_step(part, layout, mesh, rank_groups, stage, tokens, targets, counter, saved, opt,
                         work.activation_dtype, lambda phase: segments.append((phase, peak_since(tracker))))
        params = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in part.parameters())
    memory = RankMemory.of_segments(segments, saved.bytes, layout.in_flight(work.batch_size, stage))
    return RankCount(stage, rank, sum(len(c) for c in chunks), params, counter.flops, dict(counter.collectives),
                     memory, dict(counter.uncounted), counter.trace, layers)


def _materialize(part: nn.Module) -> None:
    """The parameters made as fake tensors. ``to_empty`` under a fake tensor mode gives each module a tensor of its
    own, so tied parameters (a head sharing the embedding's table) are tied again."""
    users: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in part.modules():
        for name, param in module.named_parameters(recurse=False):
            users[id(param)].append((module, name))
    part.to_empty(device="cpu")
    for (owner, name), *others in users.values():
        for module, other in others:
            if getattr(module, other) is not getattr(owner, name):
                setattr(module, other, getattr(owner, name))


def _parallelize(part: Stage, layout: Layout, mesh: Any, groups: RankGroups, counter: RankCounter,
                 saved: LocalSavedActivations, work: Workload) -> None:
    """Tensor and expert parallelism, then recomputation, then FSDP (a layer's experts over the ranks that hold
    them, each layer, then the stage): the order torchtitan uses."""
    if layout.tp > 1:
        part.plan(mesh["tp"], layout.sequence_parallel)
    if layout.ep > 1:
        part.shard_experts(layout.ep, groups.ep)
    if layout.recompute == "full":
        for chunk in part.chunks:
            for i, layer in enumerate(chunk):
                chunk[i] = Recomputed(layer, counter, saved)
    if sharded(layout):
        # ZeRO-3 frees the gathered parameters after forward and gathers them again in backward; FSDP2 has no
        # ZeRO-1: 1 and 2 keep them gathered until backward (docs/parallel.md)
        policy = MixedPrecisionPolicy(param_dtype=work.compute_dtype, reduce_dtype=work.dtype)
        options = dict(reshard_after_forward=layout.zero == 3, mp_policy=policy)
        for experts in (m for m in part.modules() if isinstance(m, ExpertsShard)):
            fully_shard(experts, mesh=groups.edp, **options)  # over the ranks that hold them (maybe this one only)
        for chunk in part.chunks:
            for layer in chunk:
                fully_shard(layer, mesh=groups.data, **options)
        fully_shard(part, mesh=groups.data, **options)


