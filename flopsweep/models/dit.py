"""A diffusion transformer (DiT, Peebles & Xie 2023) built by diffusers (``DiTTransformer2DModel``), trained as its
paper trains it: one denoising step on a batch of latents::

    model=dit_xl_2                                  # DiT-XL/2: 28 blocks of 1152, patches of 2, 1,000 classes
    model=dit_xl_2 batch.image_size=64              # the latent's side: 64 x 64 x 4 latents (a 512-pixel image)
    model=dit_xl_2 model.num_layers=12 model.attention_head_dim=64 model.num_attention_heads=12   # DiT-B/2

Every field beside ``family`` and ``name`` is an argument of ``DiTTransformer2DModel`` of the same name, but
``num_train_timesteps`` (the diffusion's steps, from which a timestep is drawn). ``batch.image_size`` is the side of
the latent the transformer sees (``model.sample_size``, 32 unless set: Stable Diffusion's VAE makes a 256-pixel image
32 x 32 x 4), not the image's pixels: the VAE is not part of the step (the paper's figures leave it out too).

The step: a timestep t and a class label a sample, the latent noised as DDPM does (``sqrt(a_t) x + sqrt(1 - a_t)
noise``, the paper's linear schedule of betas from 1e-4 to 0.02), the transformer's prediction of the noise (the first
``in_channels`` of its output; with ``out_channels = 2 in_channels`` the rest is the learned variance) against the
noise: the mean square. The variance's own loss term (the paper's L_vlb, a KL of two Gaussians a latent value) is
left out: elementwise work on the output, no matmul. Labels are dropped 10% of the time for classifier-free guidance,
as diffusers' embedding does in training.

As the paper's model, one conditioning embedder (the timestep's MLP and the class table) serves every block's
adaLN-Zero and is computed once a step; diffusers gives each block its own copy (its conversion of the published
checkpoint copies the same weights into all 28), which would count 27 more embedders' parameters (75M for DiT-XL/2)
and their FLOPs. Its fixed sine-cosine position table is a buffer here, as in diffusers (the paper's code keeps it as a
frozen parameter: 294,912 more for DiT-XL/2, in neither count of 675M's precision). diffusers is an optional extra:
``pip install 'flopsweep[diffusion]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from flopsweep.core.errors import ConfigError, pip, require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, check_positive

BETAS = (1e-4, 0.02)  # the paper's linear schedule (its code's, from DDPM)


INSTALL = "install 'flopsweep[diffusion]'"


def diffusers_module() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ConfigError("model.family", "dit", f"needs diffusers: {pip(INSTALL)}") from None
    return diffusers


@dataclass
class Config(ModelConfig):
    family: str = "dit"
    sample_size: int = 32              # the latent's side (batch.image_size)
    patch_size: int = 2
    in_channels: int = 4
    out_channels: Optional[int] = None  # None: in_channels (no learned variance); DiT's: 2 x in_channels
    num_layers: int = 28
    num_attention_heads: int = 16
    attention_head_dim: int = 72
    num_embeds_ada_norm: int = 1000    # classes
    num_train_timesteps: int = 1000
    dropout: float = 0.0

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def resolve_batch(self, size: int, seq_len: Optional[int], image_size: Optional[int]) -> BatchShape:
        # batch.seq_len is a text model's; the tokens are the latent's patches
        if image_size is not None:
            self.sample_size = image_size  # built for this latent (its position table)
        return BatchShape(size, image_size=self.sample_size)

    def validate(self, batch: BatchShape) -> None:
        check_positive(self, "sample_size", "patch_size", "in_channels", "num_layers", "num_attention_heads",
                       "attention_head_dim", "num_embeds_ada_norm", "num_train_timesteps")
        require(self.sample_size % self.patch_size == 0, "batch.image_size", self.sample_size,
                f"the latent's side must be a multiple of model.patch_size={self.patch_size}")
        require(self.out_channels in (None, self.in_channels, 2 * self.in_channels), "model.out_channels",
                self.out_channels, f"must be model.in_channels={self.in_channels} (the noise predicted) or twice it "
                                   "(and its variance)")
        diffusers_module()


class _Once(nn.Module):
    """The conditioning embedder shared by every block: computed for a step's first block, the same tensor for the
    others and the final layer (as the paper's model computes it once); :meth:`clear` after the step."""

    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedder = embedder
        self._made: Optional[tuple[Any, Any, Any, torch.Tensor]] = None

    def forward(self, timestep: torch.Tensor, class_labels: torch.Tensor, hidden_dtype: Any = None) -> torch.Tensor:
        made = self._made
        if made is None or made[0] is not timestep or made[1] is not class_labels or made[2] != hidden_dtype:
            embedded = self.embedder(timestep, class_labels, hidden_dtype=hidden_dtype)
            made = (timestep, class_labels, hidden_dtype, embedded)
            self._made = made
        return made[3]

    def clear(self) -> None:
        self._made = None


class Model(nn.Module):
    """diffusers' DiT with one shared conditioning embedder; ``forward`` returns the denoising loss."""

    def __init__(self, cfg: Config):
        super().__init__()
        diffusers = diffusers_module()
        try:
            self.net = diffusers.DiTTransformer2DModel(
                num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
                in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.num_layers,
                dropout=cfg.dropout, sample_size=cfg.sample_size, patch_size=cfg.patch_size,
                num_embeds_ada_norm=cfg.num_embeds_ada_norm)
        except (ValueError, TypeError, NotImplementedError) as err:
            raise ConfigError("model", cfg.name, f"diffusers cannot build it: {' '.join(str(err).split())[:300]}") \
                from None
        blocks = self.net.transformer_blocks
        self.conditioning = _Once(blocks[0].norm1.emb)
        for block in blocks:
            block.norm1.emb = self.conditioning
        betas = torch.linspace(*BETAS, cfg.num_train_timesteps, dtype=torch.float64)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float(), persistent=False)
        self.channels = cfg.in_channels
        self.loss = nn.MSELoss()

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        kept = self.alphas_cumprod[timesteps].to(latents.dtype).view(-1, 1, 1, 1)
        noisy = kept.sqrt() * latents + (1 - kept).sqrt() * noise
        try:
            predicted = self.net(noisy, timestep=timesteps, class_labels=class_labels).sample
        finally:
            self.conditioning.clear()
        return self.loss(predicted[:, :self.channels], noise)


def example_inputs(cfg: Config, batch: BatchShape, device: torch.device | str) -> dict[str, torch.Tensor]:
    side = (batch.size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    return {"latents": torch.randn(side, device=device),
            "timesteps": torch.randint(0, cfg.num_train_timesteps, (batch.size,), device=device),
            "class_labels": torch.randint(0, cfg.num_embeds_ada_norm, (batch.size,), device=device),
            "noise": torch.randn(side, device=device)}


def analytic_forward_flops(cfg: Config, batch: BatchShape) -> int:
    """The matmul FLOPs of one forward: the patch embedding, the conditioning embedder once (the timestep's 256
    frequencies through two linear layers), and per block its adaLN-Zero modulation (d x 6d a sample), q, k, v and
    out (4 d^2 a token), attention (4 T^2 d) and the MLP (2 x 4 d^2 a token); the final layer's modulation (d x 2d) and
    projection to the patches' values. Twice the paper's Gflops, which are multiply-accumulates."""
    b, d = batch.size, cfg.width
    tokens = (cfg.sample_size // cfg.patch_size) ** 2
    out = cfg.out_channels or cfg.in_channels
    patch = tokens * cfg.in_channels * cfg.patch_size ** 2 * d
    conditioning = 256 * d + d * d
    block = 6 * d * d + tokens * 4 * d * d + 2 * tokens * tokens * d + tokens * 8 * d * d
    final = 2 * d * d + tokens * d * cfg.patch_size ** 2 * out
    return 2 * b * (patch + conditioning + cfg.num_layers * block + final)


def shape(cfg: Config) -> ModelShape:
    return ModelShape.transformer(cfg.width, cfg.num_layers, cfg.num_attention_heads,
                                  head_dim=cfg.attention_head_dim)


FAMILIES.add("dit", Family("dit", Config, Model, example_inputs, shape, head=("net.proj_out_1", "net.proj_out_2"),
                           blocks="net.transformer_blocks", forward_flops=analytic_forward_flops))
