"""workload=generate: a prompt's prefill, then decode steps with a KV cache, counted at the dispatcher on cpu and meta,
the cache's bytes from its real tensors, timed on cpu."""

import pytest
import torch

from flopsweep.build.train_modes import Workload
from flopsweep.config.resolve import job_config, resolve
from flopsweep.core.errors import ConfigError
from flopsweep.run.job import run_job
from tests.helpers import compose_config

L, D, HEADS, V, P, B = 2, 64, 4, 97, 8, 2
GPT = ["model=gpt2_small", f"model.d_model={D}", f"model.n_layer={L}", f"model.n_head={HEADS}",
       f"model.vocab_size={V}", "model.max_positions=64"]
LLAMA_GQA = ["model=llama2_7b", f"model.d_model={D}", f"model.n_layer={L}", f"model.n_head={HEADS}",
             "model.n_kv_head=2", "model.d_ff=128", f"model.vocab_size={V}", "model.max_positions=64"]
RUN = [f"batch.size={B}", f"batch.seq_len={P}", "tracking=none", "measure.warmup=1", "measure.repeats=3"]


def generate(*overrides, device="meta", new_tokens=6):
    result = run_job(resolve(compose_config(*overrides, *RUN, "workload=generate", f"generate.new_tokens={new_tokens}",
                                            f"device={device}")), {})
    assert result.status == "ok", result.error
    return result


def matmul_params(kv_heads, d_ff, gated):
    """Every weight a token's matmuls multiply by, by hand: q, k, v, out, the feed-forward's, and the head."""
    hd = D // HEADS
    attention = D * (D + 2 * kv_heads * hd) + D * D
    feed_forward = (3 if gated else 2) * D * d_ff
    return L * (attention + feed_forward) + D * V


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("overrides,kv_heads,d_ff,gated", [(GPT, HEADS, 4 * D, False), (LLAMA_GQA, 2, 128, True)],
                         ids=["gpt2", "llama-gqa"])
def test_decode_flops_per_token_are_2n_plus_4_l_d_context(overrides, kv_heads, d_ff, gated, device):
    new_tokens = 6
    m = generate(*overrides, device=device, new_tokens=new_tokens).metrics
    n = matmul_params(kv_heads, d_ff, gated)
    per_token = {c: 2 * n + 4 * L * D * c for c in range(P + 1, P + new_tokens)}  # contexts P+1 .. P+new-1
    assert m["flops/decode_token_first"] == per_token[P + 1]
    assert m["flops/decode_token_last"] == per_token[P + new_tokens - 1]
    assert m["flops/decode"] == B * sum(per_token.values())
    assert m["flops/generation"] == m["flops/prefill"] + m["flops/decode"]


def test_the_prefill_is_the_forward_pass_with_the_head_on_the_last_position_only():
    forward = run_job(resolve(compose_config(*GPT, *RUN, "workload=inference", "device=meta")), {}).metrics
    prefill = generate(*GPT).metrics
    assert prefill["flops/prefill"] == forward["flops/forward"] - 2 * B * (P - 1) * D * V


def test_a_long_generation_is_counted_on_the_line_and_checked_at_its_end():
    short = generate(*GPT, new_tokens=3)   # two decode steps, both counted
    long = generate(*GPT, new_tokens=40)   # two counted, the line checked by a step at context 47
    assert "every step counted" in short.info["generation"]["counted"]
    assert "checked" in long.info["generation"]["counted"] and long.info["generation"]["last_context"] == P + 39
    n = matmul_params(HEADS, 4 * D, False)
    assert long.metrics["flops/decode"] == B * sum(2 * n + 4 * L * D * c for c in range(P + 1, P + 40))


@pytest.mark.parametrize("overrides,kv_heads", [(GPT, HEADS), (LLAMA_GQA, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("dtype,bytes_per", [("float32", 4), ("bfloat16", 2)])
def test_kv_cache_bytes_per_token_are_2_l_kv_heads_head_dim_bytes(overrides, kv_heads, dtype, bytes_per):
    m = generate(*overrides, f"dtype={dtype}", new_tokens=5).metrics
    per_token = 2 * L * kv_heads * (D // HEADS) * bytes_per
    assert m["size/kv_cache_bytes_per_token"] == per_token
    assert m["size/kv_cache_bytes"] == per_token * B * (P + 4)


MAMBA2 = ["model=hf", "model.model_type=mamba2", f"+model.hidden_size={D}", f"+model.num_hidden_layers={L}",
          "+model.num_heads=8", "+model.head_dim=16", "+model.n_groups=2", "+model.state_size=16",
          "+model.conv_kernel=4", f"+model.vocab_size={V}", "model.default_seq_len=64"]


def test_a_state_space_models_cache_is_a_state_of_fixed_size_not_a_cache_a_token():
    """Mamba-2 keeps, a layer and a sequence, its scan's state (8 heads x 16 x a state of 16, float32 as
    transformers keeps it) and its convolution's last 4 inputs (the inner 2 x 64 wide, and the 2 groups' B and C of
    16, float32 here), and beside them a layer's count of tokens seen (an int64 for the batch): the same after 5 new
    tokens as after 1. The serving projection holds it once a sequence."""
    pytest.importorskip("transformers")
    from flopsweep.core.result import Result
    from flopsweep.projection.generation import Generation

    result = generate(*MAMBA2, "dtype=float32", new_tokens=6)
    m = result.metrics
    whole = B * L * (8 * 16 * 16 * 4 + (2 * D + 2 * 2 * 16) * 4 * 4) + L * 8
    state = whole / B
    assert m["size/kv_cache_bytes_per_token"] == 0 and m["size/cache_state_bytes_per_sequence"] == state
    assert m["size/kv_cache_bytes"] == whole
    gen = Generation.from_result(Result("ok", None, {"model": {"family": "hf"}}, m), "mamba2")
    assert gen.cache_bytes(10) == gen.cache_bytes(10_000) == state
    transformer = generate(*GPT, new_tokens=5).metrics  # a transformer's: all of it by the token, nothing fixed
    assert transformer["size/cache_state_bytes_per_sequence"] == 0


def test_a_decode_step_reads_every_weight_once_and_of_the_embedding_only_its_rows():
    m = generate(*LLAMA_GQA, new_tokens=3).metrics  # untied: the head reads its matrix, the embedding B rows
    weights = m["size/weights_bytes"]
    assert m["size/decode_weights_read_bytes"] == weights - V * D * 4 + B * D * 4
    many = run_job(resolve(compose_config(*LLAMA_GQA, *[r for r in RUN if not r.startswith("batch.size")],
                                          "batch.size=200", "workload=generate", "generate.new_tokens=2",
                                          "device=meta")), {}).metrics
    assert many["size/decode_weights_read_bytes"] == weights  # 200 rows looked up of 97: the table, not 200 rows
    tied = generate(*GPT, new_tokens=3).metrics       # GPT-2's head is its embedding: read whole
    # ... and of its 64 learned positions the one a step is at
    assert tied["size/decode_weights_read_bytes"] == tied["size/weights_bytes"] - 64 * D * 4 + D * 4


def test_on_cpu_a_generation_is_timed():
    m = generate(*GPT, device="cpu", new_tokens=12).metrics
    assert m["time/ttft_s"] > 0 and m["time/tpot_s"] > 0 and m["time/tpot_last_s"] > 0
    mean = (m["time/tpot_s"] + m["time/tpot_last_s"]) / 2
    assert m["speed/output_tokens_per_s"] == pytest.approx(B / mean)
    assert m["time/generation_s"] == pytest.approx(m["time/ttft_s"] + 11 * mean)


HF_LLAMA = ["model=hf", "model.model_type=llama", "+model.hidden_size=64", "+model.intermediate_size=128",
            "+model.num_hidden_layers=2", "+model.num_attention_heads=4", "+model.num_key_value_heads=2",
            f"+model.vocab_size={V}", "+model.max_position_embeddings=64"]


def test_an_hf_decoder_generates_with_its_own_cache():
    pytest.importorskip("transformers")
    import transformers

    new_tokens = 5
    m = generate(*HF_LLAMA, device="cpu", new_tokens=new_tokens).metrics
    n = matmul_params(2, 128, True)
    assert m["flops/decode_token_first"] == 2 * n + 4 * L * D * (P + 1)
    # the cache Hugging Face itself makes for the same context, read through its own API
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
                                      max_position_embeddings=64)
    net = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        cache = net(input_ids=torch.zeros(B, P + new_tokens - 1, dtype=torch.long), use_cache=True).cache
    real = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert m["size/kv_cache_bytes"] == real


@pytest.mark.parametrize("overrides,key", [
    (["model=bert_base"], "workload=generate: needs a decoder"),  # an encoder has no KV cache to decode with
    (["batch.seq_len=8", "generate.new_tokens=0"], "generate.new_tokens"),
    (["batch.seq_len=60", "generate.new_tokens=10"], "generate.new_tokens=10"),  # 69 positions, the model has 64
])
def test_what_cannot_generate_is_refused_by_key(overrides, key):
    base = GPT if overrides[0] != "model=bert_base" else []
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*base, "workload=generate", *overrides))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_the_old_spelling_train_generate_is_read_as_the_workload_with_a_notice_and_recorded_as_it():
    common = [*GPT, *RUN, "device=meta", "generate.new_tokens=4"]
    old_cfg, new_cfg = compose_config(*common, "train=generate"), compose_config(*common, "workload=generate")
    old, new = resolve(old_cfg), resolve(new_cfg)
    assert old.workload is Workload.generate and old.generates and not old.training and old.train == new.train
    assert old.notes == ("train=generate is now workload=generate (the old spelling is read as it, for a while)",)
    assert not new.notes
    recorded = job_config(old_cfg, old)
    assert recorded == job_config(new_cfg, new) and recorded["workload"] == "generate" and "train" not in recorded


@pytest.mark.parametrize("overrides", [["train=generate", "workload=inference"], ["train=lora", "workload=generate"]])
def test_a_train_mode_that_contradicts_the_workload_is_refused_by_key(overrides):
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*GPT, *RUN, "device=meta", *overrides))
    assert str(err.value).startswith("train.mode=") and "workload=" in str(err.value) and "\n" not in str(err.value)


HF_GEMMA2_WINDOW = ["model=hf", "model.model_type=gemma2", "+model.hidden_size=64", "+model.intermediate_size=128",
                    "+model.num_hidden_layers=2", "+model.num_attention_heads=4", "+model.num_key_value_heads=2",
                    "+model.head_dim=16", f"+model.vocab_size={V}", "+model.max_position_embeddings=64",
                    "+model.sliding_window=6"]


@pytest.mark.slow
def test_a_sliding_window_bends_the_cost_and_the_pieces_add_up_to_every_step_counted():
    pytest.importorskip("transformers")
    from flopsweep.build.model import build
    from flopsweep.measure.count import count_call

    new_tokens = 24  # contexts 3 to 25: the window of 6 fills at the fourth
    overrides = [*HF_GEMMA2_WINDOW, *RUN, "batch.seq_len=2", "workload=generate", "device=cpu"]
    result = run_job(resolve(compose_config(*overrides, f"generate.new_tokens={new_tokens}")), {})
    assert result.status == "ok" and "pieces" in result.info["generation"]["counted"]
    # the same generation, every decode step counted one after another on the cache the steps before it made
    spec = resolve(compose_config(*overrides, f"generate.new_tokens={new_tokens}"))
    built = build(spec)
    gen = spec.family.generator(spec.model)(built.model)
    cache = gen.prefill(torch.zeros(B, 2, dtype=torch.long))
    total = 0
    for _ in range(new_tokens - 1):
        counted, cache = count_call(built.model, lambda: gen.decode(torch.zeros(B, 1, dtype=torch.long), cache))
        total += counted.forward.matmul
    assert result.metrics["flops/decode"] == total


def test_a_generation_is_sized_on_meta_with_its_kv_cache():
    result = generate(*GPT, new_tokens=20)
    m, at = result.metrics, result.breakdown["memory_at_peak"]
    # the last step's peak: the weights, and the cache before it and after it (ours grows by concatenation)
    assert m["size/kv_cache_bytes"] <= at["kv_cache"] <= 2 * m["size/kv_cache_bytes"]
    assert at["weights"] == m["size/weights_bytes"] and m["size/step_peak_bytes"] == sum(at.values())


def test_a_generation_that_would_not_fit_is_skipped_before_it_runs():
    overrides = [*GPT, *RUN, "workload=generate", "generate.new_tokens=20", "device=cpu", "measure.memory_share=1e-6"]
    result = run_job(resolve(compose_config(*overrides)), {})
    assert result.status == "skipped" and "measure.memory_share" in result.error
    assert result.metrics["size/step_peak_bytes"] > result.metrics["size/weights_bytes"]


MOE = ["model=mixtral_8x7b", f"++model.hidden_size={D}", "++model.intermediate_size=96", f"++model.vocab_size={V}",
       f"++model.num_attention_heads={HEADS}", "++model.num_key_value_heads=2", f"++model.num_hidden_layers={L}"]


@pytest.mark.parametrize("batch", [1, 8])
def test_a_mixture_of_experts_decode_step_reads_the_experts_its_batch_reaches(batch):
    """A small Mixtral (8 experts, 2 a token): every expert's three matrices are routed weights, and a decode step
    reads the others (less the embedding table's unread rows) and, of them, the experts its tokens reach under
    uniform routing (core.shape.experts_touched, checked against sampling in tests/models/test_shape.py): not all 8."""
    from flopsweep.core.shape import experts_touched

    result = run_job(resolve(compose_config(*MOE, f"batch.size={batch}", f"batch.seq_len={P}", "tracking=none",
                                            "workload=generate", "generate.new_tokens=3", "device=meta")), {})
    assert result.status == "ok", result.error
    m = result.metrics
    routed = L * 8 * 3 * D * 96 * 4
    assert m["size/routed_expert_bytes"] == routed
    # and the rotary embedding's frequencies (a buffer of head_dim / 2 floats)
    others = m["size/weights_bytes"] - routed - V * D * 4 + batch * D * 4 + D // HEADS // 2 * 4
    assert m["size/decode_weights_read_bytes"] == pytest.approx(others + routed * experts_touched(8, 2, batch) / 8)
    assert "uniform routing" in result.info["generation"]["experts_read"]


def test_a_presets_generation_runs_with_its_defaults_its_prompt_cut_to_leave_room_for_the_new_tokens():
    """GPT-2's 1,024 positions: workload=generate with no prompt length given prompts 897 tokens before its 128 new ones
    (it asked for a context of 1,151 and failed); a prompt given is the user's, refused as before."""
    spec = resolve(compose_config("model=gpt2_small", "workload=generate", "device=meta", "tracking=none"))
    assert spec.batch.seq_len == 1024 - 128 + 1 and spec.generate.new_tokens == 128
    with pytest.raises(ConfigError, match="generate.new_tokens=128: with batch.seq_len=1024 makes a context of 1,151"):
        resolve(compose_config("model=gpt2_small", "workload=generate", "batch.seq_len=1024", "device=meta"))
    roomy = resolve(compose_config("model=llama3_1_8b", "workload=generate", "device=meta", "tracking=none"))
    assert roomy.batch.seq_len == 8192  # its default prompt fits its 131,072 positions: left as it is
    # the prompt chosen is said before the job, cut or not; one given is not
    assert spec.notes == ("batch.seq_len not given: a prompt of 897 tokens, leaving room in the model's 1,024 "
                          "positions for generate.new_tokens=128",)
    assert roomy.notes == ("batch.seq_len not given: a prompt of 8,192 tokens (the model's default)",)
    assert not resolve(compose_config("model=gpt2_small", "workload=generate", "batch.seq_len=64", "device=meta",
                                      "tracking=none")).notes
