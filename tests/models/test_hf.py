"""``model=hf``: Hugging Face architectures built by transformers from a config. The presets' parameter counts against
the published ones (model cards, torchvision's tables), the counts of small HF models against our own families and
a closed form, mixture-of-experts layers counted whatever the routing, cpu against meta, and a mixed sweep."""

import pytest
from omegaconf import OmegaConf

pytest.importorskip("transformers")

from flopsweep.build.model import build  # noqa: E402
from flopsweep.config.resolve import resolve  # noqa: E402
from flopsweep.run.job import run_job  # noqa: E402
from tests.helpers import compose_config, model_presets, run_app, run_cli  # noqa: E402

# The parameter counts Hugging Face shows for the published checkpoints (safetensors totals), and torchvision's tables
# for the CNNs: not computed by flopsweep nor by transformers here.
PUBLISHED = {
    "jamba_1_5_mini": 103_140_646_656 // 2,  # its safetensors index's total_size, bf16
    "llama3_8b": 8_030_261_248, "llama3_70b": 70_553_706_496, "llama3_1_8b": 8_030_261_248,
    "llama3_1_70b": 70_553_706_496, "llama3_1_405b": 405_853_388_800, "llama3_2_1b": 1_235_814_400,
    "llama3_2_3b": 3_212_749_824, "mistral_7b": 7_241_732_096, "mixtral_8x7b": 46_702_792_704,
    "mixtral_8x22b": 140_620_634_112, "gemma2_2b": 2_614_341_888, "gemma2_9b": 9_241_705_984,
    "gemma2_27b": 27_227_128_320, "qwen2_5_1_5b": 1_543_714_304, "qwen2_5_3b": 3_085_938_688,
    "qwen2_5_14b": 14_770_033_664, "qwen2_5_32b": 32_763_876_352, "qwen2_5_72b": 72_706_203_648,
    "qwen3_30b_a3b": 30_532_122_624, "gpt_neox_20b": 20_554_567_680,
    "mamba_codestral_7b": 7_285_403_648,  # its model card's "Number of parameters"
    # tiiuae/Falcon-H1R-7B's model.safetensors.index.json: total_size 15,171,297,472 bytes, every tensor bf16 (2 bytes);
    # the reasoning model trained from Falcon-H1-7B-Base, the architecture of the preset
    "falcon_h1_7b": 15_171_297_472 // 2,
    "qwen2_vl_7b": 8_291_375_616,  # the vision tower and the language model (Qwen/Qwen2-VL-7B-Instruct)
    "gemma3_4b": 4_300_079_472,  # google/gemma-3-4b-it's safetensors metadata as Hugging Face shows it (tied head once)
    # NVIDIA's model card of Llama-3.2-11B-Vision-Instruct (build.nvidia.com/meta/llama-3.2-11b-vision-instruct,
    # "Parameters: 10,670,220,835"): the base checkpoint's config is the same architecture
    "llama3_2_11b_vision": 10_670_220_835,
    # DeepSeek-V3 without its multi-token-prediction module (transformers builds none): the checkpoint's 671.03 G
    # also stores each MoE layer's router bias (256 values x 58 layers), which transformers keeps as a buffer
    "deepseek_v3": 671_026_419_200 - 58 * 256,
    "resnet18": 11_689_512, "resnet50": 25_557_032, "efficientnet_b0": 5_288_548, "convnext_tiny": 28_589_128,
    "mobilenet_v2": 3_504_872 + 1280 + 1,  # torchvision's 1000 classes; Google's checkpoint has 1001 (background)
}


def preset(name: str):
    """A preset's YAML as written (wherever pytest runs from)."""
    from flopsweep.config.schema import CONF_DIR

    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")


def hf_presets() -> list[str]:
    return [name for name in model_presets()
            if (preset(name).get("family") == "hf" and name != "hf")]


def test_every_hf_preset_has_a_published_count():
    assert sorted(hf_presets()) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_preset_has_its_published_parameter_count(name):
    model = build(resolve(compose_config(f"model={name}", "device=meta", "batch.size=1"))).model
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]  # tied embeddings once


def measured(*overrides: str, device: str = "meta"):
    """A job as the flopsweep command runs it, its config recorded as built."""
    from flopsweep.config.resolve import job_config

    cfg = compose_config(*overrides, f"device={device}", "tracking=none")
    spec = resolve(cfg)
    result = run_job(spec, job_config(cfg, spec))
    assert result.status == "ok", result.error
    return result


SMALL_LLAMA = ["model.d_model=64", "model.n_head=4", "model.n_layer=2", "model.d_ff=172", "model.vocab_size=1000"]
HF_LLAMA = ["model=hf", "model.model_type=llama", "+model.hidden_size=64", "+model.num_attention_heads=4",
            "+model.num_key_value_heads=4", "+model.num_hidden_layers=2", "+model.intermediate_size=172",
            "+model.vocab_size=1000", "+model.tie_word_embeddings=false"]


@pytest.mark.parametrize("ours,theirs", [
    (["model=llama2_7b", *SMALL_LLAMA], HF_LLAMA),
    (["model=gpt2_small", "model.d_model=64", "model.n_head=4", "model.n_layer=2", "model.vocab_size=1000"],
     ["model=hf", "model.model_type=gpt2", "+model.n_embd=64", "+model.n_head=4", "+model.n_layer=2",
      "+model.vocab_size=1000"]),
    (["model=t5_small", "model.d_model=64", "model.n_head=4", "model.n_layer=2", "model.d_ff=128",
      "model.vocab_size=300", "model.d_kv=16"],
     ["model=hf", "model.model_type=t5", "+model.d_model=64", "+model.num_heads=4", "+model.num_layers=2",
      "+model.num_decoder_layers=2", "+model.d_ff=128", "+model.vocab_size=300", "+model.d_kv=16"]),
    (["model=vit_b16", "model.image_size=32", "model.patch_size=8", "model.d_model=64", "model.n_head=4",
      "model.n_layer=2", "model.d_ff=128", "model.num_classes=10"],
     ["model=hf", "model.model_type=vit", "+model.image_size=32", "+model.patch_size=8", "+model.hidden_size=64",
      "+model.num_attention_heads=4", "+model.num_hidden_layers=2", "+model.intermediate_size=128",
      "+model.num_labels=10"]),
], ids=["llama", "gpt2", "t5", "vit"])
def test_a_small_hf_model_counts_the_matmuls_of_our_own_family_of_its_shape(ours, theirs):
    a = measured(*ours, "batch.seq_len=32", "batch.size=2")
    b = measured(*theirs, "batch.seq_len=32", "batch.size=2")
    for key in ("flops/forward", "flops/backward", "size/params"):
        assert b.metrics[key] == a.metrics[key], key


def test_hf_bert_trains_with_its_masked_lm_head_where_ours_is_the_bare_encoder_with_its_pooler():
    """The same encoder; Hugging Face's BertForMaskedLM (what pretraining runs) adds the MLM head over every token (a
    d x d transform, its norm, the decoder tied to the embedding with a bias), ours (BertModel) has the pooler."""
    d, vocab, batch, seq = 64, 1000, 2, 32
    shape = ["batch.seq_len=32", "batch.size=2"]
    ours = measured("model=bert_base", "model.d_model=64", "model.n_head=4", "model.n_layer=2", "model.d_ff=256",
                    "model.vocab_size=1000", *shape)
    theirs = measured("model=hf", "model.model_type=bert", "+model.hidden_size=64", "+model.num_attention_heads=4",
                      "+model.num_hidden_layers=2", "+model.intermediate_size=256", "+model.vocab_size=1000", *shape)
    tokens = batch * seq
    assert theirs.metrics["flops/forward"] - ours.metrics["flops/forward"] == \
        2 * tokens * d * d + 2 * tokens * d * vocab - 2 * batch * d * d
    assert theirs.metrics["size/params"] - ours.metrics["size/params"] == 2 * d + vocab


MIXTRAL = ["model=mixtral_8x7b", "++model.hidden_size=64", "++model.intermediate_size=96", "++model.vocab_size=500",
           "++model.num_attention_heads=4", "++model.num_key_value_heads=2", "++model.num_hidden_layers=2",
           "batch.seq_len=16", "batch.size=3"]


@pytest.mark.slow
def test_a_small_mixtral_counts_its_closed_form_and_cpu_equals_meta():
    """Attention, the router and the top-2 of 8 experts per token (three matmuls each), the head: whatever the
    routing (meta routes nothing, the CPU routes real tokens), the same count."""
    d, ff, vocab, heads, kv, layers, experts, top_k, tokens = 64, 96, 500, 4, 2, 2, 8, 2, 48
    head_dim = d // heads
    per_layer = (2 * tokens * d * d * 2 + 2 * tokens * d * kv * head_dim * 2     # q, o; k, v
                 + 4 * 3 * heads * 16 * 16 * head_dim                            # scores and mix: 3 sequences of 16
                 + 2 * tokens * d * experts                                      # the router
                 + top_k * tokens * 3 * 2 * d * ff)                              # gate, up, down of 2 experts a token
    meta = measured(*MIXTRAL)
    assert meta.metrics["flops/forward"] == layers * per_layer + 2 * tokens * d * vocab
    cpu = measured(*MIXTRAL, device="cpu", )
    for key in ("flops/forward", "flops/backward", "flops/forward_elementwise", "flops/backward_elementwise"):
        assert cpu.metrics[key] == meta.metrics[key], key
    assert not meta.breakdown["uncounted_ops"] and not cpu.breakdown["uncounted_ops"]


VISION = {"qwen2_vl_7b", "gemma3_4b", "llama3_2_11b_vision"}  # 1.5-2 s even cut: their tiny closed forms run fast


@pytest.mark.parametrize("name", [n if n not in VISION else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(PUBLISHED)])  # make test-all counts them whole (test_presets.py)
def test_every_preset_counts_every_op_of_its_step(name):
    """Each preset, cut to a layer or two, a short sequence, as a job runs it: no op of forward, backward or AdamW is
    uncounted (the fast lane's check of every Hugging Face preset; tests/models/test_presets.py counts each whole in
    make test-all)."""
    text = preset(name).get("default_seq_len") is not None
    few = ["++model.num_hidden_layers=2", "batch.seq_len=16"] if text else []
    if name == "deepseek_v3":
        few = ["++model.num_hidden_layers=2", "++model.first_k_dense_replace=1", "batch.seq_len=16"]
    if name == "jamba_1_5_mini":  # its first attention layer is its fifth (experts in every second)
        few = ["++model.num_hidden_layers=5", "batch.seq_len=16"]
    result = measured(f"model={name}", *few, "batch.size=1")
    assert not result.breakdown["uncounted_ops"], result.breakdown["uncounted_ops"]
    assert result.metrics["flops/backward"] > result.metrics["flops/forward"] > 0


@pytest.mark.slow
def test_a_sweep_mixes_hf_custom_and_our_models_and_logs_them(tmp_path):
    """An HF decoder and CNN preset, an HF encoder of the user's own (a config beside the command), a custom model and
    one of our presets, in one sweep."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "small_bert.yaml").write_text(
        "family: hf\nname: small_bert\nmodel_type: bert\nhidden_size: 64\nnum_hidden_layers: 2\n"
        "num_attention_heads: 4\nintermediate_size: 256\n")
    proc = run_app("--config-dir", "conf", "-m", "model=llama3_2_1b,small_bert,resnet18,custom_example,gpt2_small",
                   "device=meta", "batch.seq_len=16", "tracking.experiment=mixed", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mixed").experiment_id],
                              "tags.`flopsweep.kind` = 'job' and attributes.status = 'FINISHED'")
    assert sorted(r.data.params["model.name"] for r in runs) == ["custom_example", "gpt2_small", "llama3_2_1b",
                                                                  "resnet18", "small_bert"]
    assert all(r.data.metrics["flops/forward"] > 0 for r in runs)


def test_a_config_json_is_a_model(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
        "max_position_embeddings": 128, "tie_word_embeddings": True}))
    result = measured("model=hf", f"model.config={tmp_path}", "batch.seq_len=16")
    embedding, layer = 300 * 64, 4 * 64 * 16 * 2 + 64 * 16 * 2 * 2 + 16 * 4 + 16 * 2 * 2 + 3 * 64 * 128 + 2 * 64
    assert result.metrics["size/params"] == embedding + 2 * layer + 64  # q, o; k, v; their biases; MLP; norms


@pytest.mark.parametrize("overrides,key", [
    (["model=hf"], "model.model_type: missing"),
    (["model=hf", "model.model_type=nope"], "model.model_type='nope'"),
    (["model=hf", "model.config=/nonexistent/config.json"], "model.config='/nonexistent/config.json'"),
    (["model=resnet18", "batch.image_size=100", "++model.image_size=224"], "batch.image_size=100"),
    (["model=llama3_8b", "batch.seq_len=100000"], "batch.seq_len=100000"),
    # a misspelt field was taken as an attribute no model reads: the type's default sizes counted (6.74B parameters)
    (["model=hf", "model.model_type=llama", "+model.hiden_size=1024"],
     "model.hiden_size=1024: is no field of transformers' llama config: did you mean model.hidden_size?"),
    (["model=llama3_2_1b", "+model.num_hiden_layers=2"], "model.num_hiden_layers=2: is no field of transformers' "
                                                         "llama config: did you mean model.num_hidden_layers?"),
])
def test_a_bad_hf_value_names_its_key(overrides, key):
    from flopsweep.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*overrides, "device=meta"))
    assert str(err.value).startswith(key) and "\n" not in str(err.value), str(err.value)


def test_without_transformers_model_hf_is_one_line_saying_how_to_install_it(monkeypatch):
    import os
    import sys

    import torch

    from flopsweep.core.errors import ConfigError
    from tests.helpers import REPO

    monkeypatch.chdir(REPO)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(ConfigError) as err:
        resolve(compose_config("model=hf", "model.model_type=llama", "+model.hidden_size=48", "device=meta"))
    said, python = str(err.value), str(err.value).split(": ")[-1].split(" -m pip ")[0]
    assert os.path.samefile(python, sys.executable), said  # this environment's interpreter, as typed from here
    assert said == (f"model.family='hf': needs transformers: {python} -m pip install "
                    f"'torch=={torch.__version__.split('+')[0]}' -e '.[hf]'")  # in the checkout: as make does


def test_a_cnn_presets_module_profile_shows_its_convolutions_norms_and_pools():
    result = measured("model=resnet18", "measure.profile=true")
    rows = result.breakdown["profile"]
    kinds = {row["type"] for row in rows}
    assert {"Conv2d", "BatchNorm2d", "MaxPool2d", "AdaptiveAvgPool2d"} <= kinds, kinds
    stem = next(row for row in rows if row["type"] == "Conv2d")  # 7x7, 3 -> 64 channels, stride 2: 112 x 112 out
    assert stem["forward_flops"] == 2 * 112 * 112 * 64 * 3 * 7 * 7 and stem["params"] == 64 * 3 * 7 * 7


# the active parameters the model cards state, to the precision they state them
PUBLISHED_ACTIVE = {"mixtral_8x7b": (12.9e9, 0.05e9), "mixtral_8x22b": (39e9, 0.5e9),
                    "qwen3_30b_a3b": (3.3e9, 0.1e9),  # 3.35 G: its card truncates
                    "deepseek_v3": (37e9, 0.6e9)}


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_a_mixture_of_experts_uses_the_parameters_its_card_states(name):
    from flopsweep.measure.size import active_parameters

    model = build(resolve(compose_config(f"model={name}", "device=meta", "batch.size=1"))).model
    stated, precision = PUBLISHED_ACTIVE[name]
    assert abs(active_parameters(model) - stated) <= precision


def test_a_mixture_of_experts_job_records_its_shape():
    """Its Hugging Face config's fields, with what it defaults (its head width) and names its own way (experts)."""
    shape = measured(*MIXTRAL).info["shape"]
    assert (shape["width"], shape["layers"], shape["heads"], shape["kv_heads"], shape["head_dim"]) == (64, 2, 4, 2, 16)
    assert (shape["experts"], shape["experts_per_token"], shape["kv_latent"], shape["causal_lm"]) == (8, 2, None, True)


def test_params_active_is_shared_plus_top_k_experts_and_the_projection_uses_it():
    from flopsweep.projection.training import PerToken

    d, ff, layers, experts, top_k = 64, 96, 2, 8, 2
    moe = measured(*MIXTRAL)
    routed = layers * experts * 3 * d * ff  # gate, up and down of every expert
    assert moe.metrics["size/params_active"] == moe.metrics["size/params"] - routed + routed * top_k // experts
    assert PerToken.from_result(moe).params == moe.metrics["size/params_active"]  # N of 6ND and PaLM's forms
    dense = measured("model=llama3_8b", "++model.num_hidden_layers=1", "batch.seq_len=16")
    assert dense.metrics["size/params_active"] == dense.metrics["size/params"]


@pytest.mark.parametrize("overrides", [
    ["model=llama3_2_1b", "++model.num_hidden_layers=1", "++model.vocab_size=300", "batch.seq_len=16"],
    pytest.param(["model=gemma2_2b", "++model.num_hidden_layers=2", "++model.vocab_size=300", "batch.seq_len=16"],
                 marks=pytest.mark.slow),  # its 2,304-wide layers on the CPU: 6 s
    ["model=resnet18", "batch.image_size=64"],
], ids=["llama_gqa", "gemma2_softcap", "resnet18"])
def test_an_hf_model_counts_the_same_on_cpu_and_meta(overrides):
    meta, cpu = measured(*overrides), measured(*overrides, "measure.time=false", device="cpu")  # counts, not times
    for key in ("flops/forward", "flops/backward", "flops/forward_elementwise", "flops/backward_elementwise",
                "flops/optimizer"):
        assert cpu.metrics[key] == meta.metrics[key], key


def test_batch_image_size_sizes_a_cnns_input():
    small, large = measured("model=resnet18"), measured("model=resnet18", "batch.image_size=448")  # 7 and 14 x 32
    head = 2 * 512 * 1000  # the classifier sees the pooled features whatever the size; every conv sees 4 x the pixels
    assert large.metrics["flops/forward"] - head == 4 * (small.metrics["flops/forward"] - head)


def test_the_projection_of_an_hf_decoder_has_palms_attention_term():
    from flopsweep.projection.training import PerToken

    result = measured("model=llama3_2_1b", "++model.num_hidden_layers=2", "batch.seq_len=64")
    assert result.config["model"]["task"] == "causal-lm"  # recorded as built
    assert PerToken.from_result(result).attention == 12 * 2 * 32 * 64 * 64  # 12 L H Q T: 2 layers, 32 heads of 64
    gemma = measured("model=gemma2_2b", "++model.num_hidden_layers=1", "++model.vocab_size=300", "batch.seq_len=64")
    assert PerToken.from_result(gemma).attention == 12 * 1 * 8 * 256 * 64  # head_dim 256, not 2304 / 8
    deepseek = measured("model=deepseek_v3", "++model.num_hidden_layers=1", "++model.first_k_dense_replace=1",
                        "batch.seq_len=16")
    assert PerToken.from_result(deepseek).attention is None  # MLA: scores and values of different widths


def test_a_config_without_a_sequence_length_runs_at_a_stated_default_not_its_whole_context():
    """Qwen3's config gives 32,768 positions and no sequence length: the job runs 2,048 tokens and says so; a
    sequence given, or a preset's own default, is taken as it is and nothing is said."""
    spec = resolve(compose_config("model=hf", "model.model_type=qwen3", "device=meta", "tracking=none"))
    assert spec.batch.seq_len == 2048
    assert spec.notes == ("batch.seq_len not given: 2,048 tokens, flopsweep's default for a Hugging Face config (the "
                          "model allows 32,768; set batch.seq_len or model.default_seq_len)",)
    given = resolve(compose_config("model=hf", "model.model_type=qwen3", "batch.seq_len=512", "device=meta"))
    preset = resolve(compose_config("model=llama3_2_1b", "device=meta"))
    assert (given.batch.seq_len, given.notes, preset.batch.seq_len, preset.notes) == (512, (), 8192, ())
    t5 = resolve(compose_config("model=hf", "model.model_type=t5", "device=meta"))  # relative positions: no limit
    assert t5.batch.seq_len == 2048 and t5.notes == (  # it was refused, batch.seq_len missing
        "batch.seq_len not given: 2,048 tokens, flopsweep's default for a Hugging Face config (its positions have no "
        "limit; set batch.seq_len or model.default_seq_len)",)


TEXT, IMAGE, VISION = 64, 56, 32  # a tiny Qwen2-VL: text width 64; 56-pixel images (4 x 4 patches); tower width 32
QWEN2_VL = ["model=hf", "model.model_type=qwen2_vl", "+model.text_config={hidden_size:64,intermediate_size:128,"
            "num_hidden_layers:2,num_attention_heads:4,num_key_value_heads:2,vocab_size:128,"
            "rope_scaling:{type:mrope,mrope_section:[2,3,3]}}",
            "+model.vision_config={depth:2,embed_dim:32,hidden_size:64,mlp_ratio:4,num_heads:2}",
            "+model.image_token_id=127", "+model.vision_start_token_id=126", "+model.vision_end_token_id=125",
            "batch.size=2", "batch.seq_len=8", f"batch.image_size={IMAGE}"]


@pytest.mark.parametrize("device", ["meta", pytest.param("cpu", marks=pytest.mark.slow)])
def test_an_image_and_text_model_counts_its_vision_tower_and_its_image_tokens(device):
    """Per image, 16 patches of 3 x 2 x 14 x 14 values: the patch embedding (2 x 16 x 1176 x 32), each tower block's
    q, k, v and output (2 x 16 x 4 x 32^2), attention within the image (4 x 16^2 x 32) and MLP (2 x 16 x 8 x 32^2),
    the merger of 4 patches into a token (2 x 4 x 128^2, 2 x 4 x 128 x 64); then 4 image and 8 text tokens through
    the language model: q and o 64^2 each, k and v 64 x 32 each (2 of 4 heads), attention 4 x 12^2 x 64, MLP 3 x 64 x
    128, head 64 x 128. Two samples; the same on meta and on the CPU."""
    patches, tokens = 16, 4 + 8
    tower = (2 * patches * 1176 * VISION + 2 * (2 * patches * 4 * VISION ** 2 + 4 * patches ** 2 * VISION
                                                 + 2 * patches * 8 * VISION ** 2)
             + 2 * 4 * 128 * 128 + 2 * 4 * 128 * TEXT)
    language = (2 * (2 * tokens * 3 * TEXT * TEXT + 4 * tokens ** 2 * TEXT + 2 * tokens * 3 * TEXT * 128)
                + 2 * tokens * TEXT * 128)
    result = measured(*QWEN2_VL, "measure.time=false", device=device)
    assert result.metrics["flops/forward"] == 2 * (tower + language)  # matmul FLOPs
    assert result.config["model"]["task"] == "image-text-to-text"
    assert not result.breakdown["uncounted_ops"]


def test_an_image_size_that_is_no_multiple_of_the_merged_patches_is_refused_naming_it():
    from flopsweep.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*QWEN2_VL[:-1], "batch.image_size=50", "device=meta"))
    assert err.value.key == "batch.image_size" and "multiple of 28" in str(err.value)


# A tiny Gemma 3: a SigLIP tower of width 32 over a 56-pixel image (4 x 4 patches of 14), pooled 2 x 2 to 4 image
# tokens of the text width 64; text: 4 heads of 16 (2 KV heads), MLP 128, vocabulary 128, 2 layers
GEMMA3 = ["model=hf", "model.model_type=gemma3", "+model.mm_tokens_per_image=4",
          "+model.text_config={hidden_size:64,intermediate_size:128,num_hidden_layers:2,num_attention_heads:4,"
          "num_key_value_heads:2,head_dim:16,query_pre_attn_scalar:16,vocab_size:128,sliding_window:8}",
          "+model.vision_config={hidden_size:32,intermediate_size:64,num_hidden_layers:2,num_attention_heads:2,"
          "image_size:56,patch_size:14,vision_use_head:false}",
          "batch.size=2", "batch.seq_len=8"]


@pytest.mark.parametrize("device", ["meta", pytest.param("cpu", marks=pytest.mark.slow)])
def test_gemma3_counts_its_siglip_tower_its_pooled_projection_and_its_image_tokens(device):
    """Per image, 16 patches of 3 x 14 x 14 values: the patch embedding (2 x 16 x 588 x 32), each tower block's q, k,
    v and output (4 x 2 x 16 x 32^2), attention over the image (4 x 16^2 x 32) and MLP (2 x 2 x 16 x 32 x 64); the
    projector pools the 4 x 4 patches to mm_tokens_per_image=4 tokens (no matmul) and projects them (2 x 4 x 32 x 64);
    then 4 image and 8 text tokens through the language model: q and o 64^2 each, k and v 64 x 32 each, attention
    4 x 12^2 x 64 (every pair: the sliding window of 8 and the causal mask are masks, not fewer products), MLP
    3 x 64 x 128, head 64 x 128. Two samples; the same on meta and on the CPU; 4 image tokens by default (its tower's
    56 pixels), not batch.image_size's default of another model."""
    patches, tokens, width, vision = 16, 4 + 8, 64, 32
    tower = (2 * patches * 588 * vision + 2 * (4 * 2 * patches * vision ** 2 + 4 * patches ** 2 * vision
                                                + 2 * 2 * patches * vision * 64)
             + 2 * 4 * vision * width)
    language = (2 * (2 * tokens * (2 * width * width + 2 * width * 32) + 4 * tokens ** 2 * width
                     + 3 * 2 * tokens * width * 128)
                + 2 * tokens * width * 128)
    result = measured(*GEMMA3, "measure.time=false", device=device)
    assert result.metrics["flops/forward"] == 2 * (tower + language)  # matmul FLOPs
    assert result.config["model"]["task"] == "image-text-to-text"
    assert result.config["batch"]["image_size"] == 56
    assert not result.breakdown["uncounted_ops"]


def test_gemma3_refuses_an_image_its_tower_was_not_built_for_and_tokens_it_cannot_pool():
    from flopsweep.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*GEMMA3, "batch.image_size=112", "device=meta"))
    assert err.value.key == "batch.image_size" and "model.vision_config.image_size" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*GEMMA3, "model.mm_tokens_per_image=9", "device=meta"))  # 3 a side of 4 patches
    assert err.value.key == "model.mm_tokens_per_image" and "\n" not in str(err.value)


# A tiny Llama 3.2 Vision: 28-pixel tiles (2 x 2 patches of 14, and a class token: 5, padded to 8), 4 tiles an image,
# a tower of width 32 (2 local blocks, 1 global), its layer 0's output beside its last (64 wide) projected to the text
# width 64; text: 3 layers, the second a cross-attention layer, 4 heads of 16 (2 KV heads), MLP 128, vocabulary 120
MLLAMA = ["model=hf", "model.model_type=mllama",
          "+model.text_config={hidden_size:64,intermediate_size:128,num_hidden_layers:3,num_attention_heads:4,"
          "num_key_value_heads:2,vocab_size:120,cross_attention_layers:[1],pad_token_id:0,bos_token_id:1,"
          "eos_token_id:2}",
          "+model.vision_config={hidden_size:32,intermediate_size:64,num_hidden_layers:2,num_global_layers:1,"
          "attention_heads:2,image_size:28,patch_size:14,max_num_tiles:4,intermediate_layers_indices:[0],"
          "vision_output_dim:64}",
          "batch.size=2", "batch.seq_len=8"]


@pytest.mark.parametrize("device", ["meta", pytest.param("cpu", marks=pytest.mark.slow)])
def test_llama_3_2_vision_counts_every_tile_and_the_text_cross_attending_to_them(device):
    """Per image, 4 tiles (padded to 4 as its processor pads them, whatever the image) of 4 patches: the patch
    embedding (2 x 16 x 588 x 32); 4 x (4 + 1 class, padded to 8) = 32 tokens through 3 blocks (2 local, 1 global):
    q, k, v, output (4 x 2 x 32 x 32^2), attention (4 x 32^2 x 32), MLP (2 x 2 x 32 x 32 x 64), and the tiles' mask
    made by an outer product (2 x 32^2 x 1); the projector (2 x 20 x 64 x 64) on the 4 x 5 unpadded tokens; the text's
    8 tokens: 2 self-attention layers (q, o 64^2; k, v 64 x 32; attention 4 x 8^2 x 64; MLP 3 x 64 x 128) and one
    cross-attention layer (q and o from the text, k and v from the image's 20 tokens, attention 4 x 8 x 20 x 64, MLP),
    head 64 x 120. Two samples; the same on meta and on the CPU; no image token in the text's sequence."""
    text, tiles_tokens, image, vision, width = 8, 32, 20, 32, 64
    block = 4 * 2 * tiles_tokens * vision ** 2 + 4 * tiles_tokens ** 2 * vision + 2 * 2 * tiles_tokens * vision * 64
    tower = 2 * 16 * 588 * vision + 3 * block + 2 * tiles_tokens ** 2 + 2 * image * 64 * width
    mlp = 3 * 2 * text * width * 128
    self_layer = 2 * text * (2 * width * width + 2 * width * 32) + 4 * text ** 2 * width + mlp
    cross_layer = 2 * text * 2 * width * width + 2 * image * 2 * width * 32 + 4 * text * image * width + mlp
    language = 2 * self_layer + cross_layer + 2 * text * width * 120
    result = measured(*MLLAMA, "measure.time=false", device=device)
    assert result.metrics["flops/forward"] == 2 * (tower + language)  # matmul FLOPs
    assert result.config["model"]["task"] == "image-text-to-text"
    assert not result.breakdown["uncounted_ops"]
    bigger = measured(*MLLAMA, "measure.time=false", "batch.image_size=56", device=device)  # 2 x 2 tiles of 4
    assert bigger.metrics["flops/forward"] == result.metrics["flops/forward"]


@pytest.mark.slow  # the family's count is tested fast; LoRA on it in the slow lane
@pytest.mark.parametrize("model,linears", [
    # (in, out) of every q_proj and v_proj: the towers' and the language models'
    (GEMMA3, 2 * [(32, 32), (32, 32)] + 2 * [(64, 64), (64, 32)]),
    (MLLAMA, 3 * [(32, 32), (32, 32)] + 3 * [(64, 64), (64, 32)]),
], ids=["gemma3", "mllama"])
def test_an_image_and_text_model_trains_low_rank_adapters_in_both_towers(model, linears):
    """train=lora adapts the tower's attention as the language model's (every linear layer of those names); the
    trainable parameters are the adapters', r (in + out) each, and the same on meta and on the CPU."""
    r = 2
    lora = ["train=lora", f"train.rank={r}", "train.targets=[q_proj,v_proj]", "measure.time=false"]
    meta = measured(*model, *lora)
    assert meta.metrics["size/params_trainable"] == sum(r * (i + o) for i, o in linears)
    full = measured(*model, "measure.time=false")
    assert meta.metrics["size/params"] == full.metrics["size/params"] + meta.metrics["size/params_trainable"]
    assert meta.metrics["flops/backward"] < full.metrics["flops/backward"]  # no weight gradients for frozen ones
    cpu = measured(*model, *lora, device="cpu")
    keys = ["flops/forward", "flops/backward", "size/params_trainable"]
    if model is MLLAMA:  # Gemma 3's masks are boolean: the CPU counts SDPA's conversion of them (aten.where), meta
        keys += ["flops/forward_elementwise", "flops/backward_elementwise"]  # not, as for gemma3_text alone
    for key in keys:
        assert cpu.metrics[key] == meta.metrics[key], key


def test_a_config_that_torch_refuses_as_it_is_built_is_one_line_naming_the_model():
    """Llama 3.2 Vision's default pad token (128004) outside a 120-token vocabulary: torch's embedding asserts it, as
    transformers builds the model (it was a traceback)."""
    from flopsweep.core.errors import ConfigError

    small = [o.replace(",pad_token_id:0,bos_token_id:1,eos_token_id:2", "") for o in MLLAMA]
    with pytest.raises(ConfigError) as err:
        build(resolve(compose_config(*small, "device=meta")))
    assert err.value.key == "model" and "Padding_idx must be within num_embeddings" in str(err.value)


def test_hugging_faces_eager_attention_counts_the_same_products_as_its_fused_kernel():
    """``model.attn_implementation=eager``: Q K^T and the weighted values as two batched matmuls, the softmax apart;
    the same matmul FLOPs as SDPA's fused kernel (the full pairs, by the MFU convention), more elementwise ones."""
    fused = measured(*HF_LLAMA, "batch.seq_len=16", "batch.size=2")
    eager = measured(*HF_LLAMA, "batch.seq_len=16", "batch.size=2", "+model.attn_implementation=eager")
    assert eager.metrics["flops/forward"] == fused.metrics["flops/forward"]
    assert eager.metrics["flops/backward"] == fused.metrics["flops/backward"]
    assert "aten.bmm" in {row["op"] for row in eager.breakdown["ops"]} - {row["op"] for row in fused.breakdown["ops"]}


def test_a_hugging_face_models_module_table_reaches_its_blocks_attention_and_mlp():
    """Issue 30 item 7: at the default depth (3, counted from the block stack), an HF decoder's table has each
    layer's self_attn and mlp (a mixture's experts too), as our families' have their blocks' attn and mlp."""
    dense = measured(*HF_LLAMA, "batch.seq_len=16", "batch.size=1")
    paths = {row["module"] for row in dense.breakdown["modules"]}
    assert {"net.model.layers.0.self_attn", "net.model.layers.1.mlp"} <= paths
    assert not any(path.startswith("net.model.layers.0.self_attn.") for path in paths)  # no deeper than that
    ours = measured("model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=2", "batch.seq_len=16",
                    "batch.size=1")
    assert max(row["depth"] for row in ours.breakdown["modules"]) == 3  # unchanged: blocks.0.attn


@pytest.mark.slow
def test_a_torchvision_that_does_not_load_is_named_in_one_line(tmp_path):
    """A torchvision wheel built for another torch raises as it is imported; transformers imports it wherever it is
    installed, and every HF model then failed with an import error that named neither."""
    from tests.helpers import child_env, run_cli

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = child_env()
    env["PYTHONPATH"] = f"{tmp_path / 'site'}:{env['PYTHONPATH']}"
    out = run_cli("model=resnet18", "device=meta", "tracking=none", cwd=tmp_path, env=env)
    assert out.returncode == 2  # refused by its config: a usage error
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("flopsweep:")]
    assert line.startswith("flopsweep: error: model.family='hf': transformers cannot build models while the "
                           "installed torchvision does not load (operator torchvision::nms does not exist)"), line
    assert "-m pip uninstall torchvision" in line and "Traceback" not in out.stderr
    # the same torchvision behind a custom model's _target_: its package fails as the target is looked for
    custom = run_cli("model=custom", "model._target_=torchvision.models.resnet50",
                     "model.inputs=[{name: x, shape: [batch, 3, 224, 224]}]", "model.loss=mse", "device=meta",
                     "tracking=none", cwd=tmp_path, env=env)
    assert custom.returncode == 2 and "Traceback" not in custom.stderr, custom.stderr
    (line,) = [line for line in custom.stderr.splitlines() if line.startswith("flopsweep:")]
    assert line.startswith("flopsweep: error: model._target_='torchvision.models.resnet50': its package torchvision "
                           "fails as it is imported (RuntimeError: operator torchvision::nms does not exist)"), line


@pytest.mark.slow
def test_transformers_note_that_a_fused_kernel_is_missing_is_not_a_warning_of_a_count(tmp_path):
    """A Jamba (Mamba-1 mixers) counts transformers' reference scan, as docs/models.md says; its "falling back to
    its reference PyTorch implementation ... much slower" was a warning on every such count."""
    tiny = ["model=hf", "model.model_type=jamba", "+model.hidden_size=64", "+model.intermediate_size=128",
            "+model.num_hidden_layers=2", "+model.num_attention_heads=4", "+model.num_key_value_heads=2",
            "+model.num_experts=4", "+model.num_experts_per_tok=2", "+model.vocab_size=100", "+model.mamba_d_state=8",
            "+model.attn_layer_offset=1", "+model.attn_layer_period=2", "+model.expert_layer_offset=1",
            "+model.expert_layer_period=2"]
    proc = run_cli(*tiny, "batch.seq_len=8", "device=meta", "tracking=none", cwd=tmp_path)  # its own logging
    assert proc.returncode == 0 and "flops/backward" in proc.stdout, proc.stderr
    assert "falling back" not in proc.stderr and "transformers" not in proc.stderr, proc.stderr


# A tiny Falcon-H1: 2 layers of width 64, each attention (4 heads of 16, 2 KV heads) beside a Mamba-2 mixer (8 SSD
# heads of 16, one group, a state of 16, chunks of 8, a causal convolution of 4 over its 128 + 2 x 16 channels),
# their outputs summed, then an MLP of 128; vocabulary 100, untied head
FALCON_H1 = ["model=hf", "model.model_type=falcon_h1", "+model.hidden_size=64", "+model.intermediate_size=128",
             "+model.num_hidden_layers=2", "+model.num_attention_heads=4", "+model.num_key_value_heads=2",
             "+model.vocab_size=100", "+model.mamba_d_ssm=128", "+model.mamba_n_heads=8", "+model.mamba_d_head=16",
             "+model.mamba_n_groups=1", "+model.mamba_d_state=16", "+model.mamba_chunk_size=8",
             "+model.max_position_embeddings=64"]


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_falcon_h1_counts_its_attention_and_its_ssd_scan_side_by_side_in_every_layer(device):
    """Per sample of 16 tokens and per layer: the mixer's in_proj to its gate, x, B, C and 8 time steps (64 x (128 +
    160 + 8)), the depthwise convolution over 160 channels (16 + 3 padded outputs x 4 taps), the SSD scan's five
    einsums over 2 chunks of 8 (C B^T and its mix of x within a chunk, 8 x 8 x 8 heads x 16; each chunk's state, 8 x
    8 x 16 x 16; the states passed over 2 + 1 chunk boundaries, 3 x 3 x 8 x 16 x 16; C against them), out_proj (128 x
    64); beside it attention's q and o (64^2), k and v (64 x 32), its scores and mix (4 x 16^2 x 64); the MLP (3 x 64
    x 128); then the head (64 x 100). Two samples; every op counted, the same on meta and on the CPU."""
    d, tokens, ff, vocab, layers = 64, 16, 128, 100, 2
    heads, head_dim, state, chunk, chunks, conv = 8, 16, 16, 8, 2, 128 + 2 * 16
    mixer = (2 * tokens * d * (128 + conv + heads) + 2 * conv * (tokens + 3) * 4
             + 2 * chunks * chunk * chunk * heads * (state + head_dim)              # C B^T, then the mix of x
             + 2 * chunks * chunk * heads * head_dim * state * 2                   # chunk states; C against states
             + 2 * (chunks + 1) ** 2 * heads * head_dim * state                    # across chunk boundaries
             + 2 * tokens * 128 * d)
    attention = 2 * tokens * (2 * d * d + 2 * d * 32) + 4 * tokens ** 2 * d
    mlp = 3 * 2 * tokens * d * ff
    result = measured(*FALCON_H1, "batch.size=2", "batch.seq_len=16", "measure.time=false", device=device)
    assert result.metrics["flops/forward"] == 2 * (layers * (mixer + attention + mlp) + 2 * tokens * d * vocab)
    assert not result.breakdown["uncounted_ops"]
    layer = (d * (128 + conv + heads) + conv * 4 + conv + 3 * heads + 128 * d  # in_proj, conv and bias, dt A D, out
             + 2 * d * d + 2 * d * 32 + 3 * d * ff + 2 * d)                    # attention, MLP, two norms
    assert result.metrics["size/params"] == layers * layer + 2 * vocab * d + d
    shape = result.info["shape"]  # attention's heads, not the scan's
    assert (shape["heads"], shape["kv_heads"], shape["head_dim"], shape["layers"]) == (4, 2, 16, 2)
    if device == "cpu":
        meta = measured(*FALCON_H1, "batch.size=2", "batch.seq_len=16", "measure.time=false")
        for key in ("flops/backward", "flops/forward_elementwise", "flops/backward_elementwise", "flops/optimizer"):
            assert result.metrics[key] == meta.metrics[key], key


@pytest.mark.slow  # the family's count is tested fast; LoRA on it in the slow lane
def test_falcon_h1_trains_low_rank_adapters_on_its_mixer_and_its_attention():
    """train=lora on the mixer's in_proj and out_proj and attention's q_proj and v_proj: r (in + out) each, 2 layers;
    the same on meta and on the CPU."""
    r = 4
    lora = ["train=lora", f"train.rank={r}", "train.targets=[in_proj,out_proj,q_proj,v_proj]", "measure.time=false",
            "batch.size=2", "batch.seq_len=16"]
    meta = measured(*FALCON_H1, *lora)
    assert meta.metrics["size/params_trainable"] == 2 * r * ((64 + 296) + (128 + 64) + (64 + 64) + (64 + 32))
    full = measured(*FALCON_H1, "measure.time=false", "batch.size=2", "batch.seq_len=16")
    assert meta.metrics["size/params"] == full.metrics["size/params"] + meta.metrics["size/params_trainable"]
    assert meta.metrics["size/grads_bytes"] == 4 * meta.metrics["size/params_trainable"]  # float32 gradients
    assert meta.metrics["flops/backward"] < full.metrics["flops/backward"]
    cpu = measured(*FALCON_H1, *lora, device="cpu")
    for key in ("flops/forward", "flops/backward", "size/params_trainable"):
        assert cpu.metrics[key] == meta.metrics[key], key


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_falcon_h1_generates_with_a_kv_cache_a_token_and_a_fixed_ssm_state(device):
    """Its cache holds, a layer and a sequence, the attention's keys and values (2 KV heads of 16, float32: 256 bytes a
    token a layer) and the mixer's state (8 heads x 16 x a state of 16) and the convolution's last 4 inputs (160
    channels), float32, with a layer's count of tokens seen (an int64 for the batch). A decode step grows by its
    attention alone: 4 x 64 FLOPs a layer for each token more of context."""
    from flopsweep.config.resolve import resolve
    from flopsweep.run.job import run_job

    batch, prompt, new, layers = 2, 8, 6, 2
    cfg = compose_config(*FALCON_H1, f"batch.size={batch}", f"batch.seq_len={prompt}", "workload=generate",
                         f"generate.new_tokens={new}", "dtype=float32", f"device={device}", "tracking=none",
                         "measure.warmup=1", "measure.repeats=2")
    result = run_job(resolve(cfg), {})
    assert result.status == "ok", result.error
    m = result.metrics
    state = layers * (8 * 16 * 16 * 4 + 160 * 4 * 4) + layers * 8 / batch
    assert m["size/kv_cache_bytes_per_token"] == layers * 2 * 2 * 16 * 4
    assert m["size/cache_state_bytes_per_sequence"] == state
    last = prompt + new - 1
    assert m["size/kv_cache_bytes"] == batch * (state + last * layers * 2 * 2 * 16 * 4)
    assert m["flops/decode_token_last"] - m["flops/decode_token_first"] == layers * 4 * 64 * (last - (prompt + 1))


def test_a_misspelt_model_type_names_the_one_meant():
    """It printed transformers' list of 800-odd types, cut mid-word at 300 characters, with no suggestion."""
    import transformers

    from flopsweep.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve(compose_config("model=hf", "model.model_type=lama", "device=meta"))
    assert str(err.value) == (f"model.model_type='lama': transformers {transformers.__version__} has no such model "
                              "type (did you mean llama?)")


def test_a_model_that_reads_a_tensors_value_on_meta_is_told_to_count_on_the_cpu():
    """BART (mBART, Marian, Pegasus, DeBERTa-v2) calls Tensor.item() in its forward: the job said 'RuntimeError:
    Tensor.item() cannot be called on meta tensors', naming nothing to change."""
    fields = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64)
    cfg = compose_config("model=hf", "model.model_type=bart", *(f"+model.{k}={v}" for k, v in fields.items()),
                         "batch.seq_len=16", "device=meta", "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "failed" and result.error.startswith(
        "device=meta: the model reads a tensor's value in its step, which meta tensors have none of; count it on "
        "device=cpu (RuntimeError: "), result.error


def test_xlnet_is_not_refused_for_its_unlimited_positions_and_on_meta_is_told_to_count_on_the_cpu():
    """XLNet's config gives max_position_embeddings=-1 (no limit): it was refused as if the user had set it. Its
    relative positions are made on the CPU whatever the inputs' device: on meta, told to count it on the CPU."""
    fields = dict(d_model=16, n_layer=1, n_head=2, d_inner=32, vocab_size=64)
    overrides = ["model=hf", "model.model_type=xlnet", *(f"+model.{k}={v}" for k, v in fields.items()),
                 "batch.seq_len=16", "tracking=none", "measure.warmup=0", "measure.repeats=1"]
    on_meta = compose_config(*overrides, "device=meta")
    result = run_job(resolve(on_meta), OmegaConf.to_container(on_meta, resolve=True))
    assert result.status == "failed" and result.error.startswith(
        "device=meta: the model makes tensors on the CPU in its step, whatever its inputs' device; count it on "
        "device=cpu (RuntimeError: "), result.error
    on_cpu = compose_config(*overrides, "device=cpu")
    result = run_job(resolve(on_cpu), OmegaConf.to_container(on_cpu, resolve=True))
    assert result.status == "ok" and result.metrics["flops/forward"] > 0, result.error
