"""A counted generation as the serving roofline reads it (:mod:`flopsweep.projection.serving`): per sequence, what its
prefill and each decode step compute and move (the weights a step reads, the KV cache a token), in the dtypes they
are served in, and of a mixture of experts' routed experts those a phase's tokens reach."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from flopsweep.core import metrics as M
from flopsweep.core.errors import one_line, require
from flopsweep.core.result import Result
from flopsweep.core.shape import experts_touched, shape_of

# bytes an element, as weights and KV caches are served (int4, fp4: two weights a byte; scales left out)
SERVED_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}
KV_DTYPES = ("float32", "bfloat16", "float16", "fp8")


@dataclass(frozen=True)
class Generation:
    """A generation's counted figures, per sequence: a prompt of ``prompt`` tokens, ``new_tokens`` generated."""

    source: str
    prompt: int
    new_tokens: int
    prefill_flops: float          # one prompt's prefill
    decode_first_flops: float     # a decode step at context prompt + 1
    decode_last_flops: float      # ... at prompt + new_tokens - 1
    kv_bytes_per_token: float
    weights_bytes: float          # every weight
    weights_read_bytes: float     # what a decode step reads besides the routed experts (a dense model: all it reads)
    dtype: str
    kv_heads: Optional[int] = None  # the heads the cache is split by under tp (None: not known, split evenly)
    width: Optional[int] = None     # the residual stream a tensor-parallel all-reduce carries (None: not known)
    layers: Optional[int] = None
    heads: Optional[int] = None     # the attention heads tensor parallelism splits (None: not known)
    routed_bytes: float = 0.0       # a mixture of experts: every routed expert's weights (0: dense, or not known)
    experts: Optional[int] = None   # ... routed experts a layer, and how many a token goes to
    experts_per_token: Optional[int] = None
    counted_routed_bytes: float = 0.0  # ``routed_bytes`` as counted, whatever dtype they are served in
    state_bytes: float = 0.0        # a sequence's cache whatever its tokens (a state-space model's state)

    @classmethod
    def from_result(cls, result: Result, source: str) -> "Generation":
        m = result.metrics
        require(result.status == "ok", "run", source, f"has status {str(result.status)!r}, not 'ok'"
                + (f": {one_line(result.error, 200, kind=False)}" if result.error else ""))  # as train says (and why)
        require(m.get(M.FLOPS_PREFILL) is not None, "run", source, "is not a counted workload=generate run (no "
                f"{M.FLOPS_PREFILL}): measure one with workload=generate, or give --model")
        batch, new_tokens = int(m[M.BATCH_SIZE]), int(m[M.NEW_TOKENS])
        first = m.get(M.FLOPS_DECODE_TOKEN_FIRST)
        dtype = ((result.config.get("dtype") or {}).get("params")) or "bfloat16"
        shape = shape_of(result)
        read = m.get(M.DECODE_WEIGHTS_READ_BYTES) or m[M.WEIGHTS_BYTES]
        routed = m.get(M.ROUTED_EXPERT_BYTES) or 0.0
        reached = shape.experts_reached(batch) if routed else None
        experts = (shape.experts, shape.experts_per_token) if reached is not None else (None, None)
        if reached is not None:  # the run's figure is its batch's expected experts: kept here is what every batch reads
            read -= routed * reached / shape.experts
        return cls(source, int(m[M.SEQ_LEN]), new_tokens, m[M.FLOPS_PREFILL] / batch,
                   first or 0.0, m.get(M.FLOPS_DECODE_TOKEN_LAST) or 0.0, m[M.KV_CACHE_BYTES_PER_TOKEN],
                   m[M.WEIGHTS_BYTES] + (m.get(M.BUFFERS_BYTES) or 0), read, dtype, shape.cache_heads, shape.width,
                   shape.layers, shape.heads, routed if experts[0] else 0.0, *experts,
                   routed if experts[0] else 0.0, m.get(M.CACHE_STATE_BYTES) or 0.0)

    @property
    def steps(self) -> int:
        return self.new_tokens - 1

    def cache_bytes(self, tokens: Any) -> Any:
        """A sequence's cache at ``tokens`` tokens (a number or an array of them)."""
        return self.kv_bytes_per_token * tokens + self.state_bytes

    def kv_share(self, tp: int) -> float:
        """The share of the whole KV cache one of ``tp`` GPUs holds: its heads' (``ceil(kv_heads / tp)`` of them:
        one where tp is more than the heads), ``1 / tp`` where the heads are not known."""
        return -(-self.kv_heads // tp) / self.kv_heads if self.kv_heads else 1.0 / tp

    def served(self, weights_dtype: Optional[str] = None, kv_dtype: Optional[str] = None) -> "Generation":
        """This generation with its weights (every one: embeddings and norms too) served in ``weights_dtype`` and its
        KV cache in ``kv_dtype``, their bytes scaled from the counted dtype's; the FLOPs stay."""
        counted = SERVED_BYTES.get(self.dtype)
        require(counted is not None, "run", self.source,
                f"was counted with {self.dtype} weights: their bytes cannot be rescaled")
        w = SERVED_BYTES[weights_dtype] / counted if weights_dtype else 1.0
        kv = SERVED_BYTES[kv_dtype] / counted if kv_dtype else 1.0
        return replace(self, weights_bytes=self.weights_bytes * w, weights_read_bytes=self.weights_read_bytes * w,
                       routed_bytes=self.routed_bytes * w, kv_bytes_per_token=self.kv_bytes_per_token * kv,
                       state_bytes=self.state_bytes * kv)

    def experts_read(self, tokens: int, skew: float = 0.0) -> Optional[float]:
        """The routed experts a layer that ``tokens`` tokens reach (None for a dense model)."""
        return experts_touched(self.experts, self.experts_per_token, tokens, skew) if self.experts else None

    def routed_read(self, tokens: int, skew: float = 0.0) -> float:
        """Bytes of the routed experts ``tokens`` tokens reach (0 for a dense model)."""
        touched = self.experts_read(tokens, skew)
        return self.routed_bytes * touched / self.experts if touched is not None else 0.0

    @property
    def expert_flops_per_token(self) -> float:
        """A token's FLOPs in its routed experts: a multiply-add for each weight of the ``k`` of ``E`` it goes to,
        the weights counted in the run's dtype (0 for a dense model)."""
        if not self.experts or not self.routed_bytes or self.dtype not in SERVED_BYTES:
            return 0.0
        return 2 * self.counted_routed_bytes / SERVED_BYTES[self.dtype] * self.experts_per_token / self.experts

    def decode_flops(self, contexts: np.ndarray) -> np.ndarray:
        """A decode step's FLOPs per sequence at each context (the line through the counted ends)."""
        if self.steps <= 1:
            return np.full(contexts.shape, self.decode_first_flops, dtype=float)
        slope = (self.decode_last_flops - self.decode_first_flops) / (self.steps - 1)
        return self.decode_first_flops + slope * (contexts - (self.prompt + 1))
