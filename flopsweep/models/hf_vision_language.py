"""Image-and-text models of Hugging Face (``model.task=image-text-to-text``), built whole by transformers: the vision
tower, what joins it to the language model, and the language model, trained on one square image of
``batch.image_size`` pixels and ``batch.seq_len`` text tokens a sample. The step runs what Hugging Face's forward
runs, module for module, less what needs the token ids' values where meta cannot read them (finding the image
tokens among the ids): the image tokens go first in each sample, which changes no count.

Qwen2-VL (``model_type=qwen2_vl``): the image is cut into 14-pixel patches (each two frames deep, as Qwen2-VL repeats
a still image), which the vision tower encodes and its merger turns, four neighbours at a time, into tokens of the
language model's width: ``(image_size / 28)^2`` image tokens a sample, before the text's. Their positions are their
order on all three rotary sections (the values of positions change no count). The vision tower's per-image positions
and attention boundaries are made from the image grid beforehand, as transformers lets a caller do (``position_ids``,
``cu_seqlens``), so that meta counts it too.

Gemma 3 (``model_type=gemma3``): SigLIP encodes the image at the size its position embeddings were built for
(``vision_config.image_size``, 896: ``batch.image_size`` must be it), the projector average-pools its patches to
``mm_tokens_per_image`` tokens (256: 64 x 64 patches pooled 4 x 4), normalizes and projects them to the text width;
they go before the text, attending to each other both ways (the ``token_type_ids`` mask Hugging Face trains with).
One image as it is (pan and scan off, the processor's default).

Llama 3.2 Vision (``model_type=mllama``): not in the sequence but cross-attended. The image is cut into tiles of
``vision_config.image_size`` pixels (560) and padded, as its processor does, to ``vision_config.max_num_tiles`` (4)
tiles whatever its size: the encoder runs on every tile's ``(560 / 14)^2 + 1`` patches (1,601, padded to 1,608)
and the projector makes 4 x 1,601 tokens of them, which each of ``text_config.cross_attention_layers`` attends to;
``batch.image_size`` sets which tiles hold the image (one up to 560 pixels, else the largest square of tiles), which
changes no count. Every text token sees the image's tiles (as after an ``<|image|>`` token first in the text): its
cross-attention mask is made as transformers makes it, less the search for text rows that see no tile (a reduction
over the token ids' mask that finds none here), whose full-row mask is then ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from flopsweep.core.errors import ConfigError, require
from flopsweep.models._transformers import gemma3_masks, vision_grid

VISION_LANGUAGE = ("qwen2_vl", "gemma3", "mllama")  # model types built whole, image and text
DEFAULT_IMAGE_SIZE = 448  # Qwen2-VL's pixels: 1,024 patches, 256 image tokens (it takes any multiple of 28)


def default_image_size(hf: Any) -> int:
    """The image a sample unless ``batch.image_size`` says: Gemma 3's and Llama 3.2 Vision's tower's own size (one
    tile for Llama 3.2 Vision), Qwen2-VL's 448."""
    return DEFAULT_IMAGE_SIZE if hf.model_type == "qwen2_vl" else hf.vision_config.image_size


def patch_grid(hf: Any, image_size: int) -> tuple[int, int, int]:
    """(patches a side, patch size, spatial merge) of a Qwen2-VL square image: a ``batch.image_size`` that is no
    multiple of the patch size times the merge is refused naming it."""
    vision = hf.vision_config
    step = vision.patch_size * vision.spatial_merge_size
    if image_size % step:
        raise ConfigError("batch.image_size", image_size, f"must be a multiple of {step} pixels (patches of "
                                                          f"{vision.patch_size}, merged {vision.spatial_merge_size} x "
                                                          f"{vision.spatial_merge_size})")
    return image_size // vision.patch_size, vision.patch_size, vision.spatial_merge_size


def _gemma3_pooling(hf: Any, image_size: int) -> tuple[int, int]:
    """(patches a side, tokens a side) of Gemma 3's projector; the image size and token count it can pool refused
    naming their keys."""
    vision = hf.vision_config
    require(image_size == vision.image_size, "batch.image_size", image_size,
            f"Gemma 3's vision tower is built for {vision.image_size}-pixel images (its position embeddings): set "
            "model.vision_config.image_size instead")
    patches, tokens = vision.image_size // vision.patch_size, math.isqrt(hf.mm_tokens_per_image)
    require(tokens > 0 and tokens * tokens == hf.mm_tokens_per_image and patches % tokens == 0,
            "model.mm_tokens_per_image", hf.mm_tokens_per_image,
            f"must be the square of a divisor of the {patches} patches a side it pools (model.vision_config's "
            f"image_size / patch_size: {vision.image_size} / {vision.patch_size})")
    return patches, tokens


def _tiles(hf: Any, image_size: int) -> tuple[int, int]:
    """(tiles that hold the image, its aspect ratio id) in Llama 3.2 Vision: one tile up to a tile's size, else the
    largest square of tiles its supported aspect ratios have, as its processor fits a square image."""
    vision = hf.vision_config
    squares = [n for n in range(1, math.isqrt(vision.max_num_tiles) + 1) if [n, n] in
               [list(ratio) for ratio in vision.supported_aspect_ratios]]
    require(bool(squares), "model.vision_config.supported_aspect_ratios", vision.supported_aspect_ratios,
            f"has no square arrangement of at most max_num_tiles={vision.max_num_tiles} tiles")
    side = squares[0] if image_size <= vision.image_size else squares[-1]
    ratio = [list(r) for r in vision.supported_aspect_ratios].index([side, side]) + 1  # 0 is no image
    return side * side, ratio


def image_tokens(hf: Any, image_size: int) -> int:
    """The language model's positions one image takes (none for Llama 3.2 Vision, which cross-attends to it); a
    ``batch.image_size`` the model cannot take is refused naming it."""
    if hf.model_type == "gemma3":
        return _gemma3_pooling(hf, image_size)[1] ** 2
    if hf.model_type == "mllama":
        require(image_size >= 1, "batch.image_size", image_size, "must be >= 1")
        _tiles(hf, image_size)
        return 0
    side, _, merge = patch_grid(hf, image_size)
    return (side // merge) ** 2


def example_inputs(hf: Any, batch: Any, device: Any) -> dict[str, torch.Tensor]:
    """One image a sample, as the model's processor gives it, and ``batch.seq_len`` text tokens; labels over the
    whole sequence (image tokens first)."""
    text = hf.get_text_config()
    vision = hf.vision_config
    length = image_tokens(hf, batch.image_size) + batch.seq_len
    inputs = {"input_ids": torch.randint(0, text.vocab_size, (batch.size, batch.seq_len), device=device),
              "labels": torch.randint(0, text.vocab_size, (batch.size, length), device=device)}
    if hf.model_type == "gemma3":
        shape = (batch.size, vision.num_channels, vision.image_size, vision.image_size)
        return {**inputs, "pixel_values": torch.randn(shape, device=device)}
    if hf.model_type == "mllama":
        tiles, ratio = _tiles(hf, batch.image_size)
        most = vision.max_num_tiles
        shown = (torch.arange(most, device=device) < tiles).long()
        return {**inputs, "pixel_values": torch.randn(batch.size, 1, most, vision.num_channels, vision.image_size,
                                                      vision.image_size, device=device),
                "aspect_ratio_ids": torch.full((batch.size, 1), ratio, device=device),
                "aspect_ratio_mask": shown.expand(batch.size, 1, most).clone()}
    side, patch, _ = patch_grid(hf, batch.image_size)  # Qwen2-VL: its patches flattened as its processor does
    pixels = torch.randn(batch.size * side * side, vision.in_channels * vision.temporal_patch_size * patch * patch,
                         device=device)
    return {**inputs, "pixel_values": pixels}


def loss(net: Any, **inputs: torch.Tensor) -> torch.Tensor:
    """The training loss of ``net`` (an ``...ForConditionalGeneration``) on one image and the text a sample."""
    kind = net.config.model_type
    if kind == "mllama":
        return _mllama_loss(net, **inputs)
    if kind == "gemma3":
        return _gemma3_loss(net, **inputs)
    return _qwen2_vl_loss(net, **inputs)


def _gemma3_loss(net: Any, input_ids: torch.Tensor, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model = net.model
    images = model.get_image_features(pixel_values, return_dict=True).pooler_output
    text = model.get_input_embeddings()(input_ids)  # scaled by the square root of the width, as Gemma embeds
    embeds = torch.cat([images.to(text.dtype), text], dim=1)
    samples, shown = input_ids.shape[0], images.shape[1]
    kinds = torch.cat([torch.ones(samples, shown, dtype=torch.long, device=text.device),
                       torch.zeros_like(input_ids)], dim=1)  # token_type_ids: 1 for the image's
    masks = gemma3_masks(net.config.get_text_config(), embeds, kinds)
    hidden = model.language_model(inputs_embeds=embeds, attention_mask=masks).last_hidden_state
    logits = net.lm_head(hidden)
    return net.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1])


def _mllama_loss(net: Any, input_ids: torch.Tensor, pixel_values: torch.Tensor, aspect_ratio_ids: torch.Tensor,
                 aspect_ratio_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model, (samples, length) = net.model, input_ids.shape
    tiles = model.vision_model(pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids,
                               aspect_ratio_mask=aspect_ratio_mask).last_hidden_state
    states = model.multi_modal_projector(tiles).reshape(-1, tiles.shape[-2], model.hidden_size)
    seen = aspect_ratio_mask.unsqueeze(1).expand(samples, length, *aspect_ratio_mask.shape[1:])  # each token's tiles
    seen = seen.repeat_interleave(model.vision_model.num_patches, dim=3).view(samples, length, -1).unsqueeze(1)
    hidden_mask = (1.0 - seen).to(model.dtype)  # as transformers' _prepare_cross_attention_mask: 0 seen, min not
    rows = torch.ones(samples, 1, length, 1, dtype=model.dtype, device=input_ids.device)  # every row sees a tile
    mask = hidden_mask.masked_fill(hidden_mask.to(torch.bool), torch.finfo(model.dtype).min) * rows
    hidden = model.language_model(input_ids=input_ids, cross_attention_states=states, cross_attention_mask=mask,
                                  full_text_row_masked_out_mask=rows).last_hidden_state
    logits = net.lm_head(hidden)
    return net.loss_function(logits, labels, vocab_size=logits.shape[-1])


def _qwen2_vl_loss(net: Any, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    model, samples = net.model, input_ids.shape[0]
    side = round((pixel_values.shape[0] // samples) ** 0.5)
    grid = torch.tensor([[1, side, side]] * samples)  # on the CPU: the tower reads its values
    merge = model.visual.spatial_merge_size
    cu_seqlens, positions = vision_grid(grid, merge)
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
