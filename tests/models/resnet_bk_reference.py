"""The ResNet-BK reference FLOPs counter (repository ``neko-jpg/Project-ResNet-BK-...``, snapshot ``600c44a``,
``src/benchmarks/flops_counter.py``) as closed-form arithmetic: nothing is built or run, no torch needed.

Per component (B batch, N sequence, D width, E experts, K top-k, V vocabulary; multiply-add = 2):

==================  ========================================  ===========
component           forward                                   backward
==================  ========================================  ===========
BK-Core             34*B*N                                    26*B*N
MoE                 2*B*N*D*E + 3*B*N*E + B*N*K*(8D^2 + 2D)   2 x forward
Linear(in, out)     2*B*N*in*out                              2 x forward
LayerNorm           5*B*N*D                                   5*B*N*D
Embedding           B*N*D                                     B*N*D
optimizer step      Adam/AdamW 15*P, otherwise 2*P (SGD)      --
==================  ========================================  ===========

forward = Embedding + L * (LayerNorm + MoE + BK-Core + Linear(2, D)) + final LayerNorm + Linear(D, V).
``Linear(D, 1)`` (the potential), residual adds, clamps and the loss are not counted, as in the reference.
For the default model at batch 32 this gives the reference's published ``flops_baseline.json`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional


@dataclass(frozen=True)
class Dims:
    """The shape a count is made for. ``n_seq`` (the model's fixed length, for the parameter count)
    defaults to ``seq_len``."""

    batch_size: int
    seq_len: int
    d_model: int = 64
    n_layers: int = 4
    num_experts: int = 4
    top_k: int = 1
    vocab_size: int = 30000
    n_seq: Optional[int] = None

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


def dims_of(cfg, batch) -> Dims:
    """The shape for flopsweep's ResNet-BK config (``models.resnet_bk.Config``) at a batch (``BatchShape``)."""
    return Dims(batch_size=batch.size, seq_len=batch.seq_len or cfg.n_seq, d_model=cfg.d_model, n_layers=cfg.n_layers,
                num_experts=cfg.num_experts, top_k=cfg.top_k, vocab_size=cfg.vocab_size, n_seq=cfg.n_seq)


@dataclass(frozen=True)
class Flops:
    forward: int = 0
    backward: int = 0
    optimizer: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.optimizer

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.forward + other.forward, self.backward + other.backward, self.optimizer + other.optimizer)

    def times(self, n: int) -> "Flops":
        return Flops(self.forward * n, self.backward * n, self.optimizer * n)


def embedding(d: Dims) -> Flops:
    f = d.tokens * d.d_model
    return Flops(f, f)


def layernorm(d: Dims) -> Flops:
    f = 5 * d.tokens * d.d_model
    return Flops(f, f)


def linear(d: Dims, in_features: int, out_features: int) -> Flops:
    f = 2 * d.tokens * in_features * out_features
    return Flops(f, 2 * f)


def moe(d: Dims) -> Flops:
    D, E, K = d.d_model, d.num_experts, d.top_k
    f = 2 * d.tokens * D * E + 3 * d.tokens * E + d.tokens * K * (8 * D * D + 2 * D)
    return Flops(f, 2 * f)


def bk_core(d: Dims) -> Flops:
    # forward per position: theta 14 + phi 14 + one complex division 6; backward: G^2 6 + blended gradient 20
    return Flops(34 * d.tokens, 26 * d.tokens)


def layer(d: Dims) -> Flops:
    return layernorm(d) + moe(d) + bk_core(d) + linear(d, 2, d.d_model)


def trainable_params(d: Dims) -> int:
    """``P = V*D + n_seq*D + L*[2D + E*(4D^2 + 3D) + (D*E + E) + (D + 1) + 3D + 1] + 2D + (D*V + V)``."""
    D, E, V = d.d_model, d.num_experts, d.vocab_size
    n_seq = d.seq_len if d.n_seq is None else d.n_seq
    per_layer = 2 * D + E * (4 * D * D + 3 * D) + (D * E + E) + (D + 1) + 3 * D + 1
    return V * D + n_seq * D + d.n_layers * per_layer + 2 * D + (D * V + V)


def optimizer_step(params: int, optimizer: str = "adamw") -> int:
    """15 FLOPs per parameter for Adam and AdamW, 2 for anything else: the reference falls back to SGD's
    count for every name it does not know (momentum SGD and Adafactor included)."""
    return (15 if optimizer.lower() in ("adam", "adamw") else 2) * params


@dataclass(frozen=True)
class ReferenceCount:
    """One training step as the reference counts it, with the per-component breakdown (keys ``embedding``,
    ``layer_0`` .. ``layer_{L-1}``, ``final_layernorm``, ``lm_head``, in that order)."""

    dims: Dims
    optimizer_name: str
    params: int
    breakdown: Mapping[str, Flops]

    @property
    def step(self) -> Flops:
        total = Flops(optimizer=optimizer_step(self.params, self.optimizer_name))
        for part in self.breakdown.values():
            total = total + part
        return total

    @property
    def forward(self) -> int:
        return self.step.forward

    @property
    def backward(self) -> int:
        return self.step.backward

    @property
    def optimizer(self) -> int:
        return self.step.optimizer

    @property
    def total(self) -> int:
        return self.step.total

    def training_cost(self, steps: int) -> int:
        """FLOPs of ``steps`` training steps."""
        return self.total * steps

    def top_bottlenecks(self, n: int = 3) -> list[tuple[str, int, float]]:
        """The ``n`` components with the most forward FLOPs: ``(name, forward FLOPs, share of the forward)``."""
        forward = self.forward
        ranked = sorted(self.breakdown.items(), key=lambda item: item[1].forward, reverse=True)
        return [(name, part.forward, part.forward / forward) for name, part in ranked[:n]]


def count(d: Dims, optimizer: str = "adamw") -> ReferenceCount:
    parts: dict[str, Flops] = {"embedding": embedding(d)}
    for i in range(d.n_layers):
        parts[f"layer_{i}"] = layer(d)
    parts["final_layernorm"] = layernorm(d)
    parts["lm_head"] = linear(d, d.d_model, d.vocab_size)
    return ReferenceCount(d, optimizer, trainable_params(d), MappingProxyType(parts))


@dataclass(frozen=True)
class Speedup:
    forward: float
    backward: float
    total: float


def compare(model: ReferenceCount, baseline: ReferenceCount) -> Speedup:
    """The reference's "speedup" of ``model`` over ``baseline``: ``baseline FLOPs / model FLOPs`` per phase
    (0.0 where the model's count is 0, as the reference does)."""
    def ratio(base: int, mine: int) -> float:
        return base / mine if mine > 0 else 0.0

    return Speedup(ratio(baseline.forward, model.forward), ratio(baseline.backward, model.backward),
                   ratio(baseline.total, model.total))
