"""Vision Transformer (Dosovitskiy et al. 2021), as torchvision's ViT and Hugging Face ViTForImageClassification:
patch convolution, class token, learned positions, pre-norm blocks, classification head on the class token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from flopsweep.core.errors import require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, check_heads, check_positive
from flopsweep.models.layers import Block


@dataclass
class Config(ModelConfig):
    family: str = "vit"
    set_by_batch: ClassVar[dict[str, str]] = {"image_size": "image_size"}
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 3072
    num_classes: int = 1000
    dropout: float = 0.0

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def resolve_batch(self, size: int, seq_len: Optional[int], image_size: Optional[int]) -> BatchShape:
        # batch.seq_len is a text-model setting and does not apply here (the token count follows the image size)
        if image_size is not None:
            self.image_size = image_size  # the model is built for this resolution (position table included)
        return BatchShape(size, image_size=self.image_size)

    def validate(self, batch: BatchShape) -> None:
        check_positive(self, "image_size", "patch_size", "channels", "d_model", "n_layer", "n_head", "d_ff",
                       "num_classes")
        check_heads(self.d_model, self.n_head)
        require(self.image_size % self.patch_size == 0, "batch.image_size", self.image_size,
                f"must be a multiple of model.patch_size={self.patch_size}")



class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.d_model
        self.patch = nn.Conv2d(cfg.channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embedding = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, d))
        self.blocks = nn.ModuleList(Block(d, cfg.n_head, cfg.d_ff, norm_eps=1e-6, act="gelu", dropout=cfg.dropout)
                                    for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.num_classes)
        self.loss = nn.CrossEntropyLoss()

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        for block in self.blocks:
            x = block(x)
        return self.loss(self.head(self.norm(x[:, 0])), labels)


def example_inputs(cfg: Config, batch: BatchShape, device: torch.device | str) -> dict[str, torch.Tensor]:
    images = torch.randn(batch.size, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    return {"images": images, "labels": torch.randint(0, cfg.num_classes, (batch.size,), device=device)}


def analytic_forward_flops(cfg: Config, batch: BatchShape) -> int:
    """Patch convolution, per layer QKV/out/MLP over S = patches + 1 tokens and attention 4*B*S^2*d, and the
    head on the class token (torchvision's "GFLOPS" for ViT are multiply-accumulates: half of this)."""
    B, d, S = batch.size, cfg.d_model, cfg.n_patches + 1
    patch = 2 * B * cfg.n_patches * cfg.channels * cfg.patch_size ** 2 * d
    per_layer = 2 * B * S * (4 * d * d + 2 * d * cfg.d_ff) + 4 * B * S * S * d
    return patch + cfg.n_layer * per_layer + 2 * B * d * cfg.num_classes


def shape(cfg: Config) -> ModelShape:
    return ModelShape.transformer(cfg.d_model, cfg.n_layer, cfg.n_head)


FAMILIES.add("vit", Family("vit", Config, Model, example_inputs, shape, head=("head",), blocks="blocks",
                           forward_flops=analytic_forward_flops))
