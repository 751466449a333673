"""T5 and the Vaswani Transformer: exact parameters, the same numbers as Hugging Face T5 and PyTorch's post-norm
layers, training on meta and cpu, the closed form against the counted FLOPs, bad input."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flopsweep.core.errors import ConfigError
from flopsweep.models import seq2seq
from flopsweep.models.base import BatchShape
from flopsweep.models.seq2seq import relative_buckets
from tests.helpers import MatmulFlops, SdpaCalls, built, params, preset


T5_PRESETS = ["t5_small", "t5_base", "t5_large"]
VASWANI_PRESETS = ["transformer_base", "transformer_big"]

# Exact counts from shared/docs/references.md, "Model shapes and exact parameter counts" (Hugging Face T5Model).
REFERENCE_PARAMS = {"t5_small": 60_506_624, "t5_base": 222_903_552, "t5_large": 737_668_096}

HF_SHAPES = {
    "t5_small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8),
    "t5_base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12),
    "t5_large": dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16),
}

build = functools.partial(built, seq2seq)  # build(cfg, device)


def tiny(style: str, **fields) -> seq2seq.Config:
    shape = dict(d_model=32, n_layer=2, n_head=4, d_ff=48, vocab_size=50, max_positions=64)
    return seq2seq.Config(style=style, **{**shape, **fields})


@pytest.mark.parametrize("name", T5_PRESETS)
def test_t5_params_match_hugging_face_and_reference_table(name):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        reference = transformers.T5Model(transformers.T5Config(vocab_size=32128, d_kv=64, **HF_SHAPES[name]))
    assert params(build(preset(name)[0], "meta")) == params(reference) == REFERENCE_PARAMS[name]


def vaswani_params(V: int, d: int, ff: int, L: int) -> int:
    attention = 4 * d * d + 4 * d
    feed_forward = 2 * d * ff + ff + d
    norm = 2 * d
    return V * d + L * (attention + feed_forward + 2 * norm) + L * (2 * attention + feed_forward + 3 * norm)


@pytest.mark.parametrize("name,paper,shape", [
    ("transformer_base", 65e6, (37000, 512, 2048, 6)),
    ("transformer_big", 213e6, (37000, 1024, 4096, 6)),
])
def test_vaswani_params(name, paper, shape):
    ours = params(build(preset(name)[0], "meta"))
    assert ours == vaswani_params(*shape)  # 63,082,496 and 214,245,376
    # Vaswani et al. 2017, Table 3: ~65M and ~213M, rounded and with an approximate vocabulary
    assert abs(ours / paper - 1) < 0.05


@pytest.mark.parametrize("name", T5_PRESETS + VASWANI_PRESETS)
def test_preset_trains_on_meta(name):
    cfg, batch = preset(name, size=2)
    model = build(cfg, "meta")
    inputs = seq2seq.example_inputs(cfg, batch, "meta")
    with SdpaCalls() as sdpa:
        loss = model(**inputs)
    assert sdpa.calls == 3 * cfg.n_layer  # encoder self; decoder self and cross: all through F.sdpa
    assert loss.shape == ()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("style", ["t5", "vaswani"])
def test_tiny_model_trains_on_cpu(style):
    cfg = tiny(style, target_len=7)
    batch = cfg.resolve_batch(3, 11, None)
    cfg.validate(batch)
    torch.manual_seed(0)
    model = build(cfg, "cpu")
    inputs = seq2seq.example_inputs(cfg, batch, "cpu")
    assert inputs["src"].shape == (3, 11) and inputs["tgt"].shape == inputs["targets"].shape == (3, 7)
    loss = model(**inputs)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_t5_relative_bias_is_in_the_first_layer_of_each_stack():
    names = [n for n, _ in build(tiny("t5", n_layer=3), "meta").named_parameters() if "relative" in n]
    assert names == ["encoder.blocks.0.relative_bias.weight", "decoder.blocks.0.relative_bias.weight"]


def t5_state_from_hugging_face(hf: nn.Module, n_layer: int) -> dict[str, torch.Tensor]:
    sd = hf.state_dict()
    ours = {"shared.weight": sd["shared.weight"]}
    for stack in ("encoder", "decoder"):
        for i in range(n_layer):
            src, dst = f"{stack}.block.{i}.layer.", f"{stack}.blocks.{i}."
            att = src + "0.SelfAttention."
            ours[dst + "attn.qkv.weight"] = torch.cat([sd[att + w] for w in ("q.weight", "k.weight", "v.weight")])
            ours[dst + "attn.out.weight"] = sd[att + "o.weight"]
            ours[dst + "norm1.weight"] = sd[src + "0.layer_norm.weight"]
            ff = 1
            if stack == "decoder":
                cross, ff = src + "1.EncDecAttention.", 2
                ours[dst + "cross_attn.q.weight"] = sd[cross + "q.weight"]
                ours[dst + "cross_attn.kv.weight"] = torch.cat([sd[cross + "k.weight"], sd[cross + "v.weight"]])
                ours[dst + "cross_attn.out.weight"] = sd[cross + "o.weight"]
                ours[dst + "norm_cross.weight"] = sd[src + "1.layer_norm.weight"]
            ours[dst + "mlp.up.weight"] = sd[f"{src}{ff}.DenseReluDense.wi.weight"]
            ours[dst + "mlp.down.weight"] = sd[f"{src}{ff}.DenseReluDense.wo.weight"]
            ours[dst + "norm2.weight"] = sd[f"{src}{ff}.layer_norm.weight"]
        ours[f"{stack}.blocks.0.relative_bias.weight"] = \
            sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        ours[f"{stack}.norm.weight"] = sd[f"{stack}.final_layer_norm.weight"]
    return ours


def test_t5_loss_equals_hugging_face():
    transformers = pytest.importorskip("transformers")
    cfg = tiny("t5", d_kv=12)  # inner 48 != d_model 32, as in T5
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=12, d_ff=cfg.d_ff, num_layers=cfg.n_layer,
        num_heads=cfg.n_head, dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True)).eval()
    model = build(cfg, "cpu")
    model.load_state_dict(t5_state_from_hugging_face(hf, cfg.n_layer))
    # a source longer than the decoder so that far offsets fall into the logarithmic buckets
    inputs = seq2seq.example_inputs(cfg, cfg.resolve_batch(2, 40, None), "cpu") | {
        "tgt": torch.randint(0, cfg.vocab_size, (2, 25)), "targets": torch.randint(0, cfg.vocab_size, (2, 25))}
    expected = hf(input_ids=inputs["src"], decoder_input_ids=inputs["tgt"], labels=inputs["targets"]).loss
    torch.testing.assert_close(model(**inputs), expected)


def test_vaswani_loss_equals_pytorch_post_norm_layers():
    cfg = tiny("vaswani")
    d, L = cfg.d_model, cfg.n_layer
    torch.manual_seed(0)
    model = build(cfg, "cpu")
    options = dict(d_model=d, nhead=cfg.n_head, dim_feedforward=cfg.d_ff, dropout=0.0, activation="relu",
                   batch_first=True, norm_first=False)
    encoder = [nn.TransformerEncoderLayer(**options) for _ in range(L)]
    decoder = [nn.TransformerDecoderLayer(**options) for _ in range(L)]
    with torch.no_grad():
        for ref, ours in zip(encoder + decoder, list(model.encoder.blocks) + list(model.decoder.blocks)):
            ref.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
            ref.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
            ref.self_attn.out_proj.load_state_dict(ours.attn.out.state_dict())
            ref.linear1.load_state_dict(ours.mlp.up.state_dict())
            ref.linear2.load_state_dict(ours.mlp.down.state_dict())
            ref.norm1.load_state_dict(ours.norm1.state_dict())
            if isinstance(ref, nn.TransformerDecoderLayer):
                q, kv = ours.cross_attn.q, ours.cross_attn.kv
                ref.multihead_attn.in_proj_weight.copy_(torch.cat([q.weight, kv.weight]))
                ref.multihead_attn.in_proj_bias.copy_(torch.cat([q.bias, kv.bias]))
                ref.multihead_attn.out_proj.load_state_dict(ours.cross_attn.out.state_dict())
                ref.norm2.load_state_dict(ours.norm_cross.state_dict())
                ref.norm3.load_state_dict(ours.norm2.state_dict())
            else:
                ref.norm2.load_state_dict(ours.norm2.state_dict())

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        # sines then cosines (the tensor2tensor layout of the paper's code), frequencies 10000^(-2i/d)
        pos = torch.arange(tokens.shape[1])[:, None].float()
        angle = pos / 10000 ** (torch.arange(0, d, 2).float() / d)
        return model.shared(tokens) * math.sqrt(d) + torch.cat([angle.sin(), angle.cos()], dim=-1)

    inputs = seq2seq.example_inputs(cfg, cfg.resolve_batch(2, 9, None), "cpu")
    memory = embed(inputs["src"])
    for layer in encoder:
        memory = layer(memory)
    y = embed(inputs["tgt"])
    mask = nn.Transformer.generate_square_subsequent_mask(y.shape[1])
    for layer in decoder:
        y = layer(y, memory, tgt_mask=mask, tgt_is_causal=True)
    expected = F.cross_entropy(F.linear(y, model.shared.weight).flatten(0, 1), inputs["targets"].flatten())
    torch.testing.assert_close(model(**inputs), expected)


@pytest.mark.parametrize("device", ["meta", "cpu"])
@pytest.mark.parametrize("cfg,size,seq_len", [
    (tiny("t5"), 2, 12),
    (tiny("t5", d_kv=16, n_layer=1, target_len=5), 3, 20),   # inner 64 != d_model, decoder shorter
    (tiny("vaswani", n_layer=3, target_len=17), 1, 6),        # decoder longer than the encoder
    (tiny("vaswani", d_model=48, n_head=3, d_ff=200), 2, 10),
])
def test_closed_form_equals_counted_forward(cfg, size, seq_len, device):
    batch = cfg.resolve_batch(size, seq_len, None)
    cfg.validate(batch)
    model = build(cfg, device)
    inputs = seq2seq.example_inputs(cfg, batch, device)
    with MatmulFlops() as counted:
        model(**inputs)
    # On meta attention decomposes into bmm; on cpu it runs the fused kernel, counted by its own rule, except
    # T5's self-attention: its position bias needs a gradient, which sends it to the math kernel (bmm).
    fused_on_cpu = cfg.n_layer if cfg.style == "t5" else 3 * cfg.n_layer
    assert counted.fused_attention_calls == (fused_on_cpu if device == "cpu" else 0)
    assert counted.flops == seq2seq.analytic_forward_flops(cfg, batch)


def test_target_len_defaults_to_seq_len():
    cfg, batch = preset("t5_small", "batch.seq_len=64", size=2)
    assert batch == BatchShape(2, seq_len=64)
    inputs = seq2seq.example_inputs(cfg, batch, "meta")
    assert inputs["src"].shape == inputs["tgt"].shape == inputs["targets"].shape == (2, 64)
    assert preset("transformer_base")[1].seq_len == 128  # default_seq_len


@pytest.mark.parametrize("name,overrides,key", [
    ("t5_small", ["batch.seq_len=513"], "batch.seq_len"),                 # T5 was trained at 512
    ("transformer_base", ["model.max_positions=64", "batch.seq_len=65"], "batch.seq_len"),
    ("t5_small", ["model.target_len=0"], "model.target_len"),
    ("transformer_big", ["model.target_len=1000"], "model.target_len"),
    ("transformer_base", ["model.n_head=5"], "model.n_head"),              # 5 does not divide 512
    ("t5_small", ["model.d_kv=0"], "model.d_kv"),
    ("t5_small", ["model.style=bart"], "model.style"),
    ("t5_small", ["model.d_ff=0"], "model.d_ff"),
    ("transformer_base", ["model.vocab_size=0"], "model.vocab_size"),
    ("t5_small", ["model.relative_buckets=2"], "model.relative_buckets"),
    ("t5_small", ["model.relative_max_distance=16"], "model.relative_max_distance"),
])
def test_bad_input_names_its_key(name, overrides, key):
    with pytest.raises(ConfigError) as err:
        preset(name, *overrides)
    assert err.value.key == key


def test_t5_heads_need_not_divide_d_model():
    cfg, _ = preset("t5_small", "model.n_head=5")  # inner = 5 * d_kv 64, as T5 allows
    assert cfg.head_dim == 64


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_hugging_face(bidirectional):
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    q, k = 40, 300
    offsets = torch.arange(k)[None, :] - torch.arange(q)[:, None]
    expected = T5Attention._relative_position_bucket(offsets, bidirectional=bidirectional, num_buckets=32,
                                                     max_distance=128)
    assert torch.equal(relative_buckets(q, k, bidirectional, 32, 128, torch.device("cpu")), expected)
