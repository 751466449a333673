"""A model's shape: each family's for every preset against the published architectures, the same read back from the
config of a result recorded before shapes were, a job recording it, and its readers (the MLflow metrics, the
training projection's attention term, the parallel layout's checks) using it, old results included."""

import pytest

from flopsweep.config.resolve import job_config, resolve
from flopsweep.core import metrics as M
from flopsweep.core.errors import ConfigError
from flopsweep.core.result import Result
from flopsweep.core.shape import ModelShape, from_config, shape_of
from tests.helpers import compose_config, local_store, model_presets

# width, layers (per stack for an encoder-decoder), heads, KV heads, head width: the papers' tables
# (shared/docs/references.md: Vaswani, BERT, GPT-2, GPT-3, T5, ViT) and the model cards' config.json (the rest)
PUBLISHED = {
    "bert_base": (768, 12, 12, 12, 64), "bert_large": (1024, 24, 16, 16, 64),
    "gpt2_small": (768, 12, 12, 12, 64), "gpt2_medium": (1024, 24, 16, 16, 64),
    "gpt2_large": (1280, 36, 20, 20, 64), "gpt2_xl": (1600, 48, 25, 25, 64),
    "gpt3_small": (768, 12, 12, 12, 64), "gpt3_medium": (1024, 24, 16, 16, 64), "gpt3_large": (1536, 24, 16, 16, 96),
    "gpt3_xl": (2048, 24, 16, 16, 128),  # the paper's 24 heads of 128 are not its 2048 wide: the preset says why
    "gpt3_2_7b": (2560, 32, 32, 32, 80), "gpt3_6_7b": (4096, 32, 32, 32, 128), "gpt3_13b": (5120, 40, 40, 40, 128),
    "gpt3_175b": (12288, 96, 96, 96, 128),
    "t5_small": (512, 6, 8, 8, 64), "t5_base": (768, 12, 12, 12, 64), "t5_large": (1024, 24, 16, 16, 64),
    "transformer_base": (512, 6, 8, 8, 64), "transformer_big": (1024, 6, 16, 16, 64),
    "vit_b16": (768, 12, 12, 12, 64), "vit_l16": (1024, 24, 16, 16, 64), "vit_h14": (1280, 32, 16, 16, 80),
    "generic": (512, 2, 8, 8, 64),
    "llama2_7b": (4096, 32, 32, 32, 128), "llama3_8b": (4096, 32, 32, 8, 128), "llama3_70b": (8192, 80, 64, 8, 128),
    "llama3_1_8b": (4096, 32, 32, 8, 128), "llama3_1_70b": (8192, 80, 64, 8, 128),
    "llama3_1_405b": (16384, 126, 128, 8, 128), "llama3_2_1b": (2048, 16, 32, 8, 64),
    "llama3_2_3b": (3072, 28, 24, 8, 128), "mistral_7b": (4096, 32, 32, 8, 128),
    "mixtral_8x7b": (4096, 32, 32, 8, 128), "mixtral_8x22b": (6144, 56, 48, 8, 128),
    "qwen2_5_0_5b": (896, 24, 14, 2, 64), "qwen2_5_1_5b": (1536, 28, 12, 2, 128), "qwen2_5_3b": (2048, 36, 16, 2, 128),
    "qwen2_5_7b": (3584, 28, 28, 4, 128), "qwen2_5_14b": (5120, 48, 40, 8, 128), "qwen2_5_32b": (5120, 64, 40, 8, 128),
    "qwen2_5_72b": (8192, 80, 64, 8, 128), "qwen3_30b_a3b": (2048, 48, 32, 4, 128),
    "gemma2_2b": (2304, 26, 8, 4, 256), "gemma2_9b": (3584, 42, 16, 8, 256), "gemma2_27b": (4608, 46, 32, 16, 128),
    "gpt_neox_20b": (6144, 44, 64, 64, 96),
    "deepseek_v3": (7168, 61, 128, 128, 192),  # MLA: queries and keys of 128 + 64 rotary
    "qwen2_vl_7b": (3584, 28, 28, 4, 128),  # its language model's (the vision tower's are its own)
    "gemma3_4b": (2560, 34, 8, 4, 256),  # google/gemma-3-4b-it's text_config
    "llama3_2_11b_vision": (4096, 40, 32, 8, 128),  # its text model's 40 layers: 32 self- and 8 cross-attention
    "mamba_codestral_7b": (4096, 64, None, None, None),  # no attention: its 128 heads are the scan's
    "falcon_h1_7b": (3072, 44, 12, 2, 128),  # its attention's, beside each layer's 24 SSD heads (tiiuae's config.json)
    "dit_xl_2": (1152, 28, 16, 16, 72),  # Peebles & Xie 2023, table 4 (XL: 28 layers, 1152 wide, 16 heads)
    "sd3_medium": (1536, 24, 24, 24, 64),  # SD3 Medium's transformer config (24 joint blocks of 24 heads of 64)
    "jamba_1_5_mini": (4096, 32, 32, 8, 128),  # its config.json: 32 layers, of which 4 attend (one in 8)
    "resnet_bk_baseline": (64, 4, None, None, None), "resnet_bk_full": (64, 4, None, None, None),  # no attention
}
EXPERTS = {"mixtral_8x7b": (8, 2), "mixtral_8x22b": (8, 2), "qwen3_30b_a3b": (128, 8), "deepseek_v3": (256, 8),
           "jamba_1_5_mini": (16, 2), "resnet_bk_baseline": (4, 1),
           "resnet_bk_full": (4, 1)}  # routed experts, of which a token uses
CAUSAL_LMS = ("gpt", "llama", "mistral", "mixtral", "qwen", "gemma", "deepseek", "mamba", "falcon", "jamba")
NO_SHAPE = {"convnext_tiny", "efficientnet_b0", "mobilenet_v2", "resnet18", "resnet50",  # CNNs
            "custom_example"}  # a user's module: its arguments name nothing known
TEMPLATES = {"hf", "custom"}  # they build what the user names


def test_every_preset_says_its_shape():
    assert set(model_presets()) == set(PUBLISHED) | NO_SHAPE | TEMPLATES


@pytest.mark.parametrize("preset", sorted(set(PUBLISHED) | NO_SHAPE))
def test_a_presets_shape_is_the_published_architecture_and_an_old_result_reads_the_same(preset):
    cfg = compose_config(f"model={preset}", "device=meta", "batch.size=1", "tracking=none")
    spec = resolve(cfg)
    shape = spec.family.shape(spec.model)
    if preset in NO_SHAPE:
        assert shape == ModelShape()
    else:
        assert (shape.width, shape.layers, shape.heads, shape.kv_heads, shape.head_dim) == PUBLISHED[preset]
        assert (shape.experts, shape.experts_per_token) == EXPERTS.get(preset, (None, None))
        assert shape.causal_lm == preset.startswith(CAUSAL_LMS)
        assert shape.kv_latent == (512 if preset == "deepseek_v3" else None)  # its kv_lora_rank
    assert ModelShape.from_dict(shape.to_dict()) == shape
    # a result recorded before info.shape: the same figures from its config as recorded
    assert from_config(job_config(cfg, spec)["model"]) == shape


def test_a_job_records_its_shape(tmp_path):
    from flopsweep.run.job import run_job

    cfg = compose_config("model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=4",
                         "model.n_kv_head=2", "batch.seq_len=8", "batch.size=1", "device=meta", "tracking=none")
    spec = resolve(cfg)
    result = run_job(spec, job_config(cfg, spec))
    assert result.status == "ok", result.error
    assert result.info["shape"] == {"width": 64, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16,
                                    "experts": None, "experts_per_token": None, "kv_latent": None, "causal_lm": True}
    result.write(tmp_path / "result.json")
    assert shape_of(Result.read(tmp_path / "result.json")) == ModelShape(64, 2, 4, 2, 16, causal_lm=True)


# a Llama 3.1 8B job recorded before shapes were: its Hugging Face fields only
OLD_LLAMA = {"name": "llama3_1_8b", "family": "hf", "task": "causal-lm",
             "fields": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                        "num_key_value_heads": 8}}
STEP = {M.BATCH_SIZE: 64, M.SEQ_LEN: 128, M.FLOPS_FORWARD: 1e15, M.FLOPS_BACKWARD: 2e15, M.FLOPS_OPTIMIZER: 1e10,
        M.PARAMS: 8e9, M.WEIGHTS_BYTES: 1.6e10, M.GRADS_BYTES: 1.6e10, M.OPTIMIZER_STATE_BYTES: 6.4e10,
        M.ACTIVATIONS_BYTES: 1e11}


def test_the_parallel_layout_checks_a_hugging_face_models_heads_and_kv_heads():
    from flopsweep.projection.parallel import Parallelism, per_device

    old = Result("ok", None, {"model": OLD_LLAMA}, dict(STEP))
    assert per_device(old, Parallelism(tp=8, pp=4)).layout.devices == 32
    for layout, message in ((Parallelism(tp=16), "^tp=16: does not divide the model's 8 KV heads"),
                            (Parallelism(tp=64), "^tp=64: does not divide the model's 32 attention heads"),
                            (Parallelism(pp=64, micro_batches=64),
                             "^pp=64: is more pipeline stages than the model's 32")):
        with pytest.raises(ConfigError, match=message):
            per_device(old, layout)
    # the recorded shape is what counts, whatever the config's keys say
    recorded = Result("ok", None, {"model": {"name": "x"}}, dict(STEP), info={"shape": {"heads": 12, "kv_heads": 4}})
    with pytest.raises(ConfigError, match="^tp=8: does not divide the model's 12 attention heads"):
        per_device(recorded, Parallelism(tp=8))
    with pytest.raises(ConfigError, match="^tp=6: does not divide the model's 4 KV heads"):
        per_device(recorded, Parallelism(tp=6))


def test_the_attention_term_reads_the_shape_of_old_and_new_results():
    from flopsweep.projection.training import PerToken, of_preset

    old = Result("ok", None, {"model": OLD_LLAMA}, dict(STEP))
    assert PerToken.from_result(old).attention == 12 * 32 * 32 * 128 * 128  # 12 L H Q T
    mla = {**OLD_LLAMA, "fields": {**OLD_LLAMA["fields"], "kv_lora_rank": 512}}
    assert PerToken.from_result(Result("ok", None, {"model": mla}, dict(STEP))).attention is None
    shape = ModelShape(4096, 32, 32, 8, 128, causal_lm=True)
    new = Result("ok", None, {"model": {"name": "llama3_1_8b"}}, dict(STEP), info={"shape": shape.to_dict()})
    assert PerToken.from_result(new).attention == 12 * 32 * 32 * 128 * 128
    assert of_preset("llama3_1_8b", 8_000_000_000, 128, shape).attention == 12 * 32 * 32 * 128 * 128
    encoder = ModelShape(768, 12, 12, 12, 64)  # not a decoder-only language model: PaLM's form does not apply
    assert of_preset("bert", 10, 128, encoder).attention is None


@pytest.mark.slow
def test_the_store_logs_the_shape_of_old_and_new_results(tmp_path):
    from flopsweep.sinks.store import Store
    from flopsweep.sinks.target import target_at

    local_store(tmp_path / "outputs")
    store = Store(target_at(None, tmp_path / "outputs", "shapes", environment=False))
    new = Result("ok", None, {"model": {"name": "x", "family": "custom"}}, {M.BATCH_SIZE: 1},
                 info={"shape": ModelShape(64, 2, 4, 2, 16).to_dict()})
    old = Result("ok", None, {"model": OLD_LLAMA}, {M.BATCH_SIZE: 1})
    for result, (width, layers, heads) in ((new, (64, 2, 4)), (old, (4096, 32, 32))):
        folder = tmp_path / str(width)
        folder.mkdir()
        result.write(folder / "result.json")
        run = store.client.get_run(store.log_job(result, folder, {}, None))
        assert (run.data.metrics[M.CONFIG_WIDTH], run.data.metrics[M.CONFIG_LAYERS],
                run.data.metrics[M.CONFIG_HEADS]) == (width, layers, heads)


def test_the_experts_a_batch_reaches_are_what_uniform_routing_gives_by_sampling():
    """E·(1 − (1 − k/E)^T) against routing sampled at random: T tokens, each to k distinct experts of E, uniformly."""
    import random

    from flopsweep.core.shape import experts_touched

    rng = random.Random(0)
    for experts, k, tokens in ((8, 2, 1), (8, 2, 3), (64, 6, 4), (256, 8, 16)):
        trials = [len({e for _ in range(tokens) for e in rng.sample(range(experts), k)}) for _ in range(4000)]
        assert experts_touched(experts, k, tokens) == pytest.approx(sum(trials) / len(trials), rel=0.02)
    assert experts_touched(8, 2, 1) == pytest.approx(2) and experts_touched(8, 2, 0) == 0
    assert experts_touched(8, 2, 604) == pytest.approx(8)  # every expert, at a large batch


def test_skewed_routing_reaches_fewer_experts_and_the_same_k_a_token():
    from flopsweep.core.shape import experts_touched

    assert experts_touched(64, 8, 1, skew=0.5) == pytest.approx(8)  # one token still goes to k experts
    assert experts_touched(64, 8, 1, skew=2.0) < 8  # ... less where the first expert would take over one pick each
    uniform, skewed = experts_touched(64, 8, 16), experts_touched(64, 8, 16, skew=1.0)
    assert skewed < uniform < 64
    assert experts_touched(64, 8, 10**6, skew=1.0) == pytest.approx(64)  # every expert, eventually
    with pytest.raises(ValueError):
        experts_touched(8, 9, 1)
