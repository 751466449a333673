"""Encoder-decoder models: T5 (Raffel et al. 2020, as Hugging Face T5Model v1.0 with its tied LM head) and the
Transformer of Vaswani et al. 2017. One config covers both; ``style`` picks the differences:

- ``t5``: no biases, RMS norm, pre-norm, ReLU, ``d_kv`` per head, relative position buckets (a learned
  per-head bias owned by each stack's first layer, added to every self-attention of that stack), unscaled
  attention, a final norm per stack, shared embedding with the decoder output scaled by ``d_model**-0.5``
  before the tied head;
- ``vaswani``: biases, LayerNorm after each residual add (no final norm), ReLU, sinusoidal positions,
  embeddings scaled by ``sqrt(d_model)``; source, target and output share one vocabulary and one matrix.

``batch.seq_len`` is the source (encoder) length; ``target_len`` the target (decoder) length, by default the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from flopsweep.core.errors import require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, check_positive, check_seq_len, token_batch
from flopsweep.models.layers import Block, make_norm, sinusoidal_positions

STYLES = ("t5", "vaswani")


@dataclass
class Config(ModelConfig):
    family: str = "seq2seq"
    style: str = "t5"                    # t5 | vaswani
    d_model: int = 512
    n_layer: int = 6                     # per stack
    n_head: int = 8
    d_kv: Optional[int] = None           # per-head width; None = d_model / n_head
    d_ff: int = 2048
    vocab_size: int = 32128
    # Neither style has a hard limit (relative buckets and sine positions extend to any length); 512 is the
    # length T5 was pre-trained at, and far above the ~25-token sentences of Vaswani et al.'s WMT batches.
    max_positions: int = 512
    default_seq_len: int = 512
    target_len: Optional[int] = None     # decoder length; None = batch.seq_len
    relative_buckets: int = 32           # t5 only
    relative_max_distance: int = 128     # t5 only
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.d_kv or self.d_model // self.n_head

    def validate(self, batch: BatchShape) -> None:
        require(self.style in STYLES, "model.style", self.style, f"must be one of {', '.join(STYLES)}")
        check_positive(self, "d_model", "n_layer", "n_head", "d_ff", "vocab_size", "max_positions")
        if self.d_kv is None:
            require(self.d_model % self.n_head == 0, "model.n_head", self.n_head,
                    f"must divide model.d_model={self.d_model} (or set model.d_kv)")
        else:
            check_positive(self, "d_kv")
        if self.style == "t5":
            check_positive(self, "relative_buckets", "relative_max_distance")
            # the encoder's buckets are halved by direction, then halved again into exact and log-spaced ones
            require(self.relative_buckets >= 4, "model.relative_buckets", self.relative_buckets, "must be >= 4")
            exact = self.relative_buckets // 2  # the decoder's exact buckets, the most of either stack
            require(self.relative_max_distance > exact, "model.relative_max_distance", self.relative_max_distance,
                    f"must exceed model.relative_buckets / 2 = {exact}")
        check_seq_len(batch, self.max_positions)
        if self.target_len is not None:
            require(isinstance(self.target_len, int) and 1 <= self.target_len <= self.max_positions,
                    "model.target_len", self.target_len,
                    f"must be between 1 and model.max_positions={self.max_positions} (or null: batch.seq_len)")


def relative_buckets(q_len: int, k_len: int, bidirectional: bool, buckets: int, max_distance: int,
                     device: torch.device | str) -> torch.Tensor:
    """T5's bucketing of key-minus-query offsets: exact for small offsets, logarithmic up to max_distance.
    Returns (q_len, k_len) bucket ids."""
    offset = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
    base = torch.zeros_like(offset)
    if bidirectional:
        buckets //= 2
        base = (offset > 0).long() * buckets
        distance = offset.abs()
    else:
        distance = (-offset).clamp(min=0)
    exact = buckets // 2
    # clamp(min=1): log(0) is never selected below, but would be -inf before the where
    log_bucket = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                          * (buckets - exact)).long()
    return base + torch.where(distance < exact, distance, log_bucket.clamp(max=buckets - 1))


class Stack(nn.Module):
    """The encoder (bidirectional self-attention) or the decoder (causal self-attention and cross-attention)."""

    def __init__(self, cfg: Config, decoder: bool):
        super().__init__()
        t5 = cfg.style == "t5"
        self.cfg, self.decoder = cfg, decoder
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_head, cfg.d_ff, norm="rmsnorm" if t5 else "layernorm",
                  norm_eps=1e-6 if t5 else 1e-5, prenorm=t5, act="relu", bias=not t5, causal=decoder, cross=decoder,
                  head_dim=cfg.head_dim, scale=1.0 if t5 else None, dropout=cfg.dropout)
            for _ in range(cfg.n_layer))
        if t5:
            # As in T5 (and its Hugging Face parameter names), the first layer owns the stack's relative
            # position bias; the stack computes it once and every layer's self-attention adds it.
            self.blocks[0].relative_bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)
            self.norm = make_norm("rmsnorm", cfg.d_model, 1e-6)

    def position_bias(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        buckets = relative_buckets(length, length, not self.decoder, self.cfg.relative_buckets,
                                   self.cfg.relative_max_distance, device)
        return self.blocks[0].relative_bias(buckets).permute(2, 0, 1).unsqueeze(0).to(dtype)  # (1, H, S, S)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        t5 = self.cfg.style == "t5"
        bias = self.position_bias(x.shape[1], x.device, x.dtype) if t5 else None
        for block in self.blocks:
            x = block(x, memory, bias)
        return self.norm(x) if t5 else x



class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, decoder=False)
        self.decoder = Stack(cfg, decoder=True)
        self.loss = nn.CrossEntropyLoss()

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.shared(tokens)
        if self.cfg.style == "vaswani":
            d = self.cfg.d_model
            x = x * math.sqrt(d) + sinusoidal_positions(tokens.shape[1], d, x.device, x.dtype)
        return x

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        memory = self.encoder(self._embed(src))
        y = self.decoder(self._embed(tgt), memory)
        if self.cfg.style == "t5":
            y = y * self.cfg.d_model ** -0.5
        logits = F.linear(y, self.shared.weight)  # the tied output projection
        return self.loss(logits.flatten(0, 1), targets.flatten())


def example_inputs(cfg: Config, batch: BatchShape, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Source tokens (B, seq_len), decoder input tokens and targets (B, target_len)."""
    target_len = cfg.target_len or batch.seq_len
    return {"src": token_batch(cfg.vocab_size, batch, device),
            "tgt": token_batch(cfg.vocab_size, batch, device, target_len),
            "targets": token_batch(cfg.vocab_size, batch, device, target_len)}


def analytic_forward_flops(cfg: Config, batch: BatchShape) -> int:
    """Matmul FLOPs of one forward pass: both stacks' projections, feed-forward and attention (QK^T and AV,
    the full S^2 for the causal self-attention too), and the output projection over the target tokens."""
    B, S, d, ff, V = batch.size, batch.seq_len, cfg.d_model, cfg.d_ff, cfg.vocab_size
    T = cfg.target_len or S
    inner = cfg.n_head * (cfg.d_kv or d // cfg.n_head)

    def projections(tokens: int) -> int:       # q, k, v and out of one self-attention
        return 2 * tokens * d * inner * 4

    def attention(q_len: int, k_len: int) -> int:
        return 2 * 2 * B * q_len * k_len * inner

    def feed_forward(tokens: int) -> int:
        return 2 * tokens * d * ff * 2

    encoder_layer = projections(B * S) + attention(S, S) + feed_forward(B * S)
    cross = 2 * (B * T) * d * inner * 2 + 2 * (B * S) * d * inner * 2 + attention(T, S)  # q, out; k, v
    decoder_layer = projections(B * T) + attention(T, T) + cross + feed_forward(B * T)
    return cfg.n_layer * (encoder_layer + decoder_layer) + 2 * B * T * d * V


def shape(cfg: Config) -> ModelShape:
    return ModelShape.transformer(cfg.d_model, cfg.n_layer, cfg.n_head, head_dim=cfg.d_kv)  # layers: per stack


FAMILIES.add("seq2seq", Family("seq2seq", Config, Model, example_inputs, shape, head=("shared",),
                              blocks="decoder.blocks", forward_flops=analytic_forward_flops))
