"""What every model family provides (:class:`Family`, registered in :data:`FAMILIES`), and the shapes of a
synthetic batch.

A family is one module of ``flopsweep.models`` that registers a :class:`Family`: its ``Config`` dataclass (whose
``validate(batch)`` raises :class:`~flopsweep.core.errors.ConfigError` naming ``model.<field>`` or
``batch.<field>``), its ``Model(cfg)``, an ``nn.Module`` whose ``forward(**inputs)`` returns the scalar training loss
(the loss a submodule named ``loss``, so that its cost shows in the per-module breakdown), and
``example_inputs(cfg, batch, device)``, the synthetic inputs, targets included, and ``shape(cfg)``, its
:class:`~flopsweep.core.shape.ModelShape` (width, layers, heads, ...: what a result's readers know of it). Models are
built under ``with torch.device(...)`` so they can be made directly on ``meta``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Protocol, Sequence

import torch
from torch import nn

from flopsweep.core.errors import ConfigError, is_number, require, require_int
from flopsweep.core.registry import Registry
from flopsweep.core.shape import ModelShape


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
    # the model's fields that a batch key builds it for (ResNet-BK's n_seq by batch.seq_len, a ViT's image_size by
    # batch.image_size, so that one sweep scales every family): given both, differing, a job is refused
    set_by_batch: ClassVar[dict[str, str]] = {}

    def resolve_batch(self, size: int, seq_len: Optional[int], image_size: Optional[int]) -> BatchShape:
        """The batch shape for this model: unset dimensions come from the model's defaults. Each dimension
        applies to the models that have it, so that one sweep can mix text and image models: text models
        take ``batch.seq_len`` and ignore ``batch.image_size``; image models override this."""
        return BatchShape(size, seq_len if seq_len is not None else getattr(self, "default_seq_len", None))

    def validate(self, batch: BatchShape) -> None:  # overridden by families with constraints
        pass

    def validate_run(self, device: str, training: bool) -> None:
        """Refuse, by key, a device (``cpu``, ``cuda``, ``meta``) this model cannot run its step on; overridden by
        families with such a limit."""

    def chosen(self, batch: BatchShape, seq_len_given: bool) -> Optional[str]:
        """What flopsweep chose for this model that neither the user nor the model's config gave (said on the console
        before the job); None where nothing was."""
        return None

    def source(self) -> Optional[dict[str, Any]]:
        """A file that defines the model beyond its fields (a Hugging Face ``config.json``, a custom model's module):
        ``{"file", "sha256"}`` and what a reader needs to tell two runs apart; None where the fields say it all.
        Its digest is part of the job's fingerprint, so an edited file is a new configuration."""
        return None

    def validate_common(self) -> None:
        """What every family's fields of the same name mean: a feed-forward width is a whole number >= 1 where it is
        set (0 was silently taken as the default while result.json recorded 0), a dropout probability is in [0, 1)."""
        for name in ("d_ff", "ff_dim"):
            if getattr(self, name, None) is not None:
                require_int(getattr(self, name), f"model.{name}")
        for name in ("dropout", "dropout_p"):
            value = getattr(self, name, None)
            if value is not None:
                require(is_number(value) and 0 <= value < 1, f"model.{name}", value, "must be a probability in [0, 1)")

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


def token_batch(vocab_size: int, batch: BatchShape, device: torch.device | str,
                length: int | None = None) -> torch.Tensor:
    """Random token ids of shape (batch, length); on meta no values exist and none are needed."""
    return torch.randint(0, vocab_size, (batch.size, length or batch.seq_len), device=device)


def language_model_inputs(cfg: Any, batch: BatchShape, device) -> dict[str, torch.Tensor]:
    """A language model's batch: ``tokens`` and the next-token ``targets``, from ``cfg.vocab_size``."""
    return {"tokens": token_batch(cfg.vocab_size, batch, device), "targets": token_batch(cfg.vocab_size, batch, device)}


class TrainPlan(Protocol):
    """What a family's closed forms read of the ``train`` group (``flopsweep.build.train_modes.TrainConf``)."""

    mode: str
    trainable_layers: int
    rank: int
    targets: Sequence[str]


Inputs = Callable[[Any, BatchShape, Any], dict[str, torch.Tensor]]



@dataclass(frozen=True)
class Family:
    """A model family: how its config is read and checked, its model, its synthetic batch, its shape, and what it
    offers beyond that: the submodules that ``train=frozen_backbone`` keeps trainable, and closed-form FLOPs."""

    name: str
    Config: type[ModelConfig]
    Model: Callable[[Any], nn.Module]
    example_inputs: Inputs
    shape: Callable[[Any], ModelShape]     # cfg -> its width, layers, heads, experts (recorded as info.shape)
    load: Optional[Callable[[dict[str, Any]], ModelConfig]] = None  # None: Config.from_dict
    # fields -> the fields a file they name gives (model.json_file): over the preset's, under the command line's
    file_fields: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None
    head: tuple[str, ...] = ()             # frozen_backbone: the head, always trainable ...
    blocks: Optional[str] = None           # ... and the last train.trainable_layers blocks of this ModuleList
    forward_flops: Optional[Callable[..., int]] = None   # (cfg, batch): the forward pass's matmul FLOPs
    # (cfg, batch, train) -> (forward, backward or None): closed forms that follow train.mode (LoRA included)
    train_flops: Optional[Callable[[Any, BatchShape, TrainPlan], tuple[int, Optional[int]]]] = None
    # cfg -> what makes the built model's generator (flopsweep.measure.generate.Generator: workload=generate), or None
    # where this config does not generate
    generator: Optional[Callable[[Any], Optional[Callable[[nn.Module], Any]]]] = None
    longest: Optional[Callable[[Any], Optional[int]]] = None  # cfg -> the most positions it takes (None: no limit)

    def config(self, fields: dict[str, Any], given: frozenset[str] = frozenset()) -> ModelConfig:
        """The config of composed ``fields``, of which ``given`` (names) were set on the command line."""
        if self.file_fields is not None:
            fields = {**fields, **{k: v for k, v in self.file_fields(fields).items() if k not in given}}
        return self.load(fields) if self.load is not None else self.Config.from_dict(fields)


FAMILIES: Registry[Family] = Registry("model.family")


def file_source(path: Path) -> dict[str, Any]:
    """A file as :meth:`ModelConfig.source` records it: its path and the SHA-256 of its bytes."""
    import hashlib

    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
