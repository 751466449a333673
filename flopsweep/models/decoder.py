"""Decoder-only language models: GPT-2, GPT-3 and LLaMA-style (RMSNorm, SwiGLU, RoPE, grouped-query heads).

One configurable stack covers all three; the presets in ``conf/model/`` pick the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from flopsweep.models.base import BatchShape, ModelConfig, check_heads, check_positive, check_seq_len, token_batch
from flopsweep.models.layers import Block, make_norm
from flopsweep.errors import require


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
        check_seq_len(batch, self.max_positions)


# train=frozen_backbone trains HEAD and the last train.trainable_layers blocks of BLOCKS
HEAD = ("lm_head",)
BLOCKS = "blocks"

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
        x = self.tok_embedding(tokens)
        if self.cfg.positions == "learned":
            x = x + self.pos_embedding(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm(x))
        return self.loss(logits.flatten(0, 1), targets.flatten())


def example_inputs(cfg: Config, batch: BatchShape, device) -> dict[str, torch.Tensor]:
    return {"tokens": token_batch(cfg.vocab_size, batch, device), "targets": token_batch(cfg.vocab_size, batch, device)}


def analytic_forward_flops(cfg: Config, batch: BatchShape) -> int:
    """Matmul FLOPs of one forward pass in closed form: with d_ff = 4d, full attention and one KV head per
    query head this is Megatron-LM's ``24*B*s*l*h^2 * (1 + s/(6h) + V/(12*l*h))``."""
    d, tokens, s = cfg.d_model, batch.size * batch.seq_len, batch.seq_len
    head_dim = d // cfg.n_head
    kv = (cfg.n_kv_head or cfg.n_head) * head_dim
    d_ff = cfg.d_ff or 4 * d
    mlp_matrices = 3 if cfg.act == "swiglu" else 2
    per_layer = 2 * tokens * d * (d + 2 * kv) + 2 * tokens * d * d + mlp_matrices * 2 * tokens * d * d_ff \
        + 4 * batch.size * s * s * d
    return cfg.n_layer * per_layer + 2 * tokens * d * cfg.vocab_size
