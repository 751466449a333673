"""BERT (Devlin et al. 2019), as Hugging Face BertModel: word, position and token-type embeddings, post-norm
blocks, the pooler on the first token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flopsweep.core.shape import ModelShape
from flopsweep.models.base import (FAMILIES, BatchShape, Family, ModelConfig, check_heads, check_positive,
                                   check_seq_len, token_batch)
from flopsweep.models.layers import Block


@dataclass
class Config(ModelConfig):
    family: str = "bert"
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 3072
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    default_seq_len: int = 128
    dropout: float = 0.0

    def validate(self, batch: BatchShape) -> None:
        check_positive(self, "d_model", "n_layer", "n_head", "d_ff", "vocab_size", "max_positions", "type_vocab_size")
        check_heads(self.d_model, self.n_head)
        check_seq_len(batch, self.max_positions)



class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.d_model
        self.tok_embedding = nn.Embedding(cfg.vocab_size, d)
        self.pos_embedding = nn.Embedding(cfg.max_positions, d)
        self.type_embedding = nn.Embedding(cfg.type_vocab_size, d)
        self.embedding_norm = nn.LayerNorm(d, eps=1e-12)
        self.blocks = nn.ModuleList(Block(d, cfg.n_head, cfg.d_ff, norm_eps=1e-12, prenorm=False, act="gelu",
                                          dropout=cfg.dropout) for _ in range(cfg.n_layer))
        self.pooler = nn.Linear(d, d)
        # BertModel has no head, and its exact parameter count is the point of this preset, so the training
        # loss is parameter-free: MSE of the hidden states and of the pooled first token against random
        # targets. Both terms are needed for every weight, the pooler's included, to get a gradient.
        self.loss = nn.MSELoss()

    def forward(self, tokens: torch.Tensor, token_types: torch.Tensor, target: torch.Tensor,
                pooled_target: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_embedding(tokens) + self.type_embedding(token_types) + self.pos_embedding(positions)
        x = self.embedding_norm(x)
        for block in self.blocks:
            x = block(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.loss(x, target) + self.loss(pooled, pooled_target)


def example_inputs(cfg: Config, batch: BatchShape, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {"tokens": token_batch(cfg.vocab_size, batch, device),
            "token_types": token_batch(cfg.type_vocab_size, batch, device),
            "target": torch.randn(batch.size, batch.seq_len, cfg.d_model, device=device),
            "pooled_target": torch.randn(batch.size, cfg.d_model, device=device)}


def analytic_forward_flops(cfg: Config, batch: BatchShape) -> int:
    """Per layer QKV/out/FF over all tokens and attention 4*B*S^2*d; the pooler on the first token only."""
    B, S, d = batch.size, batch.seq_len, cfg.d_model
    per_layer = 2 * B * S * (4 * d * d + 2 * d * cfg.d_ff) + 4 * B * S * S * d
    return cfg.n_layer * per_layer + 2 * B * d * d


def shape(cfg: Config) -> ModelShape:
    return ModelShape.transformer(cfg.d_model, cfg.n_layer, cfg.n_head)


FAMILIES.add("bert", Family("bert", Config, Model, example_inputs, shape, head=("pooler",), blocks="blocks",
                            forward_flops=analytic_forward_flops))
