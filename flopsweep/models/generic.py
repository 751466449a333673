"""A generic transformer described by the JSON fields of profiler scripts (``embed_dim``, ``num_heads``,
``ff_dim``, ``seq_len``, ``memory_seq_len``, ``num_encoder_blocks``, ``num_decoder_blocks``), as overrides or
from a JSON file (``model.json_file=path``; the file's values replace the preset's, and the command line's replace
the file's).

Its input is continuous embeddings (no vocabulary); the loss is an MSE against a random target:

- encoder-only (``num_decoder_blocks: 0``): ``seq_len`` tokens through the encoder blocks (ViT, BERT);
- decoder-only (``num_encoder_blocks: 0, memory_seq_len: 0``): causal self-attention only (GPT-3);
- otherwise decoder blocks cross-attend to a memory of ``memory_seq_len`` tokens: the encoder's output when
  there are encoder blocks (the encoder then runs over ``memory_seq_len`` tokens), else a random input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from flopsweep.core.errors import ConfigError, require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, check_heads, check_positive
from flopsweep.models.layers import Block

PRIOR_FIELDS = ("embed_dim", "num_heads", "ff_dim", "seq_len", "memory_seq_len", "num_encoder_blocks",
                "num_decoder_blocks")


@dataclass
class Config(ModelConfig):
    family: str = "generic"
    embed_dim: int = 512
    num_heads: int = 8
    ff_dim: int = 2048
    seq_len: int = 128
    memory_seq_len: int = 0
    num_encoder_blocks: int = 2
    num_decoder_blocks: int = 0
    json_file: Optional[str] = None
    dropout: float = 0.0

    @property
    def default_seq_len(self) -> int:
        return self.seq_len

    @property
    def has_memory(self) -> bool:
        return self.num_decoder_blocks > 0 and (self.num_encoder_blocks > 0 or self.memory_seq_len > 0)

    def validate(self, batch: BatchShape) -> None:
        check_positive(self, "embed_dim", "num_heads", "ff_dim", "seq_len")
        check_heads(self.embed_dim, self.num_heads, "model.num_heads", "model.embed_dim")
        for name in ("memory_seq_len", "num_encoder_blocks", "num_decoder_blocks"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, f"model.{name}", value, "must be an integer >= 0")
        require(self.num_encoder_blocks + self.num_decoder_blocks > 0, "model.num_encoder_blocks",
                self.num_encoder_blocks, "and model.num_decoder_blocks are both 0: no blocks to measure")
        if self.num_encoder_blocks and self.num_decoder_blocks:
            require(self.memory_seq_len >= 1, "model.memory_seq_len", self.memory_seq_len,
                    "must be >= 1 for an encoder-decoder (the encoder's input length)")


def json_fields(given: dict[str, Any]) -> dict[str, Any]:
    """The fields of the JSON file ``model.json_file`` names, if it names one."""
    path = given.get("json_file")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError("model.json_file", path, f"cannot be read as JSON: {err}") from None
    require(isinstance(data, dict), "model.json_file", path, "must hold a JSON object")
    unknown = sorted(set(data) - set(PRIOR_FIELDS))
    require(not unknown, "model.json_file", path, f"has unknown keys {unknown} (known: {', '.join(PRIOR_FIELDS)})")
    return data


class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        block = dict(d=cfg.embed_dim, n_head=cfg.num_heads, d_ff=cfg.ff_dim, act="gelu", dropout=cfg.dropout)
        self.encoder = nn.ModuleList(Block(**block) for _ in range(cfg.num_encoder_blocks))
        self.decoder = nn.ModuleList(Block(**block, causal=True, cross=cfg.has_memory)
                                     for _ in range(cfg.num_decoder_blocks))
        self.loss = nn.MSELoss()

    def forward(self, x: torch.Tensor, target: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.decoder:
            for block in self.encoder:
                x = block(x)
            return self.loss(x, target)
        if self.encoder:
            for block in self.encoder:
                memory = block(memory)
        for block in self.decoder:
            x = block(x, memory)
        return self.loss(x, target)


def example_inputs(cfg: Config, batch: BatchShape, device) -> dict[str, torch.Tensor]:
    shape = (batch.size, batch.seq_len, cfg.embed_dim)
    inputs = {"x": torch.randn(shape, device=device), "target": torch.randn(shape, device=device)}
    if cfg.has_memory:
        inputs["memory"] = torch.randn(batch.size, cfg.memory_seq_len, cfg.embed_dim, device=device)
    return inputs


def analytic_forward_flops(cfg: Config, batch: BatchShape) -> int:
    B, d, ff = batch.size, cfg.embed_dim, cfg.ff_dim
    S = batch.seq_len
    M = cfg.memory_seq_len
    enc_len = S if not cfg.num_decoder_blocks else M

    def self_block(length: int) -> int:
        tokens = B * length
        return 2 * tokens * (4 * d * d + 2 * d * ff) + 4 * B * length * length * d

    total = cfg.num_encoder_blocks * self_block(enc_len)
    cross = 2 * B * S * d * d + 2 * B * M * 2 * d * d + 2 * B * S * d * d + 4 * B * S * M * d if cfg.has_memory else 0
    return total + cfg.num_decoder_blocks * (self_block(S) + cross)


def shape(cfg: Config) -> ModelShape:
    """Its layers are the encoder's blocks where it has some, else the decoder's; it is no language model."""
    return ModelShape.transformer(cfg.embed_dim, cfg.num_encoder_blocks or cfg.num_decoder_blocks, cfg.num_heads)


FAMILIES.add("generic", Family("generic", Config, Model, example_inputs, shape, file_fields=json_fields,
                               forward_flops=analytic_forward_flops))
