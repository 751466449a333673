"""Layers shared by the transformer families: attention (through ``F.scaled_dot_product_attention``),
feed-forward, norms, rotary embeddings and a residual block that is pre- or post-norm."""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def make_norm(kind: str, d: int, eps: float, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(d, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")


def rotary(x: torch.Tensor, theta: float, start: int = 0) -> torch.Tensor:
    """Rotate pairs of channels (half-split layout, as LLaMA in Hugging Face) by position-dependent angles, the
    positions counted from ``start`` (the tokens already in a KV cache). x: (B, H, S, hd)."""
    seq, hd = x.shape[-2], x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(start, start + seq, device=x.device, dtype=torch.float32), inv_freq)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


KV = tuple[torch.Tensor, torch.Tensor]  # one layer's cached keys and values, (B, n_kv_head, tokens, head_dim) each


class Attention(nn.Module):
    """Multi-head attention with optional grouped-query heads, rotary positions and cross-attention.

    ``inner = n_head * head_dim`` need not equal ``d`` (T5). Queries, keys and values come from one fused
    projection for self-attention, and from ``q`` and ``kv`` projections for cross-attention.
    """

    def __init__(self, d: int, n_head: int, *, n_kv_head: Optional[int] = None, head_dim: Optional[int] = None,
                 qkv_bias: bool = True, out_bias: bool = True, cross: bool = False, causal: bool = False,
                 rope_theta: Optional[float] = None, scale: Optional[float] = None):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head or n_head
        self.head_dim = head_dim or d // n_head
        self.cross, self.causal, self.rope_theta, self.scale = cross, causal, rope_theta, scale
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if cross:
            self.q = nn.Linear(d, q_dim, bias=qkv_bias)
            self.kv = nn.Linear(d, 2 * kv_dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(d, q_dim + 2 * kv_dim, bias=qkv_bias)
        self.out = nn.Linear(q_dim, d, bias=out_bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], n, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._attend(x, memory, bias, None)[0]

    def step(self, x: torch.Tensor, past: Optional[KV]) -> tuple[torch.Tensor, KV]:
        """Causal self-attention of ``x`` (the new tokens) over the cached keys and values ``past`` (None: an empty
        cache) and themselves; returns the output and the cache with the new tokens' keys and values appended, as
        many heads as ``n_kv_head`` (what a grouped-query cache holds). A prompt runs in one call (causal inside
        it), then one token per call; new tokens after a non-empty cache must be one per sequence."""
        return self._attend(x, None, None, past if past is not None else ())

    def _attend(self, x: torch.Tensor, memory: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                past: Optional[KV | tuple]) -> tuple[torch.Tensor, Optional[KV]]:
        B, S, _ = x.shape
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if self.cross:
            q = self.q(x)
            k, v = self.kv(memory).split([kv_dim, kv_dim], dim=-1)
        else:
            q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q, k, v = self._heads(q, self.n_head), self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
        start = past[0].shape[-2] if past else 0
        if self.rope_theta is not None:
            q, k = rotary(q, self.rope_theta, start), rotary(k, self.rope_theta, start)
        present = None
        if past is not None:  # a cache of its own (not views of the fused projection, which holds q too)
            k, v = (torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2)) if past else \
                (k.contiguous(), v.contiguous())
            present = (k, v)
        if self.n_kv_head != self.n_head:  # grouped-query attention: share each K/V head among a group
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        causal = self.causal and not self.cross and not start  # a decoded token sees the whole cache
        if bias is not None and causal:
            bias = bias + causal_mask(q.shape[-2], k.shape[-2], bias.device, bias.dtype)
            causal = False
        with sdpa_kernel(DECODING) if start else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(B, S, q_dim)), present


# A decode step attends over one more key each time. cuDNN's attention builds a graph for each new length: on an H200
# (torch 2.11) 1.65 ms of CPU a call, 53 of a 7B model's 72 ms step while its GPU work took 6.5 ms. The other
# backends take any length as it comes (the FLOPs are the same).
DECODING = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]



def causal_mask(sq: int, sk: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((sq, sk), float("-inf"), device=device, dtype=dtype).triu(1)


class MLP(nn.Module):
    """Feed-forward: ``gelu``/``gelu_tanh``/``relu`` (two matrices) or ``swiglu`` (gate, up, down)."""

    def __init__(self, d: int, d_ff: int, act: str = "gelu", bias: bool = True):
        super().__init__()
        self.act = act
        if act == "swiglu":
            self.gate = nn.Linear(d, d_ff, bias=bias)
        self.up = nn.Linear(d, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if self.act == "relu":
            return self.down(F.relu(self.up(x)))
        return self.down(F.gelu(self.up(x), approximate="tanh" if self.act == "gelu_tanh" else "none"))


class Block(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each a residual branch with its norm applied
    before (``prenorm``) or after the residual add (post-norm, as BERT and Vaswani et al.)."""

    def __init__(self, d: int, n_head: int, d_ff: int, *, norm: str = "layernorm", norm_eps: float = 1e-5,
                 norm_bias: bool = True, prenorm: bool = True, act: str = "gelu", bias: bool = True,
                 qkv_bias: Optional[bool] = None, causal: bool = False, cross: bool = False,
                 n_kv_head: Optional[int] = None, head_dim: Optional[int] = None,
                 rope_theta: Optional[float] = None, scale: Optional[float] = None, dropout: float = 0.0):
        super().__init__()
        self.prenorm = prenorm
        qkv_bias = bias if qkv_bias is None else qkv_bias
        attn = dict(n_kv_head=n_kv_head, head_dim=head_dim, qkv_bias=qkv_bias, out_bias=bias,
                    rope_theta=rope_theta, scale=scale)
        self.norm1 = make_norm(norm, d, norm_eps, norm_bias)
        self.attn = Attention(d, n_head, causal=causal, **attn)
        if cross:
            self.norm_cross = make_norm(norm, d, norm_eps, norm_bias)
            self.cross_attn = Attention(d, n_head, cross=True, **attn)
        self.norm2 = make_norm(norm, d, norm_eps, norm_bias)
        self.mlp = MLP(d, d_ff, act, bias)
        self.dropout = nn.Dropout(dropout)

    def _residual(self, x: torch.Tensor, norm: nn.Module, branch, *args) -> torch.Tensor:
        if self.prenorm:
            return x + self.dropout(branch(norm(x), *args))
        return norm(x + self.dropout(branch(x, *args)))

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None, cross_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self._residual(x, self.norm1, self.attn, None, bias)
        if memory is not None:
            x = self._residual(x, self.norm_cross, self.cross_attn, memory, cross_bias)
        return self._residual(x, self.norm2, self.mlp)

    def step(self, x: torch.Tensor, past: Optional[KV]) -> tuple[torch.Tensor, KV]:
        """The block on new tokens with its attention's KV cache (:meth:`Attention.step`); self-attention only."""
        present: list[KV] = []

        def attend(h: torch.Tensor) -> torch.Tensor:
            y, kv = self.attn.step(h, past)
            present.append(kv)
            return y

        x = self._residual(x, self.norm1, attend)
        return self._residual(x, self.norm2, self.mlp), present[0]


def sinusoidal_positions(seq: int, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fixed sine/cosine position encoding of Vaswani et al. (no parameters)."""
    pos = torch.arange(seq, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1)
    return pe.to(dtype)


class LoRALinear(nn.Module):
    """A frozen linear layer beside a trainable low-rank update (Hu et al. 2021):
    ``y = base(x) + (alpha / r) * B(A x)``, A (r x in) initialised as nn.Linear's weights, B (out x r) zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        weight = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale


class DoRALinear(LoRALinear):
    """LoRA with the weight split into magnitude and direction (Liu et al. 2024, DoRA):
    ``W' = m * V / ||V||`` with ``V = W + (alpha / r) * B A``, the norm of each output row, and a trainable
    magnitude ``m`` (one per output, initialised to the rows' norms of W). As in the paper's efficient form, the
    norm is a constant for backward (no gradient through it): ``y = (m / ||V||) * (W x + (alpha / r) B A x) + b``.
    Each forward also forms ``B A`` (out x r x in) for the norm."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base, rank, alpha)
        self.magnitude = nn.Parameter(base.weight.detach().norm(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            norm = (self.base.weight + self.scale * (self.lora_b @ self.lora_a)).norm(dim=1)
        out = (F.linear(x, self.base.weight) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale)
        out = out * (self.magnitude / norm)
        return out + self.base.bias if self.base.bias is not None else out
