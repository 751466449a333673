"""A parallel layout (:class:`Layout`): how many ways the data, tensors, pipeline, context and experts are split, ZeRO's
stage, recomputation and the micro-batch; its checks against a model's shape and the batch, and what follows from it
(the mesh, each stage's layers, the micro-batches of a step and those in flight)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

from flopsweep.core.errors import is_number, require, require_int

RECOMPUTE = ("none", "selective", "full")
SCHEDULES = ("1f1b", "dualpipe")  # the pipeline's: 1F1B (interleaved where vpp > 1), DeepSeek-V3's DualPipe
MESH_DIMS = ("pp", "dp", "cp", "tp")  # outermost first: tp varies fastest (within a node), pp slowest
DATA_DIM = "dp_cp"  # under context parallelism, the dp x cp ranks that hold the same weights: FSDP's and DDP's group
EMBEDDING_DIM = "embedding"  # under a pipeline, the first and the last stage's ranks: a tied table's two copies


@dataclass(frozen=True)
class Layout:
    """``dp * tp * pp * cp`` ranks (``ep`` splits the experts within ``dp * cp``, as Megatron-LM does). ``zero``: 0
    replicates the model over dp (gradients all-reduced), 1 and 2 shard gradients and optimizer state and keep the
    gathered parameters from forward to backward, 3 shards the parameters too (FSDP's full sharding). ``vpp``: the
    model chunks a pipeline rank holds (the interleaved schedule). ``micro_batch_size``: sequences per micro-batch.
    ``schedule``: ``dualpipe`` feeds micro-batches from both ends of the pipeline, each rank holding stage ``i`` and
    stage ``pp - 1 - i``, and overlaps a forward chunk with another micro-batch's backward chunk, so that their
    all-to-alls and sends run under the other's compute (DeepSeek-AI 2024, section 3.2.1). ``expert_load``: the
    routed rows the busiest expert-parallel rank receives over an even share (1: routing as uniform as a balanced
    router keeps it on average; 1.3: that rank gets 30% more, and every rank waits for it at the all-to-all)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    zero: int = 0
    sequence_parallel: bool = False
    recompute: str = "none"
    micro_batch_size: int = 1
    vpp: int = 1
    schedule: str = "1f1b"
    expert_load: float = 1.0

    @property
    def dualpipe(self) -> bool:
        return self.schedule == "dualpipe"

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in MESH_DIMS)

    def mesh_sizes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in MESH_DIMS}

    def check(self) -> None:
        """What can be checked without a model: each a one-line ``ConfigError`` naming its ``parallel.*`` key."""
        for name in ("dp", "tp", "pp", "cp", "ep", "micro_batch_size", "vpp"):
            require_int(getattr(self, name), f"parallel.{name}")
        require(self.zero in (0, 1, 2, 3) and not isinstance(self.zero, bool), "parallel.zero", self.zero,
                "must be 0, 1, 2 or 3")
        require(self.recompute in RECOMPUTE, "parallel.recompute", self.recompute, f"must be {', '.join(RECOMPUTE)}")
        require(isinstance(self.sequence_parallel, bool), "parallel.sequence_parallel", self.sequence_parallel,
                "must be true or false")
        require(not self.sequence_parallel or self.tp > 1, "parallel.sequence_parallel", True,
                "splits the norms' and dropout's activations over tensor-parallel ranks: it needs parallel.tp > 1")
        require(self.vpp == 1 or self.pp > 1, "parallel.vpp", self.vpp,
                "interleaves pipeline stages: needs parallel.pp > 1")
        require(self.schedule in SCHEDULES, "parallel.schedule", self.schedule, f"must be {' or '.join(SCHEDULES)}")
        require(is_number(self.expert_load) and 1 <= self.expert_load < math.inf, "parallel.expert_load",
                self.expert_load, "must be a number >= 1: the busiest expert-parallel rank's routed rows over an even "
                "share")
        require(self.expert_load == 1 or self.ep > 1, "parallel.expert_load", self.expert_load,
                "is the imbalance between expert-parallel ranks: it needs parallel.ep > 1")
        amiss = [f"parallel.pp even (not {self.pp})"] * (self.pp < 2 or self.pp % 2 == 1) + \
            [f"parallel.vpp=1 (not {self.vpp})"] * (self.vpp != 1)
        require(not self.dualpipe or not amiss, "parallel.schedule", self.schedule,
                f"runs an even number of pipeline stages, one chunk each: needs {' and '.join(amiss)}")
        require(self.ep <= self.dp * self.cp and (self.dp * self.cp) % self.ep == 0, "parallel.ep", self.ep,
                f"must divide parallel.dp * parallel.cp = {self.dp * self.cp} (experts are split within them)")

    def check_model(self, *, heads: int, kv_heads: Optional[int], layers: int, batch_size: int, seq_len: int,
                    experts: Optional[int] = None) -> None:
        """The checks against a model's shape and the global batch (``batch_size`` sequences an optimizer step)."""
        self.check()
        kv_heads = kv_heads or heads
        require(heads % self.tp == 0 and kv_heads % self.tp == 0, "parallel.tp", self.tp,
                f"must divide the model's {heads} attention heads and {kv_heads} key/value heads")
        chunks = self.pp * self.vpp
        require(chunks <= layers, "parallel.pp", self.pp,
                f"leaves a pipeline stage without a layer: {layers} layers over pp={self.pp} x vpp={self.vpp} chunks")
        require(batch_size % (self.dp * self.micro_batch_size) == 0, "parallel.dp", self.dp,
                f"times parallel.micro_batch_size={self.micro_batch_size} must divide batch.size={batch_size}")
        require(seq_len % self.cp == 0, "parallel.cp", self.cp, f"must divide batch.seq_len={seq_len}")
        require(not (self.sequence_parallel and self.tp > 1) or (seq_len // self.cp) % self.tp == 0,
                "parallel.sequence_parallel", True, f"splits each sequence over tp={self.tp}: it must divide "
                f"batch.seq_len / cp = {seq_len // self.cp}")
        if experts:
            require(experts % self.ep == 0, "parallel.ep", self.ep, f"must divide the model's {experts} experts")
        else:
            require(self.ep == 1, "parallel.ep", self.ep, "splits experts: this model has none")
        micro = self.micro_batches(batch_size)
        require(self.vpp == 1 or micro % self.pp == 0, "parallel.vpp", self.vpp,
                f"the interleaved schedule needs the micro-batches ({micro}) to be a multiple of parallel.pp={self.pp}")
        require(not self.dualpipe or micro % 2 == 0, "parallel.schedule", self.schedule,
                f"feeds half the micro-batches from each end: it needs an even number of them, not {micro} "
                "(batch.size / (parallel.dp x parallel.micro_batch_size))")

    def check_counted(self, mixed_precision: bool = False, causal_half: bool = False) -> None:
        """What the rank counter cannot count yet; ``mixed_precision``: a compute dtype beside the weights', which is
        FSDP's ``MixedPrecisionPolicy`` here; ``causal_half``: causal attention counted by the pairs its mask keeps."""
        require(not (causal_half and self.cp > 1), "measure.causal_attention", "half", "is not counted under "
                "parallel.cp > 1 (a rank's share of the causal pairs): count the full square (the MFU convention)")
        require(not mixed_precision or (self.zero >= 1 and self.data_parallel > 1), "parallel.zero", self.zero,
                "a compute dtype beside the weights' (dtype.autocast) is FSDP's mixed precision: it needs zero >= 1 "
                "and dp * cp > 1 (or weights in the compute dtype: dtype=bfloat16)")

    @property
    def data_parallel(self) -> int:
        """The ranks that hold the same weights and see different tokens, whose gradients are reduced together:
        dp, times cp (each of a context-parallel group's ranks sees its own part of every sequence)."""
        return self.dp * self.cp

    def micro_batches(self, batch_size: int) -> int:
        """Micro-batches each data-parallel rank runs in one optimizer step."""
        return batch_size // (self.dp * self.micro_batch_size)

    def in_flight(self, batch_size: int, stage: int) -> float:
        """Micro-batches whose activations pipeline stage ``stage`` holds at once under 1F1B: ``min(m, pp - stage)``
        (the first stage ``min(m, pp)``), times ``1 + (pp - 1) / (pp * vpp)`` on the first stage when interleaved
        (Korthikanti et al. 2022, section 4.2.3); under DualPipe ``pp + 1`` chunks' on every rank (DeepSeek-AI 2024,
        table 2), at most ``m``."""
        if self.dualpipe:
            return float(min(self.micro_batches(batch_size), self.pp + 1))
        held = min(self.micro_batches(batch_size), self.pp - stage)
        if self.vpp > 1 and stage == 0:
            return held * (1 + (self.pp - 1) / (self.pp * self.vpp))
        return float(held)

    def stage_layers(self, layers: int, stage: int) -> list[list[int]]:
        """The layers pipeline stage ``stage`` holds, one list per model chunk (``vpp`` of them): the model cut into
        ``pp * vpp`` chunks as evenly as it divides (the first chunks take one more), chunk ``c`` on stage
        ``c % pp``."""
        chunks = self.pp * self.vpp
        base, extra = divmod(layers, chunks)
        starts = [c * base + min(c, extra) for c in range(chunks + 1)]
        return [list(range(starts[c], starts[c + 1])) for c in range(stage, chunks, self.pp)]


@dataclass
class ParallelConf:
    """The ``parallel`` node of a job's config: a :class:`Layout`'s keys and ``gpus_per_node`` (the GPUs a
    scale-up domain joins; unset, the part's: 8 for a DGX, 72 for an NVL72) and ``gpus`` (the world size a layout
    search targets, ``+sweep=layouts``; a job with it set must have ``dp * tp * pp * cp`` equal to it). Every key unset
    runs the job as it is without parallelism; any key set counts the layout rank by rank (the others at their
    :class:`Layout` default)."""

    dp: Optional[int] = None
    tp: Optional[int] = None
    pp: Optional[int] = None
    vpp: Optional[int] = None
    cp: Optional[int] = None
    ep: Optional[int] = None
    zero: Optional[int] = None
    sequence_parallel: Optional[bool] = None
    recompute: Optional[str] = None
    micro_batch_size: Optional[int] = None
    schedule: Optional[str] = None
    expert_load: Optional[float] = None
    gpus_per_node: Optional[int] = None
    gpus: Optional[int] = None

    @property
    def set(self) -> bool:
        return any(value is not None for value in asdict(self).values())

    def layout(self) -> Layout:
        given = {f.name: getattr(self, f.name) for f in fields(Layout) if getattr(self, f.name, None) is not None}
        return Layout(**given)
