"""Parallelism arithmetic: what one device holds and computes when a measured training step is split over
data-, tensor- and pipeline-parallel groups (dp, tp, pp) with a ZeRO stage, beside the whole-model figures.

Conventions (also in docs/projection.md, "Parallelism and ZeRO"):

- The measured batch B is the global batch of one optimizer step. Data parallelism splits it: each of the dp
  replicas runs B/dp sequences, which must be a whole number.
- Tensor and pipeline parallelism split the weights, gradients, optimizer state, buffers and FLOPs evenly over
  the tp·pp devices of a replica (Megatron-style). Small tensors each tensor-parallel rank keeps whole (norms,
  biases of row-parallel layers), the work tp duplicates (norms, softmax) and uneven stages (embeddings on the
  first and last stage) are ignored.
- ZeRO (DeepSpeed's stages) shards over the dp replicas: stage 1 the optimizer state, stage 2 also the
  gradients, stage 3 also the parameters. Buffers are never sharded: every replica keeps its own. ZeRO-3's
  temporary gather of one layer's full parameters is not counted. With ZeRO 1 to 3 each replica updates only its
  1/dp of the parameters, so the optimizer step's FLOPs are divided by dp as well; with ZeRO-0 every replica
  runs the whole update of its shard.
- Activations: 1F1B pipeline schedule with m micro-batches per replica (default m = pp). The first stage keeps
  up to min(m, pp) micro-batches in flight (Narayanan et al. 2021), each 1/m of the replica's batch, 1/pp of the
  layers and 1/tp of the width (all of them, as with Megatron's sequence parallelism): A·min(m, pp)/(dp·m·pp·tp)
  per device, the first stage's, with A the measured activations of the whole batch (no recomputation). m must
  divide B/dp. With ZeRO-3 and m = pp the memory of all devices adds up to the whole model's, buffers apart (dp
  copies).
- tp must divide the model's attention heads and its KV heads, pp be at most its layers (its shape, which every
  family records: a Hugging Face preset's too).
- Memory per device: weights + buffers + gradients + optimizer state + activations; no temporaries.
- Pipeline bubble: (pp − 1)/(m + pp − 1) of the step is idle; a projection's time is divided by (1 − bubble).
- Communication (all-reduce, all-gather, point-to-point) is not modelled: neither its time nor its buffers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from flopsweep.core import metrics as M
from flopsweep.core.errors import require, require_int
from flopsweep.core.result import Result
from flopsweep.core.shape import shape_of
from flopsweep.core.text import count, layout_name, size_bytes
from flopsweep.core.text import table as text_table

ZERO_STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class Parallelism:
    """A parallel layout: dp × tp × pp devices, a ZeRO stage and the micro-batches per replica (None: pp)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    zero: int = 0
    micro_batches: Optional[int] = None

    def __post_init__(self) -> None:
        for key in ("dp", "tp", "pp"):
            require_int(getattr(self, key), key)
        require(type(self.zero) is int and self.zero in ZERO_STAGES, "zero", self.zero, "must be 0, 1, 2 or 3")
        if self.micro_batches is not None:
            require_int(self.micro_batches, "micro_batches")

    @property
    def devices(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def m(self) -> int:
        """Micro-batches per replica: as given, else pp."""
        return self.micro_batches or self.pp

    @property
    def bubble(self) -> float:
        """The idle fraction of a 1F1B (or GPipe) pipeline step: (pp − 1)/(m + pp − 1)."""
        return (self.pp - 1) / (self.m + self.pp - 1)

    def check_gpus(self, gpus: int) -> None:
        require(gpus == self.devices, "gpus", gpus,
                f"differs from dp·tp·pp = {self.dp}·{self.tp}·{self.pp} = {self.devices}")

    def zero_shards(self, stage: int) -> int:
        """Over how many devices ZeRO shards what its ``stage`` shards: dp from that stage on, else 1."""
        return self.dp if self.zero >= stage else 1

    @property
    def name(self) -> str:
        """The layout as its run is named: ``dp16 tp8 pp8 zero1``."""
        return layout_name({"dp": self.dp, "tp": self.tp, "pp": self.pp, "zero": self.zero}, " ")

    def describe(self) -> str:
        return (f"{self.name} = {self.devices:,} GPUs, "
                f"{self.m} micro-batch{'es' if self.m > 1 else ''} per replica (1F1B)")


@dataclass(frozen=True)
class Share:
    """One quantity for the whole model and for one device."""

    whole: float
    device: float


@dataclass(frozen=True)
class PerDevice:
    """Whole-model and per-device figures of one optimizer step. ``params``: those a device computes with (its
    tp·pp shard; with ZeRO-3 it stores 1/dp of them, see ``weights_bytes``). ``memory_bytes``: the sum of the
    rest. Field names are the quantities of :data:`flopsweep.core.metrics.PER_DEVICE_QUANTITIES`."""

    layout: Parallelism
    batch: int                          # the global batch, in sequences (the measured one)
    params: Share
    flops: Share                        # one optimizer step: forward + backward + optimizer
    weights_bytes: Share
    buffers_bytes: Share
    grads_bytes: Share
    optimizer_state_bytes: Share
    activations_bytes: Share
    memory_bytes: Share
    counted_peak_bytes: Optional[float] = None  # the layout counted rank by rank: its busiest GPU's peak, if counted

    @property
    def bubble(self) -> float:
        return self.layout.bubble

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "devices": self.layout.devices, "micro_batches": self.layout.m,
                "bubble": self.bubble}


def per_device(result: Result, layout: Parallelism, source: str = "") -> PerDevice:
    """Split a measured training step (``result``, status ``ok``) over ``layout``."""
    m = result.metrics
    name = source or (result.config.get("model") or {}).get("name", "?")
    require(result.status == "ok", "run", name, f"has status {str(result.status)!r}, not 'ok'")
    require(m.get(M.FLOPS_BACKWARD) is not None and m.get(M.ACTIVATIONS_BYTES) is not None, "run", name,
            "measured no training step with counting: nothing to split over devices")
    batch = int(m[M.BATCH_SIZE])
    require(batch % layout.dp == 0, "dp", layout.dp,
            f"does not divide the measured batch of {batch} sequences, the global batch of one step "
            "(measure the global batch)")
    require((batch // layout.dp) % layout.m == 0, "micro_batches" if layout.micro_batches else "pp", layout.m,
            f"does not divide the {batch // layout.dp} sequences per data-parallel replica"
            + ("" if layout.micro_batches else
               " (micro-batches default to pp: give a number of micro-batches that divides them)"))
    shape = shape_of(result)
    for heads, what in ((shape.heads, "attention heads"), (shape.kv_heads, "KV heads")):
        require(not heads or heads % layout.tp == 0, "tp", layout.tp,
                f"does not divide the model's {heads} {what} (tensor parallelism splits them)")
    require(not shape.layers or layout.pp <= shape.layers, "pp", layout.pp,
            f"is more pipeline stages than the model's {shape.layers} layers")
    model, zero = layout.tp * layout.pp, layout.zero_shards(1)
    fb, opt = m[M.FLOPS_FORWARD] + m[M.FLOPS_BACKWARD], m.get(M.FLOPS_OPTIMIZER) or 0.0
    memory = _memory(m, layout)
    total = Share(sum(s.whole for s in memory.values()), sum(s.device for s in memory.values()))
    return PerDevice(layout, batch, _split(m[M.PARAMS], model),
                     Share(fb + opt, fb / (model * layout.dp) + opt / (model * zero)), **memory, memory_bytes=total)


def _memory(m: dict[str, Any], layout: Parallelism) -> dict[str, Share]:
    """Weights, buffers, gradients, optimizer state and activations, whole and per device (the first stage)."""
    model, activations = layout.tp * layout.pp, m[M.ACTIVATIONS_BYTES]
    return {"weights_bytes": _split(m[M.WEIGHTS_BYTES], model * layout.zero_shards(3)),
            "buffers_bytes": _split(m.get(M.BUFFERS_BYTES) or 0, model),
            "grads_bytes": _split(m[M.GRADS_BYTES], model * layout.zero_shards(2)),
            "optimizer_state_bytes": _split(m[M.OPTIMIZER_STATE_BYTES], model * layout.zero_shards(1)),
            "activations_bytes": Share(activations, activations * min(layout.m, layout.pp)
                                       / (layout.dp * layout.m * layout.pp * layout.tp))}


def _split(whole: float, parts: int) -> Share:
    return Share(whole, whole / parts)


def table(split: PerDevice, memory_bytes: Optional[float] = None) -> str:
    """The per-device table, with a warning line when a device needs more than ``memory_bytes``."""
    held = split.layout.zero_shards(3)  # ZeRO-3: a device keeps 1/dp of its shard's weights, gathers them to compute
    rows = [["parameters" + (f" (ZeRO-3: a device holds {count(split.params.device / held)}, gathers the rest)"
                             if held > 1 else ""),
             count(split.params.whole), count(split.params.device)],
            ["FLOPs per step", f"{split.flops.whole:.3e}", f"{split.flops.device:.3e}"]]  # as the totals
    for label, key in (("weights", "weights_bytes"), ("buffers", "buffers_bytes"), ("gradients", "grads_bytes"),
                       ("optimizer state", "optimizer_state_bytes"), ("activations", "activations_bytes"),
                       ("memory", "memory_bytes")):
        share = getattr(split, key)
        rows.append([label, size_bytes(share.whole), size_bytes(share.device)])
    if split.counted_peak_bytes is not None:  # what the step holds at once: the layout's fit is judged by it
        rows.append(["memory at the peak, counted rank by rank", "", size_bytes(split.counted_peak_bytes)])
    lines = [f"parallel {split.layout.describe()}: pipeline bubble {split.bubble:.1%}", "",
             text_table(["", "whole model", "per device (split evenly)"], rows)]
    counted = split.counted_peak_bytes is not None  # then the fit is the peak's, not the even split's
    needs = split.counted_peak_bytes if counted else split.memory_bytes.device
    if memory_bytes is not None and needs > memory_bytes:
        smaller = ", or more, smaller micro-batches (--micro-batches)" if split.layout.pp > 1 else ""
        lines.append(f"warning: a device needs {size_bytes(needs)}{' at the peak' if counted else ''}, more than the "
                     f"{size_bytes(memory_bytes)} of one GPU: more GPUs, more sharding, or a smaller batch{smaller}")
    return "\n".join(lines)


def notes(devices: PerDevice, recompute: bool = False, mfu_of_layout: bool = False) -> list[str]:
    """A projection's notes on its layout: the bubble (or the counted step that has it), the per-device conventions,
    what recomputation and a counted peak mean for the figures."""
    pp, m = devices.layout.pp, devices.layout.m
    said = ["parallel: the MFU is the layout's predicted step's, counted rank by rank: its communication and "
            "pipeline bubble are in it (docs/parallel.md)." if mfu_of_layout else
            f"parallel: time / (1 − bubble), bubble (pp − 1)/(m + pp − 1) = {pp - 1}/{m + pp - 1} = "
            f"{devices.bubble:.1%}; GPU-hours, cost and energy include the idle bubble; communication is not "
            "modelled.",
            "per device: the measured batch is the global batch, split over dp; tp·pp split weights, gradients, "
            "optimizer state and FLOPs evenly (replicated norms ignored); ZeRO-1/2/3 shard optimizer state / "
            "+ gradients / + parameters over dp; activations A·min(m, pp)/(dp·m·pp·tp), the first stage's (1F1B)."]
    if recompute and not mfu_of_layout:
        said.append("per-device activations are those measured, without recomputation: an upper bound here.")
    if devices.counted_peak_bytes is not None:
        said.append("memory at the peak, counted rank by rank: the most the busiest GPU holds at once (PyTorch's "
                     "memory tracker over the step: gathered weights, temporaries and FSDP's buffers in it, "
                     "activations freed as backward goes); the even split above holds every saved activation at "
                     "once. The layout fits or not by the peak.")
    return said
