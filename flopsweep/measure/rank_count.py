"""What one rank computes and sends, counted at the dispatcher: its local FLOPs by phase, its local ops in order with
their cost inputs (an :class:`~flopsweep.measure.ops.OpTrace`, which :func:`~flopsweep.measure.predict.predict` times),
and every collective it takes part in, with its bytes, group and mesh dimension; and the activations it saves for
backward.

A dispatch mode sees a DTensor op first, with its global shapes. :class:`RankCounter` declines it (returns
``NotImplemented``, as PyTorch's ``CommDebugMode`` and ``MemTracker`` do), so DTensor runs it, and sees what DTensor
dispatches in its place: the op on this rank's local shards and the collectives of any redistribution. DTensor also
runs each new op once on fake tensors of the global shapes to learn its output's shape; those runs are skipped
(:class:`~flopsweep.measure._torch.DTensorPropagation`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch.distributed.tensor import DTensor

from flopsweep.measure._torch import (DTensorPropagation, EagerDispatchMode, decomposes, local_storage,
                                      process_group_of, storage_id, tree_leaves)
from flopsweep.measure.count import PhaseCount
from flopsweep.measure.formulas import CountOptions, cost_of
from flopsweep.measure.ops import OpTrace, op_name

RANK_PHASES = ("forward", "backward", "recompute", "optimizer")

# op -> (collective, which tensor argument's size is its bytes): the whole buffer it works on, gathered or reduced
_C10D = {"_allgather_base_": ("all_gather", 0), "allgather_": ("all_gather", 0),
         "allgather_into_tensor_coalesced_": ("all_gather", 0), "_reduce_scatter_base_": ("reduce_scatter", 1),
         "reduce_scatter_": ("reduce_scatter", 1), "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1),
         "allreduce_": ("all_reduce", 0), "allreduce_coalesced_": ("all_reduce", 0),
         "alltoall_base_": ("all_to_all", 1),
         "alltoall_": ("all_to_all", 1), "broadcast_": ("broadcast", 0), "send": ("send", 0), "recv_": ("recv", 0)}
_FUNCTIONAL = {"all_gather_into_tensor": "all_gather", "all_gather_into_tensor_coalesced": "all_gather",
               "reduce_scatter_tensor": "reduce_scatter", "reduce_scatter_tensor_coalesced": "reduce_scatter",
               "all_reduce": "all_reduce", "all_reduce_coalesced": "all_reduce", "all_to_all_single": "all_to_all",
               "broadcast": "broadcast"}


@dataclass
class CollectiveTally:
    """Calls of one collective in one phase over one group, and their bytes (the whole buffer: an all-gather's
    output, a reduce-scatter's input, an all-reduce's tensor, what a send or receive moves)."""

    calls: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class CollectiveKey:
    op: str          # all_gather, reduce_scatter, all_reduce, all_to_all, broadcast, send, recv
    phase: str       # one of RANK_PHASES
    mesh_dim: str    # the mesh dimension of its group: "dp", "tp", "pp", "cp"
    group_size: int


def _nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(tensors) if isinstance(t, torch.Tensor))


class RankCounter(EagerDispatchMode):
    """While entered, counts this rank's ops into :attr:`phase` (the caller moves it on) and its collectives, and
    records its local ops in :attr:`trace`. ``groups`` gives each process group (by its ``group_name``) its mesh
    dimension and size. Ops run inside :meth:`recomputable` while the phase is ``backward`` are recomputation and
    count under ``recompute`` (a phase of the trace too). FSDP's copies into and out of its gather buffers move bytes
    and are traced, with no FLOPs; the collectives are not (their time is the interconnect's)."""

    def __init__(self, groups: dict[str, tuple[str, int]], opts: CountOptions = CountOptions()):
        super().__init__()
        self.groups, self.opts = groups, opts
        self.phase = "forward"
        self.flops: dict[str, PhaseCount] = {phase: PhaseCount() for phase in RANK_PHASES}
        self.collectives: dict[CollectiveKey, CollectiveTally] = defaultdict(CollectiveTally)
        self.uncounted: dict[str, int] = defaultdict(int)
        self.trace = OpTrace()
        self._recomputing = 0
        self._propagation = DTensorPropagation()

    @contextlib.contextmanager
    def recomputable(self) -> Iterator[None]:
        """Around code that checkpointing reruns in backward (it runs inside this again then)."""
        self._recomputing += 1
        try:
            yield
        finally:
            self._recomputing -= 1

    def __enter__(self) -> "RankCounter":
        self._propagation.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._propagation.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented
        kwargs = kwargs or {}
        out = self.run(func, args, kwargs)
        if DTensorPropagation.running():
            return out
        phase = "recompute" if self.phase == "backward" and self._recomputing else self.phase
        namespace = func.namespace
        if namespace in ("c10d", "_c10d_functional", "_c10d_functional_autograd"):
            self._collective(func, args, kwargs, phase)
            return out
        if namespace == "fsdp":
            self.trace.add(phase, func, args, kwargs, out, None)
            return out
        if namespace == "prim" or decomposes(func):  # metadata; a composite, whose pieces come next
            return out
        cost = cost_of(func, args, kwargs, out, self.opts)
        self.trace.add(phase, func, args, kwargs, out, cost)
        if cost is None:
            self.uncounted[op_name(func)] += 1
        elif cost.matmul or cost.elementwise:
            count = self.flops[phase]
            count.matmul += cost.matmul
            count.elementwise += cost.elementwise
            tally = count.by_op[op_name(func)]
            tally.calls += 1
            tally.matmul += cost.matmul
            tally.elementwise += cost.elementwise
        return out

    def _collective(self, func: Any, args: tuple, kwargs: dict, phase: str) -> None:
        name = func.overloadpacket.__name__
        if func.namespace == "c10d":
            if name not in _C10D:
                return
            op, which = _C10D[name]
            group = process_group_of(next(a for a in args if isinstance(a, torch.ScriptObject)
                                          and "ProcessGroup" in str(a)))
            group_name, nbytes = group.group_name, _nbytes(args[which])
        else:
            if name not in _FUNCTIONAL:
                return  # wait_tensor and the like: no data of their own
            op = _FUNCTIONAL[name]
            group_name = kwargs.get("group_name", args[-1])
            nbytes = _nbytes(args[0]) * (self.groups.get(group_name, ("", 1))[1] if op == "all_gather" else 1)
        if group_name not in self.groups:
            raise RuntimeError(f"a collective ({name}) over a process group that no mesh dimension names")
        dim, size = self.groups[group_name]
        if size == 1:  # a group of one (FSDP over the one rank that holds some experts) moves nothing
            return
        key = CollectiveKey(op, phase, dim, size)
        tally = self.collectives[key]
        tally.calls += 1
        tally.bytes += nbytes


class LocalSavedActivations:
    """While entered, the bytes of the tensors autograd saves for backward on this rank: each storage once, a
    DTensor by its local shard, parameters (sharded or gathered) left out. :meth:`keep` adds what checkpointing
    keeps alive in their place (the checkpointed call's inputs)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._cached: Optional[set[int]] = None
        self._handle: Any = None

    def _weights(self) -> set[int]:
        """The parameters' storages; asked again after each module call starts (FSDP swaps gathered ones in)."""
        if self._cached is None:
            self._cached = {storage_id(p) for p in self.model.parameters()}
        return self._cached

    def _stale(self, *_: Any) -> None:
        self._cached = None

    def keep(self, tensors: Any) -> None:
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor):
                self._add(t, self._weights())

    def _add(self, t: torch.Tensor, weights: set[int]) -> None:
        key = storage_id(t)
        if key not in weights:
            self.seen[key] = local_storage(t).nbytes()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._add(t, self._weights())
        return t

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())

    def __enter__(self) -> "LocalSavedActivations":
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._stale)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        self._handle.remove()
