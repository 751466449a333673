"""A model's shape (:class:`ModelShape`): the figures that readers of a result need whatever the family (width,
layers, attention heads, key/value heads, head width, experts). Each family publishes it (``Family.shape``) and the
job records it (``result.info["shape"]``); :func:`shape_of` reads it back, and derives it from the config of a result
recorded before it was (:func:`from_config`, the one place that reads a config's own key names)."""

from __future__ import annotations

from collections import ChainMap
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from flopsweep.core.result import Result


@dataclass(frozen=True)
class ModelShape:
    """None where the family has no such thing (a CNN has no heads; a dense model no experts)."""

    width: Optional[int] = None              # the residual stream (d_model, hidden_size)
    layers: Optional[int] = None             # transformer blocks (an encoder-decoder: per stack, as T5 publishes)
    heads: Optional[int] = None              # attention (query) heads
    kv_heads: Optional[int] = None           # key/value heads: fewer than heads under grouped-query attention
    head_dim: Optional[int] = None           # a query/key head's width
    experts: Optional[int] = None            # routed experts of a mixture-of-experts layer
    experts_per_token: Optional[int] = None  # of them, those a token goes through
    kv_latent: Optional[int] = None          # MLA: the one latent cached per token for every head (kv_lora_rank)
    causal_lm: bool = False                  # decoder-only language model: one causal stack over its own tokens

    @classmethod
    def transformer(cls, width: int, layers: int, heads: int, kv_heads: Optional[int] = None,
                    head_dim: Optional[int] = None, **rest: Any) -> "ModelShape":
        """A stack of attention blocks: as many KV heads as heads and heads of ``width / heads`` unless said."""
        return cls(width, layers, heads, kv_heads or heads, head_dim or width // heads, **rest)

    def experts_reached(self, tokens: float) -> Optional[float]:
        """The routed experts a layer that ``tokens`` tokens are expected to reach under uniform routing
        (:func:`experts_touched`); None for a model without routed experts."""
        return experts_touched(self.experts, self.experts_per_token, tokens) if self.experts and \
            self.experts_per_token else None

    @property
    def cache_heads(self) -> Optional[int]:
        """The heads a KV cache is split by under tensor parallelism: its KV heads; 1 for an MLA latent."""
        return 1 if self.kv_latent else self.kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelShape":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


# a config's names for each figure, Hugging Face's (any architecture) and our families' (in results recorded before
# the shape was); the first one a config gives a positive integer for is taken
WIDTH = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim")
LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_encoder_blocks", "num_decoder_blocks")
HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
KV_HEADS = ("num_key_value_heads", "n_kv_head", "n_head_kv", "num_kv_heads", "n_kv_heads")
HEAD_DIM = ("head_dim", "d_kv", "attention_head_dim")  # attention_head_dim: diffusers' (DiT)
ATTENTION_FREE = ("mamba", "mamba2")  # state-space models: their ``num_heads`` are the scan's, not attention's
LANGUAGE_TASKS = ("causal-lm", "image-text-to-text")  # Hugging Face tasks that train on next tokens
EXPERTS = ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts")
EXPERTS_PER_TOKEN = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "top_k")


def from_fields(config: Mapping[str, Any], causal_lm: bool = False, vision: bool = False) -> ModelShape:
    """The shape a config's fields give (a Hugging Face config's, nested ``text_config`` first). A vision model
    without attention heads is a CNN and has no transformer figures (EfficientNet's ``num_hidden_layers`` counts its
    drop-connect steps)."""
    text = config.get("text_config")
    found = ChainMap(text, config) if isinstance(text, Mapping) else config

    def first(names: tuple[str, ...]) -> Optional[int]:
        return next((v for v in map(found.get, names) if isinstance(v, int) and not isinstance(v, bool) and v > 0),
                    None)

    heads, experts, latent = first(HEADS), first(EXPERTS), first(("kv_lora_rank",))
    if vision and heads is None:
        return ModelShape(causal_lm=causal_lm)
    if found.get("model_type") in ATTENTION_FREE:  # no attention: no heads, no key/value cache
        return ModelShape(first(WIDTH), first(LAYERS), causal_lm=causal_lm)
    nope, rope = first(("qk_nope_head_dim",)), first(("qk_rope_head_dim",))  # MLA's query/key parts (its
    head_dim = nope + rope if nope and rope else first(HEAD_DIM)                # head_dim: the rotary part's alone)
    width = first(WIDTH) or (heads * head_dim if heads and head_dim else None)  # DiT's config gives no width
    return ModelShape(width, first(LAYERS), heads, first(KV_HEADS) or heads,
                      head_dim or (width // heads if width and heads else None), experts,
                      first(EXPERTS_PER_TOKEN) if experts else None, latent, causal_lm)


def from_config(model: Mapping[str, Any]) -> ModelShape:
    """The shape of a result's ``config.model`` recorded before the family's was: a Hugging Face config's fields, or
    our families' own keys (a custom model's arguments say nothing known)."""
    family = model.get("family")
    if family == "custom":
        return ModelShape()
    if family == "hf":
        task = model.get("task")
        fields = {**(model.get("fields") or {}), "model_type": model.get("model_type")}
        return from_fields(fields, task in LANGUAGE_TASKS, task == "image-classification")
    return from_fields(model, causal_lm=family == "decoder")


def shape_of(result: Result) -> ModelShape:
    """The shape a result recorded (``info.shape``), else the one its config gives."""
    recorded = result.info.get("shape")
    if isinstance(recorded, Mapping):
        return ModelShape.from_dict(recorded)
    model = result.config.get("model")
    return from_config(model if isinstance(model, Mapping) else {})


def experts_touched(experts: int, per_token: int, tokens: float, skew: float = 0.0) -> float:
    """The expected number of distinct routed experts of one mixture-of-experts layer that ``tokens`` tokens go to,
    each token to ``per_token`` of the ``experts``. Uniform routing (``skew`` 0): E·(1 − (1 − k/E)^T). With a skew s > 0
    the experts are chosen as a Zipf law would have it: a token picks expert i (from 1) with probability
    q_i = min(1, k·p_i), p_i ∝ i^−s, so the expected count is Σ 1 − (1 − q_i)^T (s = 0 gives the uniform formula)."""
    if experts < 1 or not 1 <= per_token <= experts or tokens < 0 or skew < 0:
        raise ValueError(f"experts_touched: experts={experts}, per_token={per_token}, tokens={tokens}, skew={skew}")
    if skew == 0:
        return experts * (1.0 - (1.0 - per_token / experts) ** tokens)
    weights = [i ** -skew for i in range(1, experts + 1)]
    total = sum(weights)
    return sum(1.0 - (1.0 - min(1.0, per_token * w / total)) ** tokens for w in weights)
