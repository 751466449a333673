"""ResNet-BK: a language model whose token mixer is the diagonal of a resolvent (the "BK-Core") instead of
attention, as in the reference repository ``neko-jpg/Project-ResNet-BK-...`` at snapshot ``600c44a``.

    h = tok_embedding(x) + pos_embedding(0..N-1)
    h = h + layer(LayerNorm(h))                      (L times)
    layer(x) = f + bk_scale * Linear(2, D)(BK-Core(clamp(Linear(D, 1)(f), +-v_max))),  f = MoE(x)
    loss = CrossEntropy(lm_head(LayerNorm(h)), targets)

The MoE routes each token to its top-k of E experts with fixed shapes (it runs on ``meta``) and costs
exactly k expert evaluations per token; the BK-Core runs two O(N) recurrences with plain autograd. The closed form,
:func:`analytic_forward_flops`, is the reference's own analytic counter's forward total (docs/resnet_bk.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from flopsweep.core.errors import is_number, require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, check_positive, language_model_inputs


@dataclass
class Config(ModelConfig):
    family: str = "resnet_bk"
    set_by_batch: ClassVar[dict[str, str]] = {"seq_len": "n_seq"}
    vocab_size: int = 30000
    d_model: int = 64
    n_layers: int = 4
    n_seq: int = 128                     # fixed sequence length; batch.seq_len sets it
    num_experts: int = 4
    top_k: int = 1
    dropout_p: float = 0.1
    v_max: float = 3.0                   # the potential is clamped to +-v_max
    feature_clamp: float = 10.0          # the BK features [Re G, Im G] are clamped to +-feature_clamp

    @property
    def default_seq_len(self) -> int:
        return self.n_seq

    def resolve_batch(self, size: int, seq_len: Optional[int], image_size: Optional[int]) -> BatchShape:
        # The architecture has a fixed length, so batch.seq_len builds the model for that length (its
        # position table follows), as batch.image_size does for ViT: one sweep can then scale N for every
        # family at once.
        if seq_len is not None:
            self.n_seq = seq_len
        return BatchShape(size, self.n_seq)

    def validate(self, batch: BatchShape) -> None:
        check_positive(self, "vocab_size", "d_model", "n_layers", "n_seq", "num_experts", "top_k")
        require(self.top_k <= self.num_experts, "model.top_k", self.top_k,
                f"must be at most model.num_experts={self.num_experts}")
        require(is_number(self.dropout_p) and 0 <= self.dropout_p < 1, "model.dropout_p", self.dropout_p,
                "must be in [0, 1)")
        for name in ("v_max", "feature_clamp"):
            value = getattr(self, name)
            require(is_number(value) and value > 0, f"model.{name}", value, "must be a number > 0")
        require(batch.seq_len == self.n_seq, "batch.seq_len", batch.seq_len,
                f"must equal model.n_seq={self.n_seq}: ResNet-BK works on fixed-length sequences")


# -- BK-Core ---------------------------------------------------------------------------------------

def resolvent_diagonal(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of ``G_ii = [(H - iI)^-1]_ii`` for ``H = tridiag(1, -2 + v, 1)``, per row
    of ``v`` (shape ``(..., N)``), in O(N), in ``v``'s dtype.

    These are the spec's recurrences ``theta_{i+1} = a_i theta_i - theta_{i-1}`` and
    ``phi_i = a_{i+1} phi_{i+1} - phi_{i+2}`` (``a_i = -2 + v_i - i``; the off-diagonal product ``c*b`` is 1)
    carried as ratios ``p_i = theta_{i-1} / theta_i`` and ``q_i = phi_{i+1} / phi_i``:
    ``p_0 = 0, p_{i+1} = 1 / (a_i - p_i)``, ``q_{N-1} = 0, q_{i-1} = 1 / (a_i - q_i)``, and then
    ``G_ii = theta_i phi_i / theta_N = 1 / (a_i - p_i - q_i)`` (expand ``det = theta_N`` along row i).
    theta_i itself grows like ~2^i (|theta_128| ~ 1e40 at v = 0), which overflows float32 near N = 120 and
    float64 near N = 450-1000 (by v), and with plain autograd the overflow turns every gradient into NaN. The ratios
    cannot overflow: Im(a_i) = -1 gives Im(a_i - p_i) <= -1 by induction, so |p_i|, |q_i|, |G_ii| <= 1.

    Complex numbers are carried as (real, imaginary) pairs of real tensors: complex dtypes have little
    half-precision support, and a dispatch-level counter charges a complex multiply as one FLOP where it
    is six. One step costs 8 real FLOPs per sequence and direction (Im a = -1 is folded in by hand).
    """
    n = v.shape[-1]
    a_re = v - 2.0
    # Both directions in one loop: row 0 runs left-to-right over a, row 1 right-to-left.
    a_lr = torch.stack([a_re, a_re.flip(-1)]).unbind(-1)          # n tensors of shape (2, ...)
    p_re = torch.zeros_like(a_lr[0])
    u = one = torch.ones_like(a_lr[0])                             # u = 1 + Im p, so a - p = (a_re - Re p) - i u
    ratios_re, ratios_u = [p_re], [u]
    # addcmul keeps the op count per step low: each op is a Python-level kernel on meta
    for i in range(n - 1):
        w_re = a_lr[i] - p_re
        inv = torch.reciprocal(torch.addcmul(w_re * w_re, u, u))  # 1 / |a_i - p_i|^2
        p_re, u = w_re * inv, torch.addcmul(one, u, inv)           # p_{i+1} = conj(a_i - p_i) / |a_i - p_i|^2
        ratios_re.append(p_re)
        ratios_u.append(u)
    p_re, u = torch.stack(ratios_re, -1), torch.stack(ratios_u, -1)  # (2, ..., n)
    left_re, right_re = p_re[0], p_re[1].flip(-1)
    left_u, right_u = u[0], u[1].flip(-1)
    # a - p - q = (a_re - Re p - Re q) - i (1 + Im p + Im q) = den_re - i (u_p + u_q - 1)
    den_re = a_re - left_re - right_re
    den_im = left_u + right_u - 1.0                                # minus the imaginary part
    inv = torch.reciprocal(den_re * den_re + den_im * den_im)
    return den_re * inv, den_im * inv


class BKCore(nn.Module):
    """Potential ``v (B, N)`` -> features ``(B, N, 2) = [Re G_ii, Im G_ii]``, computed in float64 (the
    reference uses complex128), then cleaned as the reference does: non-finite -> 0, |G| clipped to 50,
    features clamped to +-feature_clamp. With z = i, |G_ii| <= 1, so the last two never bind; they are kept
    so the model matches the reference operation for operation."""

    max_magnitude = 50.0

    def __init__(self, feature_clamp: float):
        super().__init__()
        self.feature_clamp = feature_clamp

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        g_re, g_im = resolvent_diagonal(v.to(torch.float64))
        finite = torch.isfinite(g_re) & torch.isfinite(g_im)
        g_re, g_im = torch.where(finite, g_re, 0.0), torch.where(finite, g_im, 0.0)
        # factor = min(1, 50 / |G|) without a square root or division at |G| = 0 (a NaN gradient there)
        factor = self.max_magnitude * torch.rsqrt((g_re * g_re + g_im * g_im).clamp(min=self.max_magnitude ** 2))
        features = torch.stack([g_re * factor, g_im * factor], dim=-1)
        return features.clamp(-self.feature_clamp, self.feature_clamp).to(v.dtype)


# -- mixture of experts ----------------------------------------------------------------------------

class MoE(nn.Module):
    """E experts ``Linear(D, 2D) -> ReLU -> Dropout -> Linear(2D, D)``, gate ``Linear(D, E)``, top-k routing
    with softmax over the k selected logits.

    Routing has fixed shapes: each of the ``T*k`` token-slots gathers its expert's weights (a row gather
    of the stacked ``(E, D, 2D)`` tensors by the slot's expert id) and runs a batched ``(1, D) x (D, 2D)``
    product, so the counted matmul FLOPs are exactly ``2*T*k*(D*2D + 2D*D)``: k experts per token, as a
    sparse MoE does, with no value-dependent shapes. The price is memory: the gathered weights,
    ``T*k*4*D^2`` elements, are materialised and kept for backward (16 MiB per layer for the default model
    at batch 2 in float32, 256 MiB at batch 32), and their per-slot gradients are summed back into the
    experts by a scatter-add (``T*k*4*D^2`` elementwise adds that a per-expert matmul would do inside the
    matmul). That suits this model's small D.
    """

    def __init__(self, d: int, num_experts: int, top_k: int, dropout_p: float):
        super().__init__()
        self.top_k = top_k
        hidden = 2 * d
        self.w1 = nn.Parameter(torch.empty(num_experts, d, hidden))      # x @ w1: (in, out) layout
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, d))
        self.b2 = nn.Parameter(torch.empty(num_experts, d))
        self.dropout = nn.Dropout(dropout_p)
        self.gate = nn.Linear(d, num_experts)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
        for weight, bias in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, k = x.shape[-1], self.top_k
        tokens = x.reshape(-1, d)                                          # (T, D)
        top_logits, expert = self.gate(tokens).topk(k, dim=-1)            # (T, k)
        weight = top_logits.softmax(dim=-1)
        expert = expert.flatten()                                          # (T*k,) slot -> expert id
        slots = tokens.unsqueeze(1).expand(-1, k, -1).reshape(-1, 1, d)    # (T*k, 1, D)
        h = torch.bmm(slots, _gather(self.w1, expert)) + _gather(self.b1, expert).unsqueeze(1)
        h = self.dropout(F.relu(h))
        y = torch.bmm(h, _gather(self.w2, expert)) + _gather(self.b2, expert).unsqueeze(1)
        y = (y.view(-1, k, d) * weight.unsqueeze(-1)).sum(dim=1)           # (T, D)
        return y.view(x.shape)


def _gather(weights: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """``weights[expert]`` for stacked per-expert tensors. Written as an embedding lookup so that its backward
    is ``embedding_dense_backward``, which the counter charges (one add per scattered element); the backward
    of ``index_select`` (``index_add``) has no formula there."""
    return F.embedding(expert, weights.flatten(1)).view(-1, *weights.shape[1:])


# -- the model -------------------------------------------------------------------------------------

class BKLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.v_max = cfg.v_max
        self.moe = MoE(cfg.d_model, cfg.num_experts, cfg.top_k, cfg.dropout_p)
        self.v_proj = nn.Linear(cfg.d_model, 1)
        self.bk_core = BKCore(cfg.feature_clamp)
        self.output_proj = nn.Linear(2, cfg.d_model)
        self.bk_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.moe(x)
        v = self.v_proj(f).squeeze(-1).clamp(-self.v_max, self.v_max)   # one real potential per token
        return f + self.bk_scale * self.output_proj(self.bk_core(v))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.layer = BKLayer(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(self.norm(x))



class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.tok_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embedding = nn.Embedding(cfg.n_seq, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)            # with bias, not tied
        self.loss = nn.CrossEntropyLoss()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.tok_embedding(tokens) + self.pos_embedding(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            h = block(h)
        logits = self.lm_head(self.norm(h))
        return self.loss(logits.flatten(0, 1), targets.flatten())


def analytic_forward_flops(cfg: Config, batch: BatchShape) -> int:
    """The reference counter's forward total, per component (B batch, N length, D width, E experts, K top-k, V
    vocabulary; multiply-add = 2): Embedding ``B*N*D``, LayerNorm ``5*B*N*D``, MoE ``2*B*N*D*E + 3*B*N*E +
    B*N*K*(8*D^2 + 2*D)``, BK-Core ``34*B*N``, ``Linear(in, out)`` ``2*B*N*in*out``; in all
    Embedding + L*(LayerNorm + MoE + BK-Core + Linear(2, D)) + final LayerNorm + Linear(D, V). Unlike the decoder's
    closed form it mixes matmul and elementwise FLOPs (embedding, norms, BK-Core, routing softmax), and it leaves out
    ``Linear(D, 1)`` (the potential), the residual adds, the clamps and the loss, as the reference does."""
    tokens, D, E, K = batch.size * (batch.seq_len or cfg.n_seq), cfg.d_model, cfg.num_experts, cfg.top_k
    layer_norm = 5 * tokens * D
    moe = 2 * tokens * D * E + 3 * tokens * E + tokens * K * (8 * D * D + 2 * D)
    layer = layer_norm + moe + 34 * tokens + 2 * tokens * 2 * D
    return tokens * D + cfg.n_layers * layer + layer_norm + 2 * tokens * D * cfg.vocab_size


def shape(cfg: Config) -> ModelShape:
    """No attention: a BK-Core mixes the tokens."""
    return ModelShape(cfg.d_model, cfg.n_layers, experts=cfg.num_experts, experts_per_token=cfg.top_k)


FAMILIES.add("resnet_bk", Family("resnet_bk", Config, Model, language_model_inputs, shape, head=("lm_head",),
                                 blocks="blocks", forward_flops=analytic_forward_flops))
