"""The (query, key) pairs a ``flex_attention`` kernel computes: every pair of each tile its block mask does not skip.

PyTorch's fused FlexAttention kernel walks, for each tile of ``Q_BLOCK_SIZE`` query rows, the key tiles its
``BlockMask`` lists: the partial ones (``kv_num_blocks`` / ``kv_indices``, where the mask is applied inside the tile)
and the full ones (``full_kv_num_blocks`` / ``full_kv_indices``). A tile it lists is computed whole; one it does not
list is skipped. So a causal mask over 256 tokens in 128-token tiles computes 3 of 4 tiles: 3/4 of the dense pairs,
not the half that a pair-by-pair count would give. The last tile of a sequence that is not a multiple of the tile
is as long as what is left of it.

A block mask made on ``meta`` has no values: its tiles are made again on the CPU from its ``mask_mod`` (a band of
query tiles at a time, so a long context never holds its whole mask); a mask that cannot be evaluated there (it reads
tensors that live on ``meta``) is counted dense, and said so (:data:`DENSE_FALLBACK`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from flopsweep.measure._torch import no_modes, noop_mask

# a block mask's tuple (``BlockMask.as_tuple()``), as the higher-order op receives it
KV_NUM, KV_INDICES, FULL_KV_NUM, FULL_KV_INDICES, Q_BLOCK, KV_BLOCK, MASK_MOD = 2, 3, 4, 5, 14, 15, 16
BAND_CELLS = 1 << 25  # mask values evaluated at once when a meta mask is made again on the CPU (32 Mi booleans)
DENSE_FALLBACK = "flex_attention (a block mask on meta that the CPU cannot evaluate: counted dense)"

_remade: dict[tuple, int] = {}  # (mask_mod, batch, heads, Sq, Sk, tiles) -> pairs: a model's layers share one mask


def pairs(query: torch.Tensor, key: torch.Tensor, block: tuple, said: Optional[Callable[[str], None]] = None) -> int:
    """The (query, key) pairs computed over all of ``query``'s batch and heads; ``said`` is told when a meta mask
    could not be evaluated and was counted dense."""
    *batch, sq, _ = query.shape
    sk = key.shape[-2]
    num = block[KV_NUM]
    masks_b, masks_h = num.shape[0], num.shape[1]  # 1 where the mask is broadcast over the batch or the heads
    spread = (batch[0] // masks_b) * (batch[1] // masks_h)
    with no_modes():
        if num.device.type != "meta":
            return spread * _computed(block, sq, sk)
        if block[MASK_MOD] is noop_mask():
            return batch[0] * batch[1] * sq * sk
        key_ = (block[MASK_MOD], masks_b, masks_h, sq, sk, block[Q_BLOCK], block[KV_BLOCK])
        if key_ not in _remade:
            if len(_remade) > 64:
                _remade.clear()
            try:
                _remade[key_] = _remake(block, masks_b, masks_h, sq, sk)
            except Exception:  # noqa: BLE001 - a mask_mod reading meta tensors: no values to decide its tiles
                if said is not None:
                    said(DENSE_FALLBACK)
                return batch[0] * batch[1] * sq * sk
        return spread * _remade[key_]


def _computed(block: tuple, sq: int, sk: int) -> int:
    """Pairs computed over the mask's own batch and heads: per query tile, its rows times the keys of its tiles."""
    q_tile, kv_tile = block[Q_BLOCK], block[KV_BLOCK]
    tiles_q, tiles_kv = block[KV_INDICES].shape[-2], block[KV_INDICES].shape[-1]
    rows = (sq - torch.arange(tiles_q, dtype=torch.int64) * q_tile).clamp(0, q_tile)
    cols = (sk - torch.arange(tiles_kv, dtype=torch.int64) * kv_tile).clamp(0, kv_tile)

    def keys(num: Optional[torch.Tensor], indices: Optional[torch.Tensor]) -> torch.Tensor:
        if num is None:
            return torch.zeros((), dtype=torch.int64)
        listed = torch.arange(indices.shape[-1]) < num.unsqueeze(-1).to(torch.int64)
        return (cols[indices.to(torch.int64).clamp(0, tiles_kv - 1)] * listed).sum(-1)

    per_tile = keys(block[KV_NUM], block[KV_INDICES]) + keys(block[FULL_KV_NUM], block[FULL_KV_INDICES])
    return int((per_tile * rows).sum())


def _remake(block: tuple, masks_b: int, masks_h: int, sq: int, sk: int) -> int:
    """The pairs of a meta block mask, its tiles made again on the CPU from its ``mask_mod``, a band of query tiles
    at a time."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod, q_tile, kv_tile = block[MASK_MOD], block[Q_BLOCK], block[KV_BLOCK]
    band = max(1, BAND_CELLS // max(1, masks_b * masks_h * q_tile * sk)) * q_tile
    total = 0
    for start in range(0, sq, band):
        rows = min(band, sq - start)

        def shifted(b: Any, h: Any, q: Any, kv: Any, start: int = start) -> Any:
            return mask_mod(b, h, q + start, kv)

        made = create_block_mask(shifted, masks_b, masks_h, rows, sk, device="cpu", BLOCK_SIZE=(q_tile, kv_tile))
        total += _computed(made.as_tuple(), rows, sk)
    return total
