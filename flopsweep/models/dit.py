"""Diffusion transformers built by diffusers: DiT (Peebles & Xie 2023, ``DiTTransformer2DModel``, ``model.family=dit``)
and the MMDiT of Stable Diffusion 3 (Esser et al. 2024, ``SD3Transformer2DModel``, ``model.family=mmdit``), each
trained as its paper trains it: one denoising step on a batch of latents::

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

The MMDiT (``model=sd3_medium``: Stable Diffusion 3 Medium's transformer) is conditioned on text: the text encoders'
hidden states (``batch.seq_len`` tokens of ``model.joint_attention_dim``, 333 unless set: CLIP's 77 and T5's 256, as
SD3's pipeline makes them) and their pooled projection (``model.pooled_projection_dim``) are inputs of the step, as
the VAE's latents are (the encoders are frozen and not part of it). Each block has two streams of weights, the
latent's patches and the text's tokens, each with its own adaLN-Zero modulation, q, k, v, out and MLP, and one
attention over both streams' tokens together; the last block keeps only the image stream's output. The step is the
paper's rectified flow: a time t a sample from the logit-normal law (its best, lognorm(0, 1)), the latent moved
toward the noise (``(1 - t) x + t noise``), the velocity ``noise - x`` predicted (t x 1000 as diffusers' timestep)
and its mean square taken. ``batch.image_size`` is the latent's side (128 unless set: a 1,024-pixel image through
SD3's VAE, 16 channels), at most ``model.pos_embed_max_size`` patches a side.

Why one file: the two families share what makes a diffusers model a flopsweep family (the optional import and its
one-line error, building under a ConfigError naming the model, the latent's side as ``batch.image_size``), and each
is a short config, a loss around diffusers' class and a closed form; apart they would be two halves of one recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from flopsweep.core.errors import ConfigError, MissingExtra, require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, check_positive

BETAS = (1e-4, 0.02)  # the paper's linear schedule (its code's, from DDPM)


EXTRA = "diffusion"


def diffusers_module(family: str = "dit") -> Any:
    try:
        import diffusers
    except ImportError:
        raise MissingExtra(family, "diffusers", EXTRA) from None
    return diffusers


@dataclass
class Config(ModelConfig):
    family: str = "dit"
    sample_size: int = 32              # the latent's side (batch.image_size)
    set_by_batch: ClassVar[dict[str, str]] = {"image_size": "sample_size"}
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


# --- MMDiT: Stable Diffusion 3's transformer -------------------------------------------------------------------------


@dataclass
class MMDiTConfig(ModelConfig):
    family: str = "mmdit"
    sample_size: int = 128             # the latent's side (batch.image_size)
    set_by_batch: ClassVar[dict[str, str]] = {"image_size": "sample_size"}
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    num_layers: int = 24
    num_attention_heads: int = 24
    attention_head_dim: int = 64
    joint_attention_dim: int = 4096    # the text encoders' hidden states (T5-XXL's width)
    caption_projection_dim: int = 1536  # the text stream's width: the image stream's (heads x head_dim)
    pooled_projection_dim: int = 2048  # CLIP-L's and CLIP-G's pooled outputs side by side
    pos_embed_max_size: int = 192      # patches a side the position table holds
    dual_attention_layers: list[int] = field(default_factory=list)  # SD3.5's blocks with a second, image-only attention
    qk_norm: Optional[str] = None      # SD3.5's "rms_norm" on queries and keys (no matmul)
    default_seq_len: int = 333         # text tokens: CLIP's 77 and T5's 256

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def resolve_batch(self, size: int, seq_len: Optional[int], image_size: Optional[int]) -> BatchShape:
        if image_size is not None:
            self.sample_size = image_size
        return BatchShape(size, seq_len if seq_len is not None else self.default_seq_len, self.sample_size)

    def validate(self, batch: BatchShape) -> None:
        check_positive(self, "sample_size", "patch_size", "in_channels", "out_channels", "num_layers",
                       "num_attention_heads", "attention_head_dim", "joint_attention_dim", "caption_projection_dim",
                       "pooled_projection_dim", "pos_embed_max_size", "default_seq_len")
        require(batch.seq_len is not None and batch.seq_len >= 1, "batch.seq_len", batch.seq_len,
                "must be at least one text token")
        require(self.sample_size % self.patch_size == 0, "batch.image_size", self.sample_size,
                f"the latent's side must be a multiple of model.patch_size={self.patch_size}")
        require(self.sample_size // self.patch_size <= self.pos_embed_max_size, "batch.image_size", self.sample_size,
                f"at most model.pos_embed_max_size={self.pos_embed_max_size} patches of {self.patch_size} a side")
        require(self.caption_projection_dim == self.width, "model.caption_projection_dim", self.caption_projection_dim,
                f"the text stream's width must be the image stream's: model.num_attention_heads x "
                f"model.attention_head_dim = {self.width}")
        layers = list(self.dual_attention_layers)
        require(all(isinstance(i, int) and 0 <= i < self.num_layers for i in layers), "model.dual_attention_layers",
                layers, f"must be block indices below model.num_layers={self.num_layers}")
        require(self.qk_norm in (None, "rms_norm", "layer_norm"), "model.qk_norm", self.qk_norm,
                "must be null, rms_norm or layer_norm")
        diffusers_module("mmdit")


class MMDiT(nn.Module):
    """diffusers' SD3 transformer; ``forward`` returns the rectified-flow loss."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        diffusers = diffusers_module("mmdit")
        try:
            self.net = diffusers.SD3Transformer2DModel(
                sample_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
                num_layers=cfg.num_layers, attention_head_dim=cfg.attention_head_dim,
                num_attention_heads=cfg.num_attention_heads, joint_attention_dim=cfg.joint_attention_dim,
                caption_projection_dim=cfg.caption_projection_dim, pooled_projection_dim=cfg.pooled_projection_dim,
                out_channels=cfg.out_channels, pos_embed_max_size=cfg.pos_embed_max_size,
                dual_attention_layers=tuple(cfg.dual_attention_layers), qk_norm=cfg.qk_norm)
        except (ValueError, TypeError, NotImplementedError) as err:
            raise ConfigError("model", cfg.name, f"diffusers cannot build it: {' '.join(str(err).split())[:300]}") \
                from None
        self.loss = nn.MSELoss()

    def forward(self, latents: torch.Tensor, noise: torch.Tensor, times: torch.Tensor, text: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        t = times.to(latents.dtype).view(-1, 1, 1, 1)
        noisy = (1 - t) * latents + t * noise
        velocity = self.net(noisy, encoder_hidden_states=text, pooled_projections=pooled, timestep=times * 1000).sample
        return self.loss(velocity, noise - latents)


def mmdit_inputs(cfg: MMDiTConfig, batch: BatchShape, device: torch.device | str) -> dict[str, torch.Tensor]:
    side = (batch.size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    return {"latents": torch.randn(side, device=device), "noise": torch.randn(side, device=device),
            "times": torch.sigmoid(torch.randn(batch.size, device=device)),  # logit-normal
            "text": torch.randn(batch.size, batch.seq_len, cfg.joint_attention_dim, device=device),
            "pooled": torch.randn(batch.size, cfg.pooled_projection_dim, device=device)}


def mmdit_forward_flops(cfg: MMDiTConfig, batch: BatchShape) -> int:
    """The matmul FLOPs of one forward (multiply-adds x 2). Per sample, with N = (side / patch)^2 image tokens, L text
    tokens and width d: the patch embedding (N x C p^2 x d), the conditioning (the timestep's 256 frequencies through
    256 x d and d x d; the pooled text through P x d and d x d), the text's projection (L x J x d); per block both
    streams' adaLN-Zero modulations (2 x d x 6d), q, k, v and out of both streams (4 (N + L) d^2), attention over the
    N + L tokens together (2 (N + L)^2 d) and both MLPs (8 (N + L) d^2); the last block modulates the text by d x 2d,
    projects its q, k, v but no out and runs no text MLP; a dual-attention block (SD3.5) modulates by d x 9d and
    attends a second time over the image alone (4 N d^2 + 2 N^2 d). The final modulation (d x 2d) and the projection
    to the patches' values (N x d x p^2 O)."""
    d, p = cfg.width, cfg.patch_size
    n, text = (cfg.sample_size // p) ** 2, batch.seq_len
    both = n + text
    embed = n * cfg.in_channels * p * p * d + 256 * d + d * d + cfg.pooled_projection_dim * d + d * d
    embed += text * cfg.joint_attention_dim * d
    block = 12 * d * d + 12 * both * d * d + 2 * both * both * d
    last = 8 * d * d + 3 * both * d * d + 2 * both * both * d + n * d * d + 8 * n * d * d
    dual = 3 * d * d + 4 * n * d * d + 2 * n * n * d
    blocks = (cfg.num_layers - 1) * block + last + len(set(cfg.dual_attention_layers)) * dual
    final = 2 * d * d + n * d * p * p * cfg.out_channels
    return 2 * batch.size * (embed + blocks + final)


def mmdit_shape(cfg: MMDiTConfig) -> ModelShape:
    return ModelShape.transformer(cfg.width, cfg.num_layers, cfg.num_attention_heads, head_dim=cfg.attention_head_dim)


FAMILIES.add("mmdit", Family("mmdit", MMDiTConfig, MMDiT, mmdit_inputs, mmdit_shape,
                             head=("net.norm_out", "net.proj_out"), blocks="net.transformer_blocks",
                             forward_flops=mmdit_forward_flops))
