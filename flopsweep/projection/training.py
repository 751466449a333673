"""Training-cost projection: from one measured step and a training plan to total FLOPs, GPU-hours, wall-clock
days, money and energy, three ways side by side (the inverse, what a budget buys, is
:mod:`flopsweep.projection.budget`).

The three totals (multiply-add = 2, matmul class only, as every ``flops/*`` metric):

- ``counted``: the measured forward + backward FLOPs per token × tokens, plus the measured optimizer step ×
  steps. Exact for the measured model at the measured sequence length, attention and all.
- ``6ND``: 6 × N × D, with N every parameter counted once (embeddings included) and D the tokens.
- ``6ND+attention``: PaLM's per-token ``6·N + 12·L·H·Q·T`` (L layers, H heads, Q head width, T sequence
  length), for decoder-only models; attention over the full T×T square, the MFU convention.

Activation recomputation adds one forward pass per step: counted + one measured forward, 8ND, and
``8·N + 16·L·H·Q·T``. An inference job (``workload=inference``: forward only) projects the tokens it processes:
counted forward × tokens, ``2ND`` and ``2·N + 4·L·H·Q·T``. Time = FLOPs / (GPUs × peak × MFU), divided by
(1 − pipeline bubble) when a parallel layout (:mod:`flopsweep.projection.parallel`) is given; it also sets the
GPU count and adds the per-device figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from flopsweep.core import metrics as M
from flopsweep.core.errors import require
from flopsweep.core.result import Result
from flopsweep.core.shape import ModelShape, from_config, shape_of
from flopsweep.core.text import billions, table, whole
from flopsweep.projection.parallel import PerDevice
from flopsweep.projection.parallel import notes as parallel_notes
from flopsweep.projection.parallel import table as per_device_table

TOKENS_PER_PARAM = 20  # compute-optimal data (Hoffmann et al. 2022)
METHODS = ("counted", "6ND", "6ND+attention")
INFERENCE_METHODS = ("counted", "2ND", "2ND+attention")  # forward only: a third of training's closed forms


@dataclass(frozen=True)
class PerToken:
    """What one training token costs the model, from a measured step (or its config, for the closed forms)."""

    model: str
    params: int                         # N: the parameters a token uses (a mixture of experts: its top-k experts)
    seq_len: int
    counted: Optional[float]            # measured forward + backward FLOPs per token
    counted_forward: Optional[float]    # measured forward FLOPs per token (what recomputation adds)
    optimizer_step: Optional[float]     # measured FLOPs of one optimizer step (the mean over many, for GaLore)
    attention: Optional[float]          # 12·L·H·Q·T per token (decoders; 4·L·H·Q·T for inference), else None
    source: str = ""
    training: bool = True               # False: a forward-only job, whose tokens are processed, not trained on

    @property
    def methods(self) -> tuple[str, ...]:
        return METHODS if self.training else INFERENCE_METHODS

    @classmethod
    def from_result(cls, result: Result, source: str = "") -> "PerToken":
        """From a job's result: it must be ``ok`` and have counted a training step, or a forward pass of an
        inference build (``workload=inference``, int8 weights), at a sequence length."""
        m, model = result.metrics, result.config.get("model") or {}
        name = model.get("name", "?")
        require(result.status == "ok", "run", source or name, f"has status {str(result.status)!r}, not 'ok'")
        seq, batch = m.get(M.SEQ_LEN), m.get(M.BATCH_SIZE)  # as run: a left-out seq_len is the model's default
        require(bool(seq) and bool(batch), "run", source or name, "has no batch.seq_len: not a token model")
        require(M.FLOPS_PREFILL not in m, "run", source or name, "is a generation (workload=generate): "
                "flopsweep-project serve projects its prefill and decode steps; train takes a training or a "
                "workload=inference run")
        require(not result.layout, "run", source or name, "is a layout counted rank by rank (parallel.*), which "
                "counts a GPU's step, not the model's: project the model's own run (without parallel.*) with its "
                "--dp --tp --pp --zero, or --model with them and --batch, which counts the layout here")
        require(m.get(M.FLOPS_FORWARD) is not None, "run", source or name,
                "counted nothing (measure.count=false): nothing to project from")
        tokens, attention = int(batch) * int(seq), attention_per_token(shape_of(result), int(seq))
        if m.get(M.FLOPS_BACKWARD) is None:  # forward only: inference
            return cls(model=name, params=active_params(m), seq_len=int(seq), counted=m[M.FLOPS_FORWARD] / tokens,
                       counted_forward=m[M.FLOPS_FORWARD] / tokens, optimizer_step=0.0,
                       attention=None if attention is None else attention / 3.0, source=source, training=False)
        return cls(model=name, params=active_params(m), seq_len=int(seq),
                   counted=(m[M.FLOPS_FORWARD] + m[M.FLOPS_BACKWARD]) / tokens,
                   counted_forward=m[M.FLOPS_FORWARD] / tokens,
                   optimizer_step=m.get(M.FLOPS_OPTIMIZER_MEAN) or m.get(M.FLOPS_OPTIMIZER) or 0.0,
                   attention=attention, source=source)


def active_params(metrics: dict[str, Any]) -> int:
    """N of 6ND and PaLM's forms: the parameters a token uses (``size/params_active``; all of them in a dense model,
    the shared ones and the top-k routed experts in a mixture of experts; runs from before the metric: all)."""
    return int(metrics.get(M.PARAMS_ACTIVE) or metrics[M.PARAMS])


def of_preset(name: str, params: int, seq_len: int, shape: ModelShape | dict[str, Any]) -> PerToken:
    """A preset's closed-form cost from its size and shape alone (nothing counted): for the compute-optimal table.
    ``shape``: its family's, or its config as resolved (whose shape :func:`~flopsweep.core.shape.from_config` reads)."""
    shape = shape if isinstance(shape, ModelShape) else from_config(shape)
    return PerToken(name, params, seq_len, None, None, None, attention_per_token(shape, seq_len))


def attention_per_token(shape: ModelShape, seq_len: int) -> Optional[float]:
    """PaLM's ``12·L·H·Q·T`` for a decoder-only language model (forward + backward, full T×T), else None: one whose
    heads have one width for scores and values (not DeepSeek's MLA)."""
    if not shape.causal_lm or shape.kv_latent or not (shape.layers and shape.heads and shape.head_dim):
        return None
    return 12.0 * shape.layers * shape.heads * shape.head_dim * seq_len


@dataclass(frozen=True)
class Plan:
    """How much training: ``tokens``, and the tokens per optimizer step when known (for the optimizer's share)."""

    tokens: float
    tokens_per_step: Optional[float] = None
    recompute: bool = False
    describe: str = ""
    seq_len: Optional[int] = None       # when the plan names one, it must be the measured one

    @classmethod
    def of_tokens(cls, tokens: float, recompute: bool = False, tokens_per_step: Optional[float] = None) -> "Plan":
        """``tokens``; ``tokens_per_step`` where the step's batch is known (``--batch``), for the optimizer's share."""
        require(tokens > 0, "tokens", tokens, "must be > 0")
        return cls(float(tokens), tokens_per_step, recompute, f"{billions(tokens)} tokens")

    @classmethod
    def of_steps(cls, steps: int, batch: int, seq_len: int, recompute: bool = False) -> "Plan":
        for key, value in (("steps", steps), ("batch", batch), ("seq_len", seq_len)):
            require(value > 0, key, value, "must be > 0")
        per_step = float(batch * seq_len)
        words = f"{steps:,} steps × {batch:,} sequences × {seq_len:,} tokens = {billions(steps * per_step)} tokens"
        return cls(steps * per_step, per_step, recompute, words, seq_len)

    @classmethod
    def compute_optimal(cls, params: int, recompute: bool = False) -> "Plan":
        tokens = float(TOKENS_PER_PARAM * params)
        words = f"compute-optimal: {TOKENS_PER_PARAM} tokens per parameter × {params:,} = {billions(tokens)} tokens"
        return cls(tokens, None, recompute, words)

    @property
    def steps(self) -> Optional[float]:
        return self.tokens / self.tokens_per_step if self.tokens_per_step else None


@dataclass(frozen=True)
class Hardware:
    gpu: str
    gpus: int
    peak_flops: float                   # per GPU, FLOP/s, in the training dtype
    mfu: float
    price_per_gpu_hour: Optional[float] = None
    watts_per_gpu: Optional[float] = None
    mfu_source: str = "assumed"
    memory_bytes: Optional[float] = None  # per GPU, when known: a parallel layout warns above it
    mfu_of_layout: bool = False         # the MFU is a parallel layout's predicted step: its bubble is in it already

    def __post_init__(self) -> None:
        require(self.gpus >= 1, "gpus", self.gpus, "must be >= 1")
        require(self.peak_flops > 0, "peak_tflops", self.peak_flops / 1e12, "must be > 0")
        require(0 < self.mfu <= 1, "mfu", self.mfu, "must be in (0, 1]")
        require(self.price_per_gpu_hour is None or self.price_per_gpu_hour >= 0, "price", self.price_per_gpu_hour,
                "must be >= 0")
        require(self.watts_per_gpu is None or self.watts_per_gpu >= 0, "watts", self.watts_per_gpu, "must be >= 0")
        require(self.memory_bytes is None or self.memory_bytes > 0, "gpu_memory", self.memory_bytes, "must be > 0")

    @property
    def flops_per_gpu_hour(self) -> float:
        return self.peak_flops * self.mfu * 3600.0


@dataclass(frozen=True)
class Row:
    method: str
    flops: Optional[float]
    gpu_hours: Optional[float]
    days: Optional[float]
    cost: Optional[float]
    energy_kwh: Optional[float]


def not_given(price: Optional[float], watts: Optional[float]) -> Optional[str]:
    """What a projection leaves out for want of a flag: ``cost and energy: n/a without --price (...) and --watts
    (...).``; None where both are given (train's and serve's notes)."""
    flags = (("cost", "--price (dollars a GPU-hour)", price), ("energy", "--watts (a GPU's power)", watts))
    missing = [(what, flag) for what, flag, given in flags if given is None]
    return f"{' and '.join(w for w, _ in missing)}: n/a without {' and '.join(f for _, f in missing)}." if missing \
        else None


def cost_row(method: str, flops: Optional[float], hw: Hardware, bubble: float = 0.0) -> Row:
    """Time, cost and energy of ``flops``; a pipeline ``bubble`` idles the GPUs that fraction of the time."""
    if flops is None:
        return Row(method, None, None, None, None, None)
    gpu_hours = flops / hw.flops_per_gpu_hour / (1.0 - bubble)
    return Row(method, flops, gpu_hours, gpu_hours / hw.gpus / 24.0,
               gpu_hours * hw.price_per_gpu_hour if hw.price_per_gpu_hour is not None else None,
               gpu_hours * hw.watts_per_gpu / 1000.0 if hw.watts_per_gpu is not None else None)


def total_flops(cost: PerToken, plan: Plan) -> dict[str, Optional[float]]:
    """FLOPs of the plan, by method of ``cost.methods`` (None where the method does not apply)."""
    require(cost.training or not plan.recompute, "recompute", True,
            f"{cost.model} was measured forward only (inference): there is no backward to recompute for")
    D, N = plan.tokens, cost.params
    counted = None
    if cost.counted is not None:
        per_token = cost.counted + (cost.counted_forward if plan.recompute else 0.0)
        steps = plan.steps if plan.steps is not None else 0.0
        counted = D * per_token + steps * (cost.optimizer_step or 0.0)
    dense = (8.0 if plan.recompute else 6.0 if cost.training else 2.0) * N * D
    attention = None if cost.attention is None else dense + D * cost.attention * (4.0 / 3.0 if plan.recompute else 1.0)
    return dict(zip(cost.methods, (counted, dense, attention)))


@dataclass
class Projection:
    cost: PerToken
    plan: Plan
    hardware: Hardware
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    devices: Optional[PerDevice] = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.cost), "plan": {**asdict(self.plan), "steps": self.plan.steps},
                "hardware": asdict(self.hardware), "rows": [asdict(r) for r in self.rows],
                "parallel": self.devices.to_dict() if self.devices else None, "notes": self.notes}

    def table(self) -> str:
        hw = self.hardware
        head = [f"model {self.cost.model} (N = {self.cost.params:,} parameters, T = {self.cost.seq_len})"
                + (f", from {self.cost.source}" if self.cost.source else ""),
                f"plan  {self.plan.describe}" + ("; activation recomputation" if self.plan.recompute else ""),
                f"on    {hw.gpus:,} × {hw.gpu} at {hw.peak_flops / 1e12:g} TFLOP/s peak, MFU {hw.mfu:.1%} "
                f"({hw.mfu_source})"]
        rows = []
        for r in self.rows:
            rows.append([r.method, "n/a" if r.flops is None else f"{r.flops:.3e}", whole(r.gpu_hours),
                         whole(r.days), "n/a" if r.cost is None else "$" + whole(r.cost), whole(r.energy_kwh)])
        body = table(["method", "FLOPs", "GPU-hours", "days", "cost", "energy (kWh)"], rows)
        if self.devices:
            body += "\n\n" + per_device_table(self.devices, hw.memory_bytes)
        return "\n".join(head + ["", body, ""] + [f"- {n}" for n in self.notes])


def project(cost: PerToken, plan: Plan, hardware: Hardware, devices: Optional[PerDevice] = None) -> Projection:
    """The plan's cost on the hardware; ``devices`` (:func:`~flopsweep.projection.parallel.per_device` of the run)
    adds the per-device figures and the pipeline bubble, and must use ``hardware.gpus`` devices."""
    require(plan.seq_len is None or plan.seq_len == cost.seq_len, "seq_len", plan.seq_len,
            f"differs from the {cost.seq_len} that {cost.model} was measured at: measure it at {plan.seq_len}")
    if devices is not None:
        check_layout(devices, plan, hardware)
        if plan.tokens_per_step is None:  # the measured batch is the global batch of one step: its tokens are known
            plan = replace(plan, tokens_per_step=float(devices.batch * cost.seq_len))
    # a layout counted rank by rank with recomputation has it in its predicted step; its MFU is of the model's FLOPs
    totals = total_flops(cost, replace(plan, recompute=False) if hardware.mfu_of_layout else plan)
    notes = [] if cost.training else [
        "inference: a forward pass only (as measured, or counted); the plan's tokens are processed, not trained on."]
    notes += ["FLOPs: multiply-add = 2, matmul class (matmuls, convolutions, attention); elementwise ops excluded.",
             "N counts every parameter a token uses once, embeddings included (a mixture of experts: its shared "
             "parameters and top-k experts); attention counts the full T×T square (causal masks not halved).",
             "time = FLOPs / (GPUs × peak × MFU); days are wall-clock on all GPUs."]
    if plan.recompute and hardware.mfu_of_layout:
        notes.append("activation recomputation: in the layout's predicted step (counted with parallel.recompute=full),"
                     " so in its MFU, which is of the model's FLOPs (counted, 6ND): the FLOPs leave its forward out.")
    elif plan.recompute:
        notes.append("activation recomputation: one more forward per step (counted + forward, 8ND, 16·L·H·Q·T).")
    if cost.attention is None:
        notes.append(f"{cost.methods[2]} applies to decoder-only models (PaLM's formula): not given for this family.")
    if plan.steps is None and cost.counted is not None and cost.training:
        notes.append("the plan gives no tokens per step, so the optimizer step (per step, not per token) is left "
                     "out of counted; it is about 12·N FLOPs per step for AdamW.")
    unpriced = not_given(hardware.price_per_gpu_hour, hardware.watts_per_gpu)
    notes += [unpriced] if unpriced else []
    notes += parallel_notes(devices, plan.recompute, hardware.mfu_of_layout) if devices else []
    bubble = devices.bubble if devices and not hardware.mfu_of_layout else 0.0
    return Projection(cost, plan, hardware, [cost_row(m, totals[m], hardware, bubble) for m in cost.methods], notes,
                      devices)


def check_layout(devices: PerDevice, plan: Plan, hardware: Hardware) -> None:
    """A parallel layout needs dp·tp·pp GPUs, and a plan's global batch must be the measured one."""
    devices.layout.check_gpus(hardware.gpus)
    batch = plan.tokens_per_step / plan.seq_len if plan.tokens_per_step and plan.seq_len else None
    require(batch is None or batch == devices.batch, "batch", batch and int(batch),
            f"differs from the {devices.batch} sequences measured: with a parallel layout the measured batch is "
            "the global batch of one step: measure that one")
