"""Decoder-only language models: GPT-2, GPT-3 and LLaMA-style (RMSNorm, SwiGLU, RoPE, grouped-query heads).

One configurable stack covers all three; the presets in ``conf/model/`` pick the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from flopsweep.core.errors import require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import (FAMILIES, BatchShape, Family, ModelConfig, TrainPlan, check_heads, check_positive,
                                   check_seq_len, language_model_inputs)
from flopsweep.models.layers import KV, Block, make_norm


@dataclass
class Config(ModelConfig):
    family: str = "decoder"
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: Optional[int] = None      # grouped-query attention; None = n_head
    d_ff: Optional[int] = None           # None = 4 * d_model
    vocab_size: int = 50257
    max_positions: int = 1024
    default_seq_len: int = 1024
    norm: str = "layernorm"              # layernorm | rmsnorm
    norm_eps: float = 1e-5
    act: str = "gelu_tanh"               # gelu | gelu_tanh | relu | swiglu
    positions: str = "learned"           # learned | rope
    rope_theta: float = 10000.0
    bias: bool = True                    # biases of the linear layers and norms
    qkv_bias: Optional[bool] = None      # None = bias (Qwen2: true with bias false)
    tie_embeddings: bool = True
    dropout: float = 0.0

    def validate(self, batch: BatchShape) -> None:
        check_positive(self, "d_model", "n_layer", "n_head", "vocab_size", "max_positions")
        check_heads(self.d_model, self.n_head)
        if self.n_kv_head is not None:
            check_positive(self, "n_kv_head")
            require(self.n_head % self.n_kv_head == 0, "model.n_kv_head", self.n_kv_head,
                    f"must divide model.n_head={self.n_head}")
        require(self.norm in ("layernorm", "rmsnorm"), "model.norm", self.norm, "must be layernorm or rmsnorm")
        require(self.act in ("gelu", "gelu_tanh", "relu", "swiglu"), "model.act", self.act,
                "must be gelu, gelu_tanh, relu or swiglu")
        require(self.positions in ("learned", "rope"), "model.positions", self.positions, "must be learned or rope")
        require(self.positions != "rope" or (self.d_model // self.n_head) % 2 == 0, "model.n_head", self.n_head,
                f"gives heads of width {self.d_model // self.n_head}: rope rotates pairs, so it must be even")
        require(self.positions != "rope" or self.rope_theta > 0, "model.rope_theta", self.rope_theta, "must be > 0")
        require(self.norm_eps > 0, "model.norm_eps", self.norm_eps, "must be > 0")
        check_seq_len(batch, self.max_positions)



class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_embedding = nn.Embedding(cfg.vocab_size, d)
        if cfg.positions == "learned":
            self.pos_embedding = nn.Embedding(cfg.max_positions, d)
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_head, cfg.d_ff or 4 * d, norm=cfg.norm, norm_eps=cfg.norm_eps, norm_bias=cfg.bias,
                  act=cfg.act, bias=cfg.bias, qkv_bias=cfg.qkv_bias, causal=True, n_kv_head=cfg.n_kv_head,
                  rope_theta=cfg.rope_theta if cfg.positions == "rope" else None, dropout=cfg.dropout)
            for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg.norm, d, cfg.norm_eps, cfg.bias)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embedding.weight
        self.loss = nn.CrossEntropyLoss()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self._embed(tokens, 0)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm(x))
        return self.loss(logits.flatten(0, 1), targets.flatten())

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        x = self.tok_embedding(tokens)
        if self.cfg.positions == "learned":
            x = x + self.pos_embedding(torch.arange(start, start + tokens.shape[1], device=tokens.device))
        return x

    def step(self, tokens: torch.Tensor, cache: Optional[list[KV]]) -> tuple[torch.Tensor, list[KV]]:
        """Generation: the next-token logits of the last position of ``tokens`` (B, S), which follow the ``cache``
        (None: empty), and the cache with them appended (one ``(keys, values)`` per block)."""
        x = self._embed(tokens, cache[0][0].shape[-2] if cache else 0)
        present = []
        for block, past in zip(self.blocks, cache or [None] * len(self.blocks)):
            x, kv = block.step(x, past)
            present.append(kv)
        return self.lm_head(self.norm(x[:, -1:])), present


@dataclass
class Steps:
    """The decoder's :class:`~flopsweep.models.base.Generator`."""

    model: Model

    @property
    def vocab_size(self) -> int:
        return self.model.cfg.vocab_size

    def prefill(self, tokens: torch.Tensor) -> list[KV]:
        return self.model.step(tokens, None)[1]

    def decode(self, tokens: torch.Tensor, cache: list[KV]) -> list[KV]:
        return self.model.step(tokens, cache)[1]


def linear_shapes(cfg: Config) -> dict[str, tuple[int, int]]:
    """Each block's linear layers as ``(in, out)`` features, by the names ``train.targets`` uses, in the order
    they run (``gate`` with SwiGLU only); the head ``lm_head`` is ``(d_model, vocab_size)``."""
    d = cfg.d_model
    kv = (cfg.n_kv_head or cfg.n_head) * (d // cfg.n_head)
    d_ff = cfg.d_ff or 4 * d
    gate = {"gate": (d, d_ff)} if cfg.act == "swiglu" else {}
    return {"qkv": (d, d + 2 * kv), "out": (d, d), **gate, "up": (d, d_ff), "down": (d_ff, d)}


def lora_params(cfg: Config, train: TrainPlan) -> int:
    """Trainable parameters under ``train=lora``: ``r*(in + out)`` per adapted linear (A is r x in, B out x r),
    once per block for the block's linears and once for ``lm_head``."""
    blocks = sum(train.rank * (i + o) for name, (i, o) in linear_shapes(cfg).items() if name in train.targets)
    head = train.rank * (cfg.d_model + cfg.vocab_size) if "lm_head" in train.targets else 0
    return cfg.n_layer * blocks + head


def analytic_forward_flops(cfg: Config, batch: BatchShape, train: Optional[TrainPlan] = None) -> int:
    """Matmul FLOPs of one forward pass in closed form: with d_ff = 4d, full attention and one KV head per
    query head this is Megatron-LM's ``24*B*s*l*h^2 * (1 + s/(6h) + V/(12*l*h))``. Under ``train=lora`` each
    adapter adds ``x A^T`` then ``(.) B^T``: one multiply-add per adapter parameter per token,
    ``2*tokens*lora_params``."""
    tokens, s = batch.tokens, batch.seq_len
    per_layer = sum(2 * tokens * i * o for i, o in linear_shapes(cfg).values()) + 4 * batch.size * s * s * cfg.d_model
    base = cfg.n_layer * per_layer + 2 * tokens * cfg.d_model * cfg.vocab_size
    return base + (2 * tokens * lora_params(cfg, train) if train is not None and train.mode == "lora" else 0)


def analytic_backward_flops(cfg: Config, batch: BatchShape, train: TrainPlan) -> int:
    """Matmul FLOPs of one backward pass in closed form for ``train.mode`` full, frozen_backbone or lora, with the
    counter's conventions: multiply-add = 2, attention backward twice its forward (dQ, dK, dV, dP over the full
    ``S^2``, whatever ``measure.causal_attention`` says).

    A matmul runs in backward only where autograd needs it, so the layers are walked in forward order tracking
    whether the activation carries a gradient (``live``): a linear layer costs its weight gradient if its weight
    trains and its input gradient if its input is live, and the attention of a block runs backward if its q, k,
    v are live. Tokens are integers, so the stream is live from the start only if the token embedding trains:
    under ``full``, and under ``frozen_backbone`` with a tied head (the head's weight is the embedding's). A
    block that trains makes its norms' outputs live, so its first matmul already has an input gradient. Under
    ``lora`` nothing of the base trains: the stream turns live at the first adapter, so every frozen matmul
    before it (the first block's ``qkv`` input gradient, with ``qkv`` adapted) never runs backward, and every
    one after it does. ``full`` is exactly twice the forward."""
    tokens, s = batch.tokens, batch.seq_len
    first_training_block = {"full": 0, "frozen_backbone": cfg.n_layer - train.trainable_layers}.get(
        train.mode, cfg.n_layer)
    ranks = {name: train.rank for name in train.targets} if train.mode == "lora" else {}
    shapes = {**linear_shapes(cfg), "lm_head": (cfg.d_model, cfg.vocab_size)}

    total = 0

    def linear(name: str, live: bool, trains: bool) -> bool:
        nonlocal total
        flops, live_out = _linear_backward(tokens, *shapes[name], live, trains, ranks.get(name, 0))
        total += flops
        return live_out

    live = train.mode == "full" or (train.mode == "frozen_backbone" and cfg.tie_embeddings)
    for layer in range(cfg.n_layer):
        trains = layer >= first_training_block
        attention_live = linear("qkv", live or trains, trains)
        if attention_live:
            total += 8 * batch.size * s * s * cfg.d_model
        live = linear("out", attention_live, trains)  # the residual add: live before implies live here
        hidden_live = [linear(name, live or trains, trains) for name in ("gate", "up") if name in shapes]  # all run
        live = linear("down", any(hidden_live), trains)
    linear("lm_head", live, train.mode != "lora")
    return total


def _linear_backward(tokens: int, d_in: int, d_out: int, live: bool, trains: bool, rank: int) -> tuple[int, bool]:
    """Backward matmul FLOPs of one linear layer over ``tokens`` rows, and whether its output is live.

    ``2*t*in*out`` for its weight gradient if it trains, the same for its input gradient ``g W`` if its input
    is live. A LoRA adapter of rank r (0: none) always adds B's weight gradient and the gradient into ``x A^T``
    (``2*t*r*out`` each) and A's weight gradient (``2*t*r*in``), and with a live input ``2*t*r*in`` more for
    the input gradient through A."""
    flops = 2 * tokens * d_in * d_out * (int(trains) + int(live))
    if rank:
        flops += 2 * tokens * rank * (2 * d_out + d_in * (1 + int(live)))
    return flops, live or trains or rank > 0


def train_flops(cfg: Config, batch: BatchShape, train: TrainPlan) -> tuple[int, Optional[int]]:
    """The closed forms for ``train.mode``: forward (LoRA's adapters included) and backward (the caller drops it for a
    forward-only workload)."""
    return analytic_forward_flops(cfg, batch, train), analytic_backward_flops(cfg, batch, train)


def shape(cfg: Config) -> ModelShape:
    return ModelShape.transformer(cfg.d_model, cfg.n_layer, cfg.n_head, cfg.n_kv_head, causal_lm=True)


FAMILIES.add("decoder", Family("decoder", Config, Model, language_model_inputs, shape, head=("lm_head",),
                               blocks="blocks", forward_flops=analytic_forward_flops, train_flops=train_flops,
                               generator=lambda cfg: Steps, longest=lambda cfg: cfg.max_positions))
