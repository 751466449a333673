"""Every transformers symbol flopsweep uses outside the library's public API, in this one file: the auto classes'
mapping tables (which architectures a model type has), Gemma 3's and Qwen2-VL's helpers that their forward calls
(used where the image-and-text loss is written out), and the logger of its hub kernels. Each is imported when
used: transformers is an optional extra."""

from __future__ import annotations

import logging
from typing import Any


def quiet_hub_kernels() -> None:
    """Its note that a fused kernel (mamba_ssm, causal_conv1d) is missing and the reference path runs: the path
    counted on meta and the CPU, which docs/models.md says; not a warning for a count."""
    logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)


def auto_mappings() -> Any:
    """``transformers.models.auto.modeling_auto``: its ``MODEL_FOR_*_MAPPING_NAMES`` tables (model type ->
    class name)."""
    from transformers.models.auto import modeling_auto

    return modeling_auto


def gemma3_masks(text_config: Any, embeds: Any, token_kinds: Any) -> Any:
    """The attention masks Gemma 3's model makes for its text and images (images attend within themselves both
    ways), from each position's kind (1 for an image's)."""
    from transformers.models.gemma3.modeling_gemma3 import create_masks_for_vision_model, \
        get_block_sequence_ids_for_mask

    return create_masks_for_vision_model(config=text_config, inputs_embeds=embeds, attention_mask=None, cache=None,
                                         position_ids=None,
                                         block_sequence_ids=get_block_sequence_ids_for_mask(token_kinds,
                                                                                            embeds.device))


def vision_grid(grid: Any, merge: int) -> tuple[Any, Any]:
    """A Qwen2-VL vision tower's cumulative sequence lengths and position ids for images of ``grid`` (t, h, w)."""
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

    return get_vision_cu_seqlens(grid), get_vision_position_ids(grid, merge)
