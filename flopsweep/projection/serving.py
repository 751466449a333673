"""What serving a model costs: a roofline over the counted generation (``workload=generate``) on a part of the hardware
table, at each batch up to the largest whose weights and KV cache fit.

Each phase takes the longer of its FLOPs at ``peak × compute efficiency`` and its bytes at ``bandwidth × memory
efficiency``, and is said to be compute- or memory-bound by which is longer. A prefill of b prompts moves the weights
once and writes its KV cache; a decode step of b sequences at context c reads the weights a step reads and the cache
(c tokens a sequence) and writes one token's keys and values a sequence. Activations are left out (they stay in
on-chip memory or are small beside the weights at serving batches). The per-token costs come from the counted
generation: a decode step's FLOPs are affine in its context (flopsweep.measure.generate), so the line through the
first and last counted steps gives every step's. With tensor parallelism (``tp``) the weights and the FLOPs are split
over tp GPUs and a request's time is one GPU's; the KV cache is split by its heads, so that where tp exceeds the KV
heads (grouped-query attention on many GPUs) each GPU holds one head's whole cache, the heads repeated across GPUs,
and an MLA cache (one latent shared by every head) sits whole on every GPU. Each layer all-reduces its attention's and
its MLP's output over the tp GPUs (Megatron-LM's layout, vLLM's), on the critical path: two all-reduces a layer of
the phase's tokens' activations (16-bit; float32 where the dtype is), timed on the part's interconnect
(:mod:`flopsweep.core.comm`: a ring, the tp group on the scale-up domain where it fits, else the scale-out network)
and added to each phase; latency-bound at decode. A mixture of experts reads, of its routed experts, those its
phase's tokens reach: E·(1 − (1 − k/E)^T) of E a layer for T tokens each routed to k (uniform routing; a Zipf skew
as an option, :func:`~flopsweep.core.shape.experts_touched`), so a decode step at a small batch reads a fraction of
the experts that every prefill of a long prompt reads whole. With expert parallelism (``ep``, a multiple of tp) a
replica is ``ep`` GPUs: each holds ``E / ep`` whole routed experts and runs attention for its tp group's share of
the batch (``ep / tp`` groups, data-parallel attention beside tensor-parallel attention within a group: DeepSeek's
and vLLM's deployment); each GPU reads the touched experts it holds, computes its experts' share of every token's
expert FLOPs, and each MoE layer sends its tokens' rows to their experts and back (two all-to-alls a layer, on the
critical path, timed on the part's interconnect over the ep GPUs).

Why one file: the part and plan (:class:`Serving`), the roofline at a batch and the table that shows it read the same
few fields of each other (the replica's GPUs, groups and splits); the words of the table are the assumptions of the
arithmetic just above them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from flopsweep.core.comm import Network
from flopsweep.core.errors import require
from flopsweep.core.hardware import Accelerator
from flopsweep.core.text import capacity, size_bytes, whole
from flopsweep.projection.generation import KV_DTYPES, SERVED_BYTES, Generation
from flopsweep.projection.training import not_given


@dataclass(frozen=True)
class Serving:
    gpu: Accelerator
    dtype: str                    # the compute dtype, for the peak
    tp: int = 1
    compute_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    memory_share: float = 0.9     # of the GPU's memory for weights and cache (the rest: runtime, activations)
    price_per_gpu_hour: Optional[float] = None
    watts_per_gpu: Optional[float] = None
    gpus: Optional[int] = None    # the whole fleet: gpus / tp replicas, each serving its own batches
    expert_skew: float = 0.0      # a mixture of experts' routing: 0 uniform, s > 0 a Zipf law of exponent s
    weights_dtype: Optional[str] = None  # the weights as served (fp8, int8, int4, ...); None: as counted
    kv_dtype: Optional[str] = None       # the KV cache as served; None: as counted
    ep: int = 1                   # expert parallelism: a replica of ep GPUs, each holding E / ep routed experts

    def __post_init__(self) -> None:
        require(self.gpu.peak(self.dtype) is not None, "dtype", self.dtype, f"has no peak for the {self.gpu.name} in "
                "the table: give --peak-tflops")
        require(isinstance(self.tp, int) and self.tp >= 1, "tp", self.tp, "must be an integer >= 1")
        for key, value in (("price", self.price_per_gpu_hour), ("watts", self.watts_per_gpu)):
            require(value is None or value >= 0, key, value, "must be >= 0")
        require(isinstance(self.ep, int) and self.ep >= 1 and (self.ep == 1 or self.ep % self.tp == 0), "ep", self.ep,
                f"must be an integer >= 1, a multiple of --tp={self.tp} (a replica of ep GPUs, tp to an attention "
                "group)")
        require(self.gpus is None or (isinstance(self.gpus, int) and self.gpus >= self.replica
                                      and self.gpus % self.replica == 0), "gpus",
                self.gpus, f"must be a whole multiple (>= 1) of the {self.replica} GPUs a replica holds (--tp, --ep)")
        require(isinstance(self.expert_skew, (int, float)) and 0 <= self.expert_skew < float("inf"), "expert-skew",
                self.expert_skew, "must be a finite number >= 0 (0: uniform routing)")
        require(self.weights_dtype is None or self.weights_dtype in SERVED_BYTES, "weights-dtype", self.weights_dtype,
                f"must be one of {', '.join(SERVED_BYTES)}")
        require(self.kv_dtype is None or self.kv_dtype in KV_DTYPES, "kv-dtype", self.kv_dtype,
                f"must be one of {', '.join(KV_DTYPES)}")
        for key in ("compute_efficiency", "memory_efficiency", "memory_share"):
            value = getattr(self, key)
            require(0 < value <= 1, key.replace("_", "-"), value, "must be in (0, 1]")

    @property
    def replica(self) -> int:
        """GPUs a replica holds: tp, or ep under expert parallelism."""
        return max(self.tp, self.ep)

    @property
    def groups(self) -> int:
        """Attention groups of a replica (tp GPUs each), each serving its share of the batch."""
        return self.replica // self.tp

    @property
    def experts_split(self) -> int:
        """How many ways the routed experts are split: over ep GPUs whole, else over tp with every weight."""
        return self.ep if self.ep > 1 else self.tp

    @property
    def flops_per_s(self) -> float:
        return self.gpu.peak(self.dtype) * self.compute_efficiency

    @property
    def bytes_per_s(self) -> float:
        return self.gpu.bandwidth * self.memory_efficiency

    def network(self) -> Optional[Network]:
        """The tp group on the part's interconnect; None without tp or an interconnect in the table."""
        link = self.gpu.interconnect
        return Network(link, {"tp": self.tp}, link.domain) if link is not None and self.tp > 1 else None

    def all_to_all_s(self, gen: "Generation", tokens: float) -> float:
        """Seconds of a phase's expert-parallel all-to-alls on one GPU: each MoE layer sends its ``tokens`` tokens'
        rows (one for each of their k experts; tp GPUs of a group split them) to the experts' GPUs and back (0
        without ep, an interconnect or the model's width)."""
        link = self.gpu.interconnect
        if self.ep == 1 or link is None or not gen.width or not gen.layers or not gen.experts_per_token:
            return 0.0
        calls = 2 * gen.layers
        each = tokens / self.tp * gen.experts_per_token * gen.width * (4 if self.dtype == "float32" else 2)
        return Network(link, {"ep": self.ep}, link.domain).seconds("all_to_all", "ep", calls * each, calls)

    def all_reduce_s(self, gen: "Generation", tokens: float) -> float:
        """Seconds of a phase's tensor-parallel all-reduces, two a layer of ``tokens`` tokens' activations (0 where
        there is no tp, no interconnect, or the model's width or layers are not known)."""
        network = self.network()
        if network is None or not gen.width or not gen.layers:
            return 0.0
        calls = 2 * gen.layers
        each = tokens * gen.width * (4 if self.dtype == "float32" else 2)
        return network.seconds("all_reduce", "tp", calls * each, calls)


@dataclass(frozen=True)
class BatchRow:
    batch: int
    ttft_s: float
    prefill_bound: str
    tpot_s: float                 # the mean decode step
    tpot_all_reduce_s: float      # of it, the tensor-parallel all-reduces
    tpot_all_to_all_s: float      # ... and the expert-parallel all-to-alls
    decode_bound: str             # at the first and the last context: "memory", "compute", or "memory→compute"
    request_s: float              # TTFT + every decode step
    output_tokens_per_s_per_gpu: float
    gpu_hours_per_m_output: float
    usd_per_m_input: Optional[float]
    usd_per_m_output: Optional[float]
    kwh_per_m_output: Optional[float]


def weights_per_gpu(gen: Generation, serving: Serving, routed: Optional[float] = None) -> float:
    """Bytes of weights one GPU holds (or moves): its share of the routed experts' ``routed`` bytes (all of them
    unless given: whole experts over ep, or every weight over tp), and of the rest's over tp."""
    routed = gen.routed_bytes if routed is None else routed
    return (gen.weights_bytes - gen.routed_bytes) / serving.tp + routed / serving.experts_split


def largest_batch(gen: Generation, serving: Serving) -> int:
    """The most sequences a replica serves whose weights and KV cache at the last context fit in ``memory_share``
    of each GPU (an attention group's GPUs hold its share of the sequences)."""
    room = serving.memory_share * serving.gpu.memory_bytes - weights_per_gpu(gen, serving)
    per_sequence = gen.cache_bytes(gen.prompt + gen.steps) * gen.kv_share(serving.tp)
    return max(0, int(serving.groups * room // per_sequence)) if per_sequence > 0 else 0


def _phase(flops: np.ndarray, moved: np.ndarray, serving: Serving) -> tuple[np.ndarray, np.ndarray]:
    """The time of a phase on one GPU: ``flops`` and ``moved``, what one GPU computes and moves."""
    compute, memory = flops / serving.flops_per_s, moved / serving.bytes_per_s
    return np.maximum(compute, memory), compute >= memory


def _per_gpu(flops: Any, tokens: float, batch: int, gen: Generation, serving: Serving) -> Any:
    """One GPU's FLOPs of a phase whose ``flops`` (a sequence's) run on each of an attention group's sequences
    (``tokens`` tokens each): the group's share over its tp GPUs, but the routed experts' work of the whole batch
    over the GPUs that split them."""
    group = batch / serving.groups
    experts = gen.expert_flops_per_token * tokens
    return group * (flops - experts) / serving.tp + batch * experts / serving.experts_split


def at_batch(gen: Generation, serving: Serving, batch: int) -> BatchRow:
    """A batch of ``batch`` requests on a replica, all prefilled together then decoded in step."""
    share = gen.kv_share(serving.tp)  # of a sequence's cache, on one GPU
    group = batch / serving.groups  # an attention group's sequences
    weights = weights_per_gpu(gen, serving, gen.routed_read(batch * gen.prompt, serving.expert_skew))
    prefill, prefill_compute = _phase(np.array([_per_gpu(gen.prefill_flops, gen.prompt, batch, gen, serving)]),
                                      np.array([weights + group * gen.cache_bytes(gen.prompt) * share]), serving)
    contexts = np.arange(gen.prompt + 1, gen.prompt + gen.new_tokens, dtype=float)
    # a step reads the weights besides the routed experts over tp, and its share of the experts its batch reaches
    read = gen.weights_read_bytes / serving.tp + gen.routed_read(batch, serving.expert_skew) / serving.experts_split
    steps, compute = _phase(_per_gpu(gen.decode_flops(contexts), 1, batch, gen, serving),
                            read + group * gen.cache_bytes(contexts) * share, serving)
    step_reduce, step_exchange = serving.all_reduce_s(gen, group), serving.all_to_all_s(gen, group)
    ttft = float(prefill[0]) + serving.all_reduce_s(gen, group * gen.prompt) + \
        serving.all_to_all_s(gen, group * gen.prompt)
    decode = float(steps.sum()) + len(contexts) * (step_reduce + step_exchange)
    tpot = decode / len(contexts) if len(contexts) else 0.0
    bound = "-" if not len(contexts) else "compute" if compute.all() else "memory" if not compute.any() else \
        ("memory→compute" if compute[-1] else "compute→memory")
    request, gpus = ttft + decode, serving.replica
    gpu_hours = gpus * request / 3600.0
    per_m_out = 1e6 / (batch * gen.new_tokens)
    price, watts = serving.price_per_gpu_hour, serving.watts_per_gpu
    stepped = bool(len(contexts))
    return BatchRow(batch, ttft, "compute" if prefill_compute[0] else "memory", tpot,
                    step_reduce if stepped else 0.0, step_exchange if stepped else 0.0, bound, request,
                    batch * gen.new_tokens / request / gpus, gpus * decode / 3600.0 * per_m_out,
                    price * gpus * ttft / 3600.0 * 1e6 / (batch * gen.prompt) if price is not None else None,
                    price * gpus * decode / 3600.0 * per_m_out if price is not None else None,
                    watts * gpu_hours / 1000.0 * per_m_out if watts is not None else None)


def batches(largest: int, count: int = 12) -> list[int]:
    """Powers of two up to ``largest``, and ``largest`` itself: ``count`` at most, batch 1 (a lone request's latency)
    and the largest kept, the smallest others left out."""
    sizes = sorted({2 ** k for k in range(0, max(largest, 1).bit_length()) if 2 ** k <= largest} | {largest})
    sizes = [b for b in sizes if b >= 1]
    return [sizes[0], *sizes[-(count - 1):]] if len(sizes) > count else sizes


@dataclass(frozen=True)
class ServingPlan:
    generation: Generation
    serving: Serving
    largest: int
    rows: list[BatchRow]

    def to_dict(self) -> dict[str, Any]:
        return {"generation": asdict(self.generation), "gpu": asdict(self.serving.gpu),
                "serving": {k: v for k, v in asdict(self.serving).items() if k != "gpu"}, "largest_batch": self.largest,
                "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        g, s = self.generation, self.serving
        served = [f"weights in {s.weights_dtype}"] * bool(s.weights_dtype) + [f"KV cache in {s.kv_dtype}"] * \
            bool(s.kv_dtype)
        lines = [f"serving {g.source}: a prompt of {g.prompt:,} tokens, {g.new_tokens:,} generated; "
                 f"{size_bytes(g.weights_bytes)} of weights, {size_bytes(g.kv_bytes_per_token)} of KV cache "
                 "a token" + (f" and {size_bytes(g.state_bytes)} of state a sequence" if g.state_bytes else "")
                 + (f" ({', '.join(served)}, scaled from {g.dtype} as counted: every weight, quantisation "
                              "scales left out)" if served else ""),
                 f"on {s.replica} × {s.gpu.name} ({s.gpu.peak(s.dtype) / 1e12:,g} TFLOP/s {s.dtype}, "
                 f"{s.gpu.bandwidth_gbs:,.0f} GB/s, {capacity(s.gpu)}; {s.gpu.source}), efficiency "
                 f"{s.compute_efficiency:.0%} compute, {s.memory_efficiency:.0%} memory"
                 + (f"; {s.gpus:,} GPUs: {s.gpus // s.replica:,} replicas" if s.gpus else "")
                 + (f"; {g.kv_heads} KV heads on tp={s.tp}: each GPU holds {g.kv_share(s.tp):.3g} of the cache"
                    if g.kv_heads and s.tp > 1 and g.kv_share(s.tp) * s.tp > 1 else ""),
                 *([self._all_reduce_words()] if s.tp > 1 else []),
                 *([self._all_to_all_words()] if s.ep > 1 else []),
                 *([self._experts_words()] if g.experts else []),
                 f"largest batch: {self.largest:,} sequences (weights + KV cache at {g.prompt + g.steps:,} tokens in "
                 f"{s.memory_share:.0%} of memory)", ""]
        fleet = [f"tokens/s on {s.gpus:,}"] if s.gpus else []
        reduce = ["all-reduce/TPOT"] * (s.tp > 1) + ["all-to-all/TPOT"] * (s.ep > 1)
        header = ["batch", "TTFT", "prefill", "TPOT", *reduce, "decode", "request", "tokens/s/GPU", *fleet,
                  "GPU-h/M out", "$/M in", "$/M out", "kWh/M out"]
        body = [[f"{r.batch:,}", _seconds(r.ttft_s), r.prefill_bound, _seconds(r.tpot_s),
                 *[f"{share / r.tpot_s:.0%}" if r.tpot_s else "-" for share, shown in (
                     (r.tpot_all_reduce_s, s.tp > 1), (r.tpot_all_to_all_s, s.ep > 1)) if shown], r.decode_bound,
                 _seconds(r.request_s), f"{r.output_tokens_per_s_per_gpu:,.0f}",
                 *([f"{r.output_tokens_per_s_per_gpu * s.gpus:,.0f}"] if s.gpus else []),
                 _money(r.gpu_hours_per_m_output), _money(r.usd_per_m_input), _money(r.usd_per_m_output),
                 _money(r.kwh_per_m_output)] for r in self.rows]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [header, *body]]
        unpriced = not_given(s.price_per_gpu_hour, s.watts_per_gpu)  # its n/a columns said, as train says them
        return "\n".join(lines + ([f"- {unpriced}"] if unpriced else []))


    def _experts_words(self) -> str:
        g, s = self.generation, self.serving
        routing = f"a Zipf law of exponent {s.expert_skew:g}" if s.expert_skew else "uniform routing"
        reached = ", ".join(f"{g.experts_read(r.batch, s.expert_skew):.3g} at batch {r.batch:,}"
                            for r in (self.rows[0], self.rows[-1]))
        return (f"mixture of experts: {g.experts} routed experts a layer, {g.experts_per_token} a token, "
                f"{size_bytes(g.routed_bytes)} of them; a decode step reads those its batch reaches ({routing}): "
                f"{reached}")

    def _all_to_all_words(self) -> str:
        g, s = self.generation, self.serving
        if s.gpu.interconnect is None or not g.width or not g.layers:
            why = "no interconnect in the table for the part" if s.gpu.interconnect is None else \
                "the model's shape not known"
            return f"expert-parallel all-to-alls left out ({why})"
        return (f"expert parallelism: {g.experts // s.ep} routed experts a GPU of ep={s.ep}, attention on "
                f"{s.groups} group(s) of tp={s.tp} each serving its share of the batch; 2 all-to-alls a layer x "
                f"{g.layers} layers of each token's {g.experts_per_token} rows (routing uniform unless skewed)")

    def _all_reduce_words(self) -> str:
        g, s, network = self.generation, self.serving, self.serving.network()
        if network is None or not g.width or not g.layers:
            why = "no interconnect in the table for the part" if network is None else "the model's shape not known"
            return f"tensor-parallel all-reduces left out ({why})"
        link, bandwidth = network.tier("tp")
        tier = "scale-up" if link is network.interconnect.scale_up else "scale-out (tp spans scale-up domains)"
        return (f"tensor-parallel all-reduces: 2 a layer x {g.layers} layers of {g.width:,}-wide activations over "
                f"tp={s.tp}, {tier} at {bandwidth:g} GB/s each way, {link.latency_s * 1e6:g} us each ({link.source})")


def _seconds(s: float) -> str:
    return f"{s * 1e3:,.2f} ms" if s < 1 else f"{s:,.2f} s"


def _money(value: Optional[float]) -> str:
    """A cost or energy cell: three significant digits kept in a column (``0.0900`` above ``0.0512``, not ``0.09``),
    whole from 100 up; ``n/a`` where no price or power was given, as the training table says it."""
    if value is None:
        return "n/a"
    return whole(value) if value >= 100 else f"{value:#.3g}".rstrip(".")  # whole's digits, its zeros kept


def plan(gen: Generation, serving: Serving, batch: Optional[int] = None) -> ServingPlan:
    """The roofline at each batch of :func:`batches` up to the largest that fits (or at ``batch`` alone), the weights
    and the cache in the dtypes they are served in."""
    require(not gen.heads or gen.heads % serving.tp == 0, "tp", serving.tp, f"does not divide the model's {gen.heads} "
            "attention heads (tensor parallelism splits them)")
    require(serving.ep == 1 or (gen.experts is not None and gen.experts % serving.ep == 0), "ep", serving.ep,
            f"splits a mixture of experts' routed experts: {gen.source} has "
            + (f"{gen.experts}, which it does not divide" if gen.experts else "none counted"))
    gen = gen.served(serving.weights_dtype, serving.kv_dtype)
    largest = largest_batch(gen, serving)
    require(largest >= 1 or batch is not None, "gpu", serving.gpu.name, f"cannot hold the weights "
            f"({size_bytes(gen.weights_bytes)}) and one sequence's KV cache in {serving.memory_share:.0%} of "
            f"{serving.replica} × {capacity(serving.gpu)}: give --tp (or --ep)")
    sizes = [batch] if batch is not None else batches(largest)
    return ServingPlan(gen, serving, largest, [at_batch(gen, serving, b) for b in sizes])
