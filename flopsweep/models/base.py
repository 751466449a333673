"""What every model family provides, and the shapes of a synthetic batch.

A family is a module in ``flopsweep.models`` with three things:

- ``Config``: a dataclass of the family's fields (``family`` and ``name`` first); ``validate(batch)``
  raises :class:`~flopsweep.errors.ConfigError` naming ``model.<field>`` or ``batch.<field>``;
- ``Model(cfg)``: an ``nn.Module`` whose ``forward(**inputs)`` returns the scalar training loss (the loss
  is a submodule named ``loss`` so that its cost shows in the per-module breakdown);
- ``example_inputs(cfg, batch, device)``: the synthetic inputs, targets included, as a dict.

Models are built under ``with torch.device(...)`` so they can be made directly on ``meta``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from flopsweep.errors import ConfigError, require, require_int


@dataclass(frozen=True)
class BatchShape:
    """The resolved shape of one training batch (``seq_len``/``image_size`` filled from the model's defaults)."""

    size: int
    seq_len: Optional[int] = None
    image_size: Optional[int] = None

    @property
    def tokens(self) -> int:
        return self.size * (self.seq_len or 1)


@dataclass
class ModelConfig:
    family: str = ""
    name: str = ""

    def resolve_batch(self, size: int, seq_len: Optional[int], image_size: Optional[int]) -> BatchShape:
        """The batch shape for this model: unset dimensions come from the model's defaults. Each dimension
        applies to the models that have it, so that one sweep can mix text and image models: text models
        take ``batch.seq_len`` and ignore ``batch.image_size``; image models override this."""
        return BatchShape(size, seq_len if seq_len is not None else getattr(self, "default_seq_len", None))

    def validate(self, batch: BatchShape) -> None:  # overridden by families with constraints
        pass

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in fields:
            if key not in known:
                raise ConfigError(f"model.{key}", None, f"unknown field for family {fields.get('family')!r} "
                                  f"(known: {', '.join(sorted(known))})")
        return cls(**fields)


def check_positive(cfg: ModelConfig, *names: str) -> None:
    for name in names:
        require_int(getattr(cfg, name), f"model.{name}")


def check_heads(d_model: int, n_head: int, key: str = "model.n_head", width: str = "model.d_model") -> None:
    require(d_model % n_head == 0, key, n_head, f"must divide {width}={d_model}")


def check_seq_len(batch: BatchShape, max_positions: int) -> None:
    require(batch.seq_len is not None and 1 <= batch.seq_len <= max_positions, "batch.seq_len", batch.seq_len,
            f"must be between 1 and the model's max_positions={max_positions}")


def token_batch(vocab_size: int, batch: BatchShape, device: torch.device | str, length: int | None = None) -> torch.Tensor:
    """Random token ids of shape (batch, length); on meta no values exist and none are needed."""
    return torch.randint(0, vocab_size, (batch.size, length or batch.seq_len), device=device)


def embedding_params(model: nn.Module) -> int:
    """Parameters of token and position embeddings (``nn.Embedding`` modules and ``*pos_embedding`` tensors),
    each shared tensor once: the part Kaplan et al. leave out of N."""
    seen: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            seen[id(module.weight)] = module.weight.numel()
    for name, param in model.named_parameters():
        if name.endswith("pos_embedding"):
            seen[id(param)] = param.numel()
    return sum(seen.values())
