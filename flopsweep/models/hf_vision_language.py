"""Image-and-text models of Hugging Face (``model.task=image-text-to-text``), built whole by transformers: the vision
tower, its merger and the language model, trained on one image and ``batch.seq_len`` text tokens a sample.

Qwen2-VL (``model_type=qwen2_vl``): a square image of ``batch.image_size`` pixels is cut into 14-pixel patches
(each two frames deep, as Qwen2-VL repeats a still image), which the vision tower encodes and its merger turns, four
neighbours at a time, into tokens of the language model's width: ``(image_size / 28)^2`` image tokens a sample, before
the text's. The step runs what Hugging Face's forward runs, module for module, less what needs the token ids' values
(finding the image tokens among them, the multimodal rotary positions made from them): the image tokens go first in
each sample, and the positions are their order on all three rotary sections (the values of positions change no count).
The vision tower's per-image positions and attention boundaries are made from the image grid beforehand, as
transformers lets a caller do (``position_ids``, ``cu_seqlens``), so that meta counts it too.
"""

from __future__ import annotations

from typing import Any

import torch

from flopsweep.core.errors import ConfigError

VISION_LANGUAGE = ("qwen2_vl",)  # model types built whole, image and text
DEFAULT_IMAGE_SIZE = 448  # pixels: 1,024 patches, 256 image tokens (Qwen2-VL takes any size, a multiple of 28)


def patch_grid(hf: Any, image_size: int) -> tuple[int, int, int]:
    """(patches a side, patch size, spatial merge) of a square image: a ``batch.image_size`` that is no multiple of
    the patch size times the merge is refused naming it."""
    vision = hf.vision_config
    step = vision.patch_size * vision.spatial_merge_size
    if image_size % step:
        raise ConfigError("batch.image_size", image_size, f"must be a multiple of {step} pixels (patches of "
                                                          f"{vision.patch_size}, merged {vision.spatial_merge_size} x "
                                                          f"{vision.spatial_merge_size})")
    return image_size // vision.patch_size, vision.patch_size, vision.spatial_merge_size


def image_tokens(hf: Any, image_size: int) -> int:
    """The language model's tokens one image becomes."""
    side, _, merge = patch_grid(hf, image_size)
    return (side // merge) ** 2


def example_inputs(hf: Any, batch: Any, device: Any) -> dict[str, torch.Tensor]:
    """One image a sample (its patches flattened as Qwen2-VL's processor flattens them) and ``batch.seq_len`` text
    tokens; labels over the whole sequence, image tokens first."""
    side, patch, _ = patch_grid(hf, batch.image_size)
    vision = hf.vision_config
    text = hf.get_text_config()
    pixels = torch.randn(batch.size * side * side, vision.in_channels * vision.temporal_patch_size * patch * patch,
                         device=device)
    length = image_tokens(hf, batch.image_size) + batch.seq_len
    return {"input_ids": torch.randint(0, text.vocab_size, (batch.size, batch.seq_len), device=device),
            "pixel_values": pixels,
            "labels": torch.randint(0, text.vocab_size, (batch.size, length), device=device)}


def loss(net: Any, input_ids: torch.Tensor, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss of ``net`` (a ``Qwen2VLForConditionalGeneration``) on one image and the text a sample."""
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

    model, samples = net.model, input_ids.shape[0]
    side = round((pixel_values.shape[0] // samples) ** 0.5)
    grid = torch.tensor([[1, side, side]] * samples)  # on the CPU: the tower reads its values
    merge = model.visual.spatial_merge_size
    cu_seqlens = get_vision_cu_seqlens(grid)
    positions = get_vision_position_ids(grid, merge)
    device, pixel_values = pixel_values.device, pixel_values.type(model.visual.dtype)  # as transformers feeds it
    vision = model.visual(pixel_values, grid_thw=grid, position_ids=positions.to(device),
                          cu_seqlens=cu_seqlens if device.type == "meta" else cu_seqlens.to(device))
    images = getattr(vision, "pooler_output", vision)  # the merged image tokens
    text = model.language_model.get_input_embeddings()(input_ids)
    embeds = torch.cat([images.reshape(samples, -1, text.shape[-1]).to(text.dtype), text], dim=1)
    order = torch.arange(embeds.shape[1], device=device).expand(3, samples, -1)
    hidden = model.language_model(inputs_embeds=embeds, position_ids=order).last_hidden_state
    logits = net.lm_head(hidden)
    return net.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1])
