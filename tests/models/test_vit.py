"""ViT family: exact parameter counts, training step on meta and cpu, closed-form FLOPs, batch.image_size."""

from __future__ import annotations

import functools

import pytest
import torch

from flopsweep.core.errors import ConfigError
from flopsweep.models import vit
from flopsweep.models.base import BatchShape
from tests.helpers import assert_closed_form_is_the_count, built, params, preset

PRESETS = ["vit_b16", "vit_l16", "vit_h14"]

# Exact counts from shared/docs/references.md, "Model shapes and exact parameter counts" (torchvision at 224 px,
# the same as Hugging Face ViTForImageClassification).
REFERENCE_PARAMS = {"vit_b16": 86_567_656, "vit_l16": 304_326_632, "vit_h14": 632_045_800}

HF_SHAPES = {
    "vit_b16": dict(patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072),
    "vit_l16": dict(patch_size=16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096),
    "vit_h14": dict(patch_size=14, hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                    intermediate_size=5120),
}

build = functools.partial(built, vit)  # build(cfg, device)


@pytest.mark.parametrize("name", PRESETS)
def test_params_match_hugging_face_and_reference_table(name):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        reference = transformers.ViTForImageClassification(
            transformers.ViTConfig(image_size=224, num_labels=1000, **HF_SHAPES[name]))
    ours = params(build(preset(name)[0], "meta"))
    assert ours == params(reference) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_on_meta(name):
    cfg, batch = preset(name, size=2)
    model = build(cfg, "meta")
    loss = model(**vit.example_inputs(cfg, batch, "meta"))
    assert loss.shape == ()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tiny_model_trains_on_cpu():
    cfg = vit.Config(image_size=32, patch_size=8, d_model=32, n_layer=2, n_head=4, d_ff=64, num_classes=10)
    batch = cfg.resolve_batch(3, None, None)
    torch.manual_seed(0)
    model = build(cfg, "cpu")
    loss = model(**vit.example_inputs(cfg, batch, "cpu"))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("fields,size,image_size", [
    (dict(patch_size=8, d_model=64, n_layer=2, n_head=4, d_ff=128, num_classes=10), 1, 32),
    (dict(patch_size=8, d_model=64, n_layer=2, n_head=4, d_ff=128, num_classes=10), 3, 48),
    (dict(patch_size=14, d_model=48, n_layer=1, n_head=3, d_ff=96, num_classes=7, channels=1), 2, 56),
    (dict(patch_size=4, d_model=40, n_layer=3, n_head=5, d_ff=72, num_classes=100), 2, 20),
])
def test_closed_form_equals_counted_forward(fields, size, image_size):
    cfg = vit.Config(**fields)
    assert_closed_form_is_the_count(vit, cfg, cfg.resolve_batch(size, None, image_size))


def test_image_size_sets_position_table():
    cfg, batch = preset("vit_b16", "batch.image_size=96")
    assert batch.image_size == 96 and batch.seq_len is None
    assert build(cfg, "meta").pos_embedding.shape == (1, (96 // 16) ** 2 + 1, 768)
    cfg, _ = preset("vit_b16")
    assert build(cfg, "meta").pos_embedding.shape == (1, 14 * 14 + 1, 768)


def test_seq_len_does_not_apply():
    # one sweep can mix text and image models: batch.seq_len is for text models (flopsweep/models/base.py)
    cfg, batch = preset("vit_b16", "batch.seq_len=64")
    assert batch == BatchShape(1, image_size=224)


@pytest.mark.parametrize("overrides,key", [
    (["batch.image_size=100"], "batch.image_size"),       # not a multiple of the 16 px patch
    (["model.patch_size=15"], "batch.image_size"),        # 224 is not a multiple of 15
    (["model.patch_size=0"], "model.patch_size"),
    (["model.n_head=7"], "model.n_head"),                 # 7 does not divide 768
    (["model.d_ff=0"], "model.d_ff"),
    (["model.num_classes=-1"], "model.num_classes"),
    (["model.channels=0"], "model.channels"),
])
def test_bad_input_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        preset("vit_b16", *overrides)
    assert err.value.key == key
