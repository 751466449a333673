"""BERT family: exact parameter counts, training step on meta and cpu, closed-form FLOPs, bad input."""

from __future__ import annotations

import functools

import pytest
import torch

from flopsweep.core.errors import ConfigError
from flopsweep.models import bert
from flopsweep.models.base import BatchShape
from tests.helpers import assert_closed_form_is_the_count, built, params, preset

PRESETS = ["bert_base", "bert_large"]

# Exact counts from shared/docs/references.md, "Model shapes and exact parameter counts" (Hugging Face BertModel,
# pooler included).
REFERENCE_PARAMS = {"bert_base": 109_482_240, "bert_large": 335_141_888}

HF_SHAPES = {
    "bert_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

build = functools.partial(built, bert)  # build(cfg, device)


@pytest.mark.parametrize("name", PRESETS)
def test_params_match_hugging_face_and_reference_table(name):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        reference = transformers.BertModel(transformers.BertConfig(
            vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, **HF_SHAPES[name]))
    ours = params(build(preset(name)[0], "meta"))
    assert ours == params(reference) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_on_meta(name):
    cfg, batch = preset(name, size=2)
    assert batch.seq_len == 128  # default_seq_len
    model = build(cfg, "meta")
    loss = model(**bert.example_inputs(cfg, batch, "meta"))
    assert loss.shape == ()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tiny_model_trains_on_cpu():
    cfg = bert.Config(d_model=32, n_layer=2, n_head=4, d_ff=64, vocab_size=100, max_positions=16)
    batch = cfg.resolve_batch(3, 10, None)
    torch.manual_seed(0)
    model = build(cfg, "cpu")
    loss = model(**bert.example_inputs(cfg, batch, "cpu"))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    # the pooler is in the loss, so every parameter (pooler included) gets a nonzero gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("fields,size,seq_len", [
    (dict(d_model=64, n_layer=2, n_head=4, d_ff=100, vocab_size=300), 1, 24),
    (dict(d_model=64, n_layer=2, n_head=4, d_ff=100, vocab_size=300), 3, 7),
    (dict(d_model=48, n_layer=1, n_head=3, d_ff=192, vocab_size=50, max_positions=32, type_vocab_size=4), 2, 32),
])
def test_closed_form_equals_counted_forward(fields, size, seq_len):
    cfg = bert.Config(**fields)
    assert_closed_form_is_the_count(bert, cfg, cfg.resolve_batch(size, seq_len, None))


def test_image_size_does_not_apply():
    # one sweep can mix text and image models: batch.image_size is for image models (flopsweep/models/base.py)
    assert preset("bert_base", "batch.image_size=96")[1] == BatchShape(1, seq_len=128)


@pytest.mark.parametrize("overrides,key", [
    (["batch.seq_len=513"], "batch.seq_len"),             # 512 positions
    (["model.max_positions=64", "batch.seq_len=65"], "batch.seq_len"),
    (["model.n_head=5"], "model.n_head"),                 # 5 does not divide 768
    (["model.d_ff=0"], "model.d_ff"),
    (["model.vocab_size=0"], "model.vocab_size"),
    (["model.type_vocab_size=0"], "model.type_vocab_size"),
])
def test_bad_input_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        preset("bert_base", *overrides)
    assert err.value.key == key
