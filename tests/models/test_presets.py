"""Every model preset builds, counts and sizes on meta; parameter counts equal the reference implementations."""

import pytest
import torch

from flopsweep.build.model import build
from flopsweep.config.resolve import resolve
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.measure.size import measure_size, unique_parameters
from tests.helpers import compose_config, model_presets

# Exact counts of the reference implementations (shared/docs/references.md, "Model shapes and exact
# parameter counts": Hugging Face transformers models built from their configs, or torchvision).
REFERENCE_PARAMS = {
    "vit_b16": 86_567_656, "vit_l16": 304_326_632, "vit_h14": 632_045_800,
    "bert_base": 109_482_240, "bert_large": 335_141_888,
    "gpt2_small": 124_439_808, "gpt2_medium": 354_823_168, "gpt2_large": 774_030_080, "gpt2_xl": 1_557_611_200,
    "t5_small": 60_506_624, "t5_base": 222_903_552, "t5_large": 737_668_096,
    "llama2_7b": 6_738_415_616, "qwen2_5_0_5b": 494_032_768, "qwen2_5_7b": 7_615_616_512,
}
# families whose closed form is exact for the counted matmul FLOPs of forward
EXACT_ANALYTIC = {"decoder", "bert", "vit", "seq2seq", "generic"}


def meta_spec(preset: str, *overrides: str):
    return resolve(compose_config(f"model={preset}", "device=meta", "batch.size=1", *overrides))


# a preset whose count loops over its tokens (Jamba's Mamba layers: transformers' reference scan) at fewer of them
SHORTER = {"jamba_1_5_mini": ["batch.seq_len=64"]}


# every preset is counted here in make test-all; the fast lane counts each family's first preset, as a job, in
# tests/build/test_registries.py (some 0.5 s a preset, most of it meta's kernels meeting a new model's shapes)
@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in model_presets() if p not in ("hf", "custom")])  # the templates: what
def test_preset_builds_counts_and_sizes_on_meta(preset):          # they build (a model type, a _target_) is the user's
    spec = meta_spec(preset, *SHORTER.get(preset, ()))
    built = build(spec)
    with MetaLikeCPU():
        counted = count_step(built.model, built.inputs, built.optimizer)  # AdamW's step: its state made
        size = measure_size(built.model, built.inputs, built.optimizer, built.autocast)
    assert size.weights_bytes == 4 * size.params and size.grads_bytes == 4 * size.params_trainable  # float32
    assert size.optimizer_state_bytes >= 2 * 4 * size.params  # AdamW's two moments
    assert size.activations_bytes > 0 and size.train_peak_bytes > size.static_bytes
    assert counted.forward.matmul > 0 and counted.backward.matmul > counted.forward.matmul
    assert counted.optimizer.elementwise > 0
    assert not counted.uncounted, counted.uncounted
    analytic = spec.family.forward_flops
    if spec.model.family in EXACT_ANALYTIC:
        assert counted.forward.matmul == analytic(spec.model, spec.batch)


@pytest.mark.parametrize("preset", sorted(REFERENCE_PARAMS))
def test_exact_parameter_counts(preset):
    built = build(meta_spec(preset))
    assert sum(p.numel() for p in unique_parameters(built.model)) == REFERENCE_PARAMS[preset]


def test_gpt3_175b_parameter_count():
    # Brown et al. 2020 report 175.0B; the shapes give 174.6B with learned positions and a tied head
    built = build(meta_spec("gpt3_175b"))
    assert 174e9 < sum(p.numel() for p in unique_parameters(built.model)) < 175.5e9


def hf_count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("preset,build_hf", [
    ("vit_b16", lambda t: t.ViTForImageClassification(t.ViTConfig(num_labels=1000))),
    ("vit_l16", lambda t: t.ViTForImageClassification(t.ViTConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, num_labels=1000))),
    ("bert_base", lambda t: t.BertModel(t.BertConfig())),
    ("bert_large", lambda t: t.BertModel(t.BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                      intermediate_size=4096))),
    ("gpt2_small", lambda t: t.GPT2LMHeadModel(t.GPT2Config())),
    ("gpt2_medium", lambda t: t.GPT2LMHeadModel(t.GPT2Config(n_embd=1024, n_layer=24, n_head=16))),
    ("llama2_7b", lambda t: t.LlamaForCausalLM(t.LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False))),
    ("qwen2_5_0_5b", lambda t: t.Qwen2ForCausalLM(t.Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True))),
    ("qwen2_5_7b", lambda t: t.Qwen2ForCausalLM(t.Qwen2Config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False))),
])
def test_params_match_hugging_face(preset, build_hf):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        reference = build_hf(transformers)
    assert sum(p.numel() for p in unique_parameters(build(meta_spec(preset)).model)) == hf_count(reference)
