"""Parallel layouts counted rank by rank (measure/ranks.py) against figures from elsewhere: the closed forms of a
transformer's FLOPs and parameters, Megatron-LM's collectives per layer (Shoeybi et al. 2019, Korthikanti et al.
2022), FSDP's gathers and reductions of the parameters' bytes, and Korthikanti et al.'s activations per layer."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel

from flopsweep.core.errors import ConfigError
from flopsweep.core.hardware import accelerator
from flopsweep.measure.calibration import Calibration
from flopsweep.measure.defaults import default_profile
from flopsweep.measure.layout import Layout
from flopsweep.measure.predict import predict
from flopsweep.measure.ranks import LayoutCount, Workload, count_layout, fake_world, param_groups
from flopsweep.models import FAMILIES

H, HEADS, VOCAB, SEQ, MICRO = 64, 4, 128, 32, 2  # a small decoder: GELU MLP of 4h, biases, tied head, learned positions


def decoder(layers: int, **fields):
    family = FAMILIES["decoder"]
    cfg = family.Config(d_model=fields.pop("d_model", H), n_layer=layers, n_head=fields.pop("n_head", HEADS),
                        vocab_size=fields.pop("vocab_size", VOCAB), max_positions=fields.get("max_positions", SEQ),
                        default_seq_len=SEQ, **{k: v for k, v in fields.items() if k != "max_positions"})
    return lambda: family.Model(cfg)


@lru_cache(maxsize=None)
def counted(layers: int = 2, **layout) -> LayoutCount:
    """The small decoder counted in float32, a global batch of 8 micro-batches of MICRO sequences per dp rank."""
    lay = Layout(micro_batch_size=MICRO, **layout)
    return count_layout(decoder(layers), lay, Workload(8 * MICRO * lay.dp, SEQ))


def decoder_params(layers: int, h: int = H, vocab: int = VOCAB, positions: int = SEQ) -> int:
    """Per layer: qkv 3h^2 + 3h, out h^2 + h, up 4h^2 + 4h, down 4h^2 + h, two layer norms 4h; token and position
    embeddings (the head is tied to the first); the final norm 2h."""
    return vocab * h + positions * h + layers * (12 * h * h + 13 * h) + 2 * h


def collective(count, op: str, phase: str, dim: str, rank: int = 0) -> tuple[int, int]:
    """(calls, bytes) of one collective of a counted rank, 0s where it never ran."""
    found = [t for k, t in count.ranks[rank].collectives.items() if (k.op, k.phase, k.mesh_dim) == (op, phase, dim)]
    return (sum(t.calls for t in found), sum(t.bytes for t in found))


# ---- the layout and its checks ----

@pytest.mark.parametrize("layout, shape, key", [
    (dict(tp=3), {}, "parallel.tp"),                                   # 4 heads
    (dict(tp=4), dict(heads=8, kv_heads=2), "parallel.tp"),            # divides the heads, not the KV heads
    (dict(pp=5), {}, "parallel.pp"),                                   # 4 layers
    (dict(pp=2, vpp=3), {}, "parallel.pp"),                            # 6 chunks of 4 layers
    (dict(dp=3), {}, "parallel.dp"),                                   # batch 8
    (dict(dp=2, micro_batch_size=8), {}, "parallel.dp"),
    (dict(ep=2, dp=2), {}, "parallel.ep"),                             # a dense model
    (dict(ep=2, dp=2), dict(experts=3), "parallel.ep"),
    (dict(zero=4), {}, "parallel.zero"),
    (dict(recompute="some"), {}, "parallel.recompute"),
    (dict(vpp=2), {}, "parallel.vpp"),                                 # no pipeline to interleave
    (dict(cp=3), {}, "parallel.cp"),                                   # sequence of 32
    (dict(cp=2, tp=4, sequence_parallel=True), dict(seq_len=36), "parallel.sequence_parallel"),  # 18 a cp rank
    (dict(tp=4, sequence_parallel=True), dict(seq_len=6), "parallel.sequence_parallel"),
    (dict(dp=0), {}, "parallel.dp"),
])
def test_a_bad_layout_is_refused_in_one_line_naming_its_key(layout, shape, key):
    fields = {**dict(heads=4, kv_heads=None, layers=4, batch_size=8, seq_len=32), **shape}
    with pytest.raises(ConfigError) as err:
        Layout(**layout).check_model(**fields)
    assert err.value.key == key and "\n" not in str(err.value)


def test_stages_split_the_layers_and_hold_the_micro_batches_in_flight():
    assert [len(c) for s in range(4) for c in Layout(pp=4).stage_layers(10, s)] == [3, 3, 2, 2]
    assert Layout(pp=2, vpp=2).stage_layers(8, 0) == [[0, 1], [4, 5]]  # chunk c on stage c % pp
    assert Layout(pp=2, vpp=2).stage_layers(8, 1) == [[2, 3], [6, 7]]
    # 1F1B (Narayanan et al. 2021): stage i holds min(m, p - i); interleaved, the first 1 + (p-1)/(p v) times more
    assert [Layout(pp=4).in_flight(8, s) for s in range(4)] == [4, 3, 2, 1]
    assert Layout(pp=4).in_flight(2, 0) == 2
    assert Layout(pp=4, vpp=2).in_flight(8, 0) == pytest.approx(4 * (1 + 3 / 8))


# ---- FLOPs ----

def megatron_forward(layers: int, tokens: int, seq: int, h: int = H, vocab: int = VOCAB) -> int:
    """Narayanan et al. 2021, eq. (2) without its factor 3 (forward only): 24 B s l h^2 (1 + s/(6h) + V/(12 l h)),
    multiplied out (B s = tokens)."""
    return 24 * tokens * layers * h * h + 4 * tokens * seq * layers * h + 2 * tokens * h * vocab


@pytest.mark.parametrize("tp", [2, 4])
def test_a_rank_counts_its_shards_the_global_count_over_tp(tp):
    whole, split = counted(tp=1).ranks[0], counted(tp=tp).ranks[0]
    assert whole.flops["forward"].matmul == megatron_forward(2, MICRO * SEQ, SEQ)
    assert whole.flops["backward"].matmul == 2 * whole.flops["forward"].matmul
    for phase in ("forward", "backward"):
        assert split.flops[phase].matmul * tp == whole.flops[phase].matmul
    assert not split.uncounted


def test_a_hugging_face_llama_is_split_by_tp_with_grouped_query_heads():
    family = FAMILIES["hf"]
    cfg = family.config(dict(family="hf", name="tiny", model_type="llama", hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                             max_position_embeddings=SEQ))
    runs = {tp: count_layout(lambda: family.Model(cfg), Layout(tp=tp, micro_batch_size=2),
                                 Workload(2, SEQ)).ranks[0] for tp in (1, 2)}
    # per layer: q and o h^2 each, k and v h^2/2 each (2 of 4 heads), gate/up/down 3 h f; attention 4 s^2 h; head
    tokens, h, f = 2 * SEQ, 64, 128
    forward = 2 * (2 * tokens * (3 * h * h + 3 * h * f) + 4 * 2 * SEQ * SEQ * h) + 2 * tokens * h * 128
    assert runs[1].flops["forward"].matmul == forward
    assert runs[2].flops["forward"].matmul * 2 == forward
    assert runs[2].flops["backward"].matmul * 2 == runs[1].flops["backward"].matmul


def hf_decoder(model_type: str, layers: int = 2, **fields):
    family = FAMILIES["hf"]
    cfg = family.config(dict(family="hf", name="tiny", model_type=model_type, vocab_size=VOCAB, **fields,
                             **({"n_embd": H, "n_head": HEADS, "n_layer": layers, "n_positions": SEQ}
                                if model_type == "gpt2" else
                                {"hidden_size": H, "num_attention_heads": HEADS, "num_hidden_layers": layers,
                                 "intermediate_size": 4 * H, "max_position_embeddings": SEQ})))
    return lambda: family.Model(cfg)


@pytest.mark.parametrize("model_type, fields", [
    ("gpt2", {}),                                                      # Conv1D linears, learned positions, tied head
    ("gpt_neox", dict(rotary_pct=0.25, use_parallel_residual=True)),   # GPT-NeoX-20B's partial rotary, parallel MLP
])
@pytest.mark.parametrize("tp, sp", [pytest.param(1, False, marks=pytest.mark.slow),
                                     pytest.param(2, False, marks=pytest.mark.slow), (2, True)])
def test_a_hugging_face_gpt2_or_gpt_neox_is_split_as_flopsweeps_decoder_of_its_shape(model_type, fields, tp, sp):
    """Both are GPT layers (fused qkv 3h^2, out h^2, a GELU MLP of 4h, biases, two layer norms): under tensor and
    sequence parallelism a rank computes and communicates what flopsweep's decoder of that shape does (whose plan
    the tests above hold to Megatron-LM's closed forms); GPT-2 is that decoder, parameter for parameter. GPT-NeoX has
    no learned positions and its own head: the vocabulary's table twice."""
    layout = Layout(tp=tp, sequence_parallel=sp, micro_batch_size=MICRO)
    theirs = count_layout(hf_decoder(model_type, **fields), layout, Workload(MICRO, SEQ)).ranks[0]
    ours = count_layout(decoder(2), layout, Workload(MICRO, SEQ)).ranks[0]
    assert {k: v.matmul for k, v in theirs.flops.items()} == {k: v.matmul for k, v in ours.flops.items()}
    assert theirs.flops["forward"].matmul * tp == megatron_forward(2, MICRO * SEQ, SEQ)
    calls = lambda rank: {(k.op, k.phase): (t.calls, t.bytes) for k, t in rank.collectives.items()}  # noqa: E731
    if model_type == "gpt2":
        assert calls(theirs) == calls(ours) and theirs.params == ours.params
        assert theirs.params == decoder_params(2) if tp == 1 else theirs.params < decoder_params(2)
    else:  # the positions' gradient is not gathered under sequence parallelism: they have none
        assert {k: v for k, v in calls(theirs).items() if k != ("all_gather", "backward")} == \
            {k: v for k, v in calls(ours).items() if k != ("all_gather", "backward")}
        if tp == 1:
            assert theirs.params == decoder_params(2) - SEQ * H + VOCAB * H
    assert not theirs.uncounted


def test_recomputation_is_counted_where_it_runs():
    plain = counted(tp=1).ranks[0].flops
    selective = counted(recompute="selective").ranks[0].flops
    full = counted(recompute="full").ranks[0].flops
    attention = 4 * MICRO * SEQ * SEQ * H  # QK^T and PV of one layer's forward
    assert selective["recompute"].matmul == 2 * attention
    assert plain["recompute"].matmul == 0
    # PyTorch's checkpoint stops rerunning a layer once backward has what it needs: MLP's down projection, whose
    # output nothing saves, is not run again
    assert full["recompute"].matmul == 2 * (2 * MICRO * SEQ * 8 * H * H + attention)
    for flops in (selective, full):  # the model's FLOPs are the same: recomputation is hardware work on top
        assert (flops["forward"].matmul, flops["backward"].matmul) == \
            (plain["forward"].matmul, plain["backward"].matmul)


def flat_profile(flops_per_s: float = 1e12) -> Calibration:
    """A part whose matmuls and attention all run at ``flops_per_s``, whatever their shape, with memory a million
    times faster than that (every matmul compute-bound) and no launches."""
    edges = (1, 1 << 20)
    rows = [[m, k, n, 2 * m * k * n / flops_per_s] for m in edges for k in edges for n in edges]
    return Calibration(part="flat", device="cpu", matmul={"float32": rows}, graph_timed=True,
                       memory=[[1.0, 1e-18], [1e18, 1.0]])


def test_a_ranks_trace_predicts_its_compute_half_the_whole_models_at_tp_2():
    cal = flat_profile()
    whole, split = (predict(counted(tp=tp).ranks[0].trace, cal) for tp in (1, 2))
    matmul_seconds = 3 * megatron_forward(2, MICRO * SEQ, SEQ) / 1e12  # forward and backward (twice forward)
    assert sum(p.compute for p in whole.phases.values()) == pytest.approx(matmul_seconds, rel=1e-9)
    assert sum(p.compute for p in split.phases.values()) == pytest.approx(matmul_seconds / 2, rel=1e-9)
    assert set(split.phases) == {"forward", "backward", "optimizer"}


def test_recomputation_is_a_phase_of_the_trace():
    phases = predict(counted(recompute="selective").ranks[0].trace, flat_profile()).phases
    assert phases["recompute"].compute == pytest.approx(2 * 4 * MICRO * SEQ * SEQ * H / 1e12, rel=1e-9)


# ---- collectives ----

def per_layer(op: str, phase: str, dim: str, **layout) -> tuple[int, int]:
    (calls3, bytes3), (calls2, bytes2) = (collective(counted(n, **layout), op, phase, dim) for n in (3, 2))
    return calls3 - calls2, bytes3 - bytes2


ACTIVATION = MICRO * SEQ * H * 4  # b s h in float32


def test_tensor_parallelism_all_reduces_twice_a_layer_each_way():
    """Shoeybi et al. 2019 (Megatron-LM), figure 4: g after attention and after the MLP in forward, f's gradient
    before each in backward, each b*s*h."""
    for phase in ("forward", "backward"):
        assert per_layer("all_reduce", phase, "tp", tp=2) == (2, 2 * ACTIVATION)


def test_sequence_parallelism_turns_each_all_reduce_into_an_all_gather_and_a_reduce_scatter():
    """Korthikanti et al. 2022, section 4.2.2: g becomes a reduce-scatter and f an all-gather (the reverse in
    backward), of the same b*s*h. What is left to all-reduce: the gradients of the layer norms' weights and biases
    (4 of h), partial sums over the sequence's shards (Megatron-LM all-reduces them too)."""
    assert per_layer("all_reduce", "forward", "tp", tp=2, sequence_parallel=True) == (0, 0)
    assert per_layer("all_reduce", "backward", "tp", tp=2, sequence_parallel=True) == (4, 4 * H * 4)
    for phase in ("forward", "backward"):
        assert per_layer("all_gather", phase, "tp", tp=2, sequence_parallel=True) == (2, 2 * ACTIVATION)
        assert per_layer("reduce_scatter", phase, "tp", tp=2, sequence_parallel=True) == (2, 2 * ACTIVATION)


@pytest.mark.parametrize("tp", [1, 2])
def test_context_parallelism_splits_each_sequence_and_gathers_every_key_and_value(tp):
    """cp=2: each rank computes its half of every sequence against all of its keys (Llama 3's all-gather context
    parallelism): Narayanan et al.'s forward for half the tokens at the whole sequence's attention length, over tp;
    a layer all-gathers the whole sequence's keys and values (b s h each, over tp) in forward and reduce-scatters
    their gradients in backward; the gradients are reduced over the dp x cp ranks that hold the same weights."""
    split = counted(cp=2, tp=tp)
    forward = split.ranks[0].flops["forward"].matmul
    assert forward * tp == megatron_forward(2, MICRO * SEQ // 2, SEQ)
    assert split.ranks[0].flops["backward"].matmul == 2 * forward
    assert split.global_flops() == counted(tp=1).global_flops()  # the model's work, split, not changed
    assert per_layer("all_gather", "forward", "cp", cp=2, tp=tp) == (2, 2 * ACTIVATION // tp)
    assert per_layer("reduce_scatter", "backward", "cp", cp=2, tp=tp) == (2, 2 * ACTIVATION // tp)
    assert collective(split, "all_gather", "backward", "cp") == (0, 0)
    gradients = collective(split, "all_reduce", "backward", "dp_cp")
    assert collective(split, "all_reduce", "backward", "dp") == (0, 0)
    if tp == 1:
        assert gradients[1] == 4 * decoder_params(2)  # every weight's gradient, float32
    assert not split.ranks[0].uncounted


def test_context_parallelism_reruns_its_gathers_only_where_a_whole_layer_is_recomputed():
    selective, full = counted(cp=2, recompute="selective"), counted(cp=2, recompute="full")
    assert collective(selective, "all_gather", "recompute", "cp") == (0, 0)  # attention's core only: keys kept
    assert collective(full, "all_gather", "recompute", "cp") == collective(full, "all_gather", "forward", "cp")
    assert selective.ranks[0].flops["recompute"].matmul == 2 * 4 * MICRO * (SEQ // 2) * SEQ * H


@pytest.mark.slow
def test_a_context_parallel_stage_is_counted_alike_from_samples():
    layout = Layout(dp=2, cp=2, zero=3, recompute="full", micro_batch_size=MICRO)
    assert_counted_alike(*both_ways(decoder(8), layout, Workload(8 * MICRO * 2, SEQ)))


# ---- a mixture of experts, its experts split over ep ----

EXPERTS, TOP_K, FFN = 4, 2, 128


def mixtral(layers: int = 2, ffn: int = FFN):
    family = FAMILIES["hf"]
    cfg = family.config(dict(family="hf", name="tiny", model_type="mixtral", hidden_size=H, intermediate_size=ffn,
                             num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=2,
                             vocab_size=VOCAB, max_position_embeddings=SEQ, num_local_experts=EXPERTS,
                             num_experts_per_tok=TOP_K))
    return lambda: family.Model(cfg)


@lru_cache(maxsize=None)
def moe_counted(**layout) -> LayoutCount:
    """The tiny Mixtral in bfloat16 (grouped matmuls run in it), 2 micro-batches of MICRO a data-parallel rank."""
    lay = Layout(micro_batch_size=MICRO, **layout)
    return count_layout(mixtral(), lay, Workload(2 * MICRO * lay.dp, SEQ, torch.bfloat16))


@pytest.mark.parametrize("layout", [dict(dp=2, ep=2), dict(dp=4, ep=2, zero=3)])
def test_expert_parallelism_splits_the_experts_and_sends_each_tokens_rows_to_them_and_back(layout):
    """Per layer: attention's projections (q and o h^2, k and v h^2/2: 2 of 4 heads), its scores 4 T s h, the router
    2 T h E, and each token's k experts, 2 T k 3 F h: on the rank's own tokens whatever ep (routing taken as
    uniform). The experts' weights split over ep; each token's k rows (bfloat16) and routing weights (float32) sent
    to the experts' ranks, the outputs sent back: three all-to-alls a layer each way."""
    tokens, experts_bytes = MICRO * SEQ, 2 * EXPERTS * 3 * FFN * H * 2  # two layers' experts, bfloat16
    layer = 2 * tokens * 3 * H * H + 4 * tokens * SEQ * H + 2 * tokens * H * EXPERTS + 2 * tokens * TOP_K * 3 * FFN * H
    whole, split = moe_counted(), moe_counted(**layout)
    assert whole.ranks[0].flops["forward"].matmul == 2 * layer + 2 * tokens * H * VOCAB
    assert split.ranks[0].flops["forward"].matmul == whole.ranks[0].flops["forward"].matmul
    assert split.ranks[0].flops["backward"].matmul == whole.ranks[0].flops["backward"].matmul
    assert split.global_flops() == whole.global_flops() * layout["dp"]  # dp x the batch
    rows = tokens * TOP_K * H * 2 + tokens * TOP_K * 4 + tokens * TOP_K * H * 2
    for phase in ("forward", "backward"):
        assert collective(split, "all_to_all", phase, "ep") == (2 * 3, 2 * rows)
    ep, data = layout["ep"], layout["dp"]
    if layout.get("zero", 0) == 0:
        assert split.ranks[0].params == whole.ranks[0].params - experts_bytes // 2 * (ep - 1) // ep
        assert collective(split, "all_reduce", "backward", "edp") == ((2 * 2, experts_bytes // ep) if data > ep
                                                                       else (0, 0))
    else:  # FSDP shards the experts over the ranks that hold them, the rest over dp
        assert collective(split, "all_gather", "forward", "edp")[1] == experts_bytes // ep
    assert not split.ranks[0].uncounted


@pytest.mark.slow
def test_a_mixture_of_experts_whose_first_layer_is_dense_is_found_and_split_where_it_has_experts():
    """Qwen2-MoE with ``mlp_only_layers=[0]``: layer 0 is a Llama-style MLP, layer 1 routes to 4 experts of width 32
    (their gate, up and down: 3 x 32 x 64 each) beside a shared expert; ep=2 splits layer 1's only."""
    family = FAMILIES["hf"]
    cfg = family.config(dict(family="hf", name="tiny", model_type="qwen2_moe", hidden_size=H, intermediate_size=FFN,
                             num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=2,
                             vocab_size=VOCAB, max_position_embeddings=SEQ, num_experts=4, num_experts_per_tok=2,
                             moe_intermediate_size=32, shared_expert_intermediate_size=32, mlp_only_layers=[0]))
    counts = {ep: count_layout(lambda: family.Model(cfg), Layout(dp=2, ep=ep, micro_batch_size=MICRO),
                               Workload(4 * MICRO, SEQ, torch.bfloat16)).ranks[0] for ep in (1, 2)}
    assert counts[1].params - counts[2].params == 4 * 3 * 32 * H // 2
    exchanges = [t.calls for k, t in counts[2].collectives.items() if (k.op, k.phase) == ("all_to_all", "forward")]
    assert exchanges == [3]  # one MoE layer's rows, weights and outputs


def test_qwen2_moes_shared_expert_gate_gets_its_whole_gradient_under_tp():
    """Qwen2-MoE scales its shared expert's output by a one-wide gate: under tp that output is a partial sum, so
    the gate's output's gradient is all-reduced (T values, bfloat16) as the routing weights' are, and the gate's
    weight gets its whole gradient on every rank. Backward at tp = 2: layer 0 (dense) all-reduces attention's and
    its MLP's input gradients, layer 1 attention's, the block's, the routing weights' (T k, bfloat16 here) and the
    gate's, then the head's input gradient: 7 calls."""
    family = FAMILIES["hf"]
    cfg = family.config(dict(family="hf", name="tiny", model_type="qwen2_moe", hidden_size=H, intermediate_size=FFN,
                             num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=2,
                             vocab_size=VOCAB, max_position_embeddings=SEQ, num_experts=4, num_experts_per_tok=2,
                             moe_intermediate_size=32, shared_expert_intermediate_size=32, mlp_only_layers=[0]))
    count = count_layout(lambda: family.Model(cfg), Layout(tp=2, micro_batch_size=MICRO),
                         Workload(MICRO, SEQ, torch.bfloat16))
    tokens = MICRO * SEQ
    hidden = tokens * H * 2
    assert collective(count, "all_reduce", "backward", "tp") == (7, 5 * hidden + tokens * 2 * 2 + tokens * 1 * 2)
    assert not count.ranks[0].uncounted


def deepseek():
    """A tiny DeepSeek-V3: latent attention (queries through a rank-32 latent, keys and values through a rank-16 one
    plus an 8-wide shared rotary key; heads of 16 + 8 for queries and keys, 16 for values), a dense first layer,
    then 4 routed experts of width 32 (2 a token) beside one shared expert of the same width."""
    family = FAMILIES["hf"]
    cfg = family.config(dict(family="hf", name="tiny", model_type="deepseek_v3", hidden_size=H, intermediate_size=FFN,
                             num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                             vocab_size=VOCAB, max_position_embeddings=SEQ, q_lora_rank=32, kv_lora_rank=16,
                             qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, first_k_dense_replace=1,
                             n_routed_experts=EXPERTS, num_experts_per_tok=TOP_K, n_shared_experts=1,
                             moe_intermediate_size=32, n_group=1, topk_group=1))
    return lambda: family.Model(cfg)


@pytest.mark.slow
def test_deepseeks_latent_attention_and_experts_are_counted_rank_by_rank():
    """Per layer: the query's down and up projections (2 T h 32, 2 T 32 4(16 + 8)), the keys' and values' latent and
    shared rotary key (2 T h (16 + 8)) and their up projection (2 T 16 4(16 + 16)), the scores of 24-wide queries and
    keys against 16-wide values (2 B 4 s^2 (24 + 16), through the memory-efficient kernel: no flash kernel takes
    unequal heads), the output (2 T 64 h); then layer 0's dense MLP (2 T 3 FFN h), layer 1's router (2 T h E), its
    k experts and its shared one (2 T (k + 1) 3 32 h); the head. The same at ep = 2, the routed experts split."""
    tokens = MICRO * SEQ
    attention = (2 * tokens * H * 32 + 2 * tokens * 32 * HEADS * 24 + 2 * tokens * H * 24 + 2 * tokens * 16 * HEADS * 32
                 + 2 * MICRO * HEADS * SEQ * SEQ * (24 + 16) + 2 * tokens * HEADS * 16 * H)
    moe = 2 * tokens * H * EXPERTS + 2 * tokens * (TOP_K + 1) * 3 * 32 * H
    counts = {ep: count_layout(deepseek(), Layout(dp=2, ep=ep, micro_batch_size=MICRO),
                               Workload(4 * MICRO, SEQ, torch.bfloat16)).ranks[0] for ep in (1, 2)}
    for count in counts.values():
        assert count.flops["forward"].matmul == 2 * attention + 2 * tokens * 3 * FFN * H + moe + 2 * tokens * H * VOCAB
        kernels = {sig.op for sig in count.trace.sigs if sig.kind == "attention"}
        assert kernels == {"aten._scaled_dot_product_efficient_attention"}, kernels
        assert not count.uncounted
    assert counts[1].params - counts[2].params == EXPERTS * 3 * 32 * H // 2
    # tp = 2: the down-projections to the latents (2 T h 32 and 2 T h 24) and the router run whole on each rank
    whole = 2 * tokens * H * 32 + 2 * tokens * H * 24
    split = count_layout(deepseek(), Layout(dp=2, tp=2, sequence_parallel=True, micro_batch_size=MICRO),
                         Workload(4 * MICRO, SEQ, torch.bfloat16)).ranks[0]
    router = 2 * tokens * H * EXPERTS
    assert split.flops["forward"].matmul == (2 * ((attention - whole) // 2 + whole) + tokens * 3 * FFN * H
                                             + (moe - router) // 2 + router + tokens * H * VOCAB)
    assert not split.uncounted


def test_tensor_parallelism_splits_each_expert_and_sums_the_blocks_output_over_tp():
    """At tp = 2 everything of a layer halves but the router, whole on each rank (2 T h E): attention as Llama's,
    each expert's gate and up rows and down columns. Forward, each layer all-reduces attention's output and the
    expert block's (T h, bfloat16), as the embedding does once and the vocabulary-parallel loss three times (T
    floats); backward, attention's input gradient, the block's and the routing weights' (T k, float32) each layer,
    and the head's input gradient. Under sequence parallelism each layer's two all-reduces become an all-gather
    of its input and a reduce-scatter of its output, the same bytes, and the experts split over ep as well."""
    tokens = MICRO * SEQ
    router = 2 * tokens * H * EXPERTS
    layer = 2 * tokens * 3 * H * H + 4 * tokens * SEQ * H + router + 2 * tokens * TOP_K * 3 * FFN * H
    split = moe_counted(dp=2, tp=2)
    assert split.ranks[0].flops["forward"].matmul == 2 * ((layer - router) // 2 + router) + tokens * H * VOCAB
    hidden = tokens * H * 2
    assert collective(split, "all_reduce", "forward", "tp") == (2 * 2 + 1 + 3, 2 * 2 * hidden + hidden + 3 * tokens * 4)
    assert collective(split, "all_reduce", "backward", "tp") == (2 * 3 + 1, 2 * (2 * hidden + tokens * TOP_K * 4)
                                                                 + hidden)
    both = moe_counted(dp=2, tp=2, ep=2, sequence_parallel=True)
    assert both.ranks[0].flops["forward"].matmul == split.ranks[0].flops["forward"].matmul
    for phase in ("forward", "backward"):
        assert collective(both, "all_gather", phase, "tp") == collective(both, "reduce_scatter", phase, "tp") == \
            (2 * 2 + 1, 5 * hidden)
    experts = 2 * EXPERTS * 3 * FFN * H  # two layers' stacked experts
    assert split.ranks[0].params - both.ranks[0].params == experts // 2 // 2
    assert not split.ranks[0].uncounted and not both.ranks[0].uncounted
    with pytest.raises(ConfigError) as err:  # experts 125 wide: tp = 2 cannot split them
        count_layout(mixtral(ffn=125), Layout(tp=2, micro_batch_size=MICRO), Workload(MICRO, SEQ, torch.bfloat16))
    assert err.value.key == "parallel.tp" and "experts' width" in str(err.value)


@pytest.mark.slow
def test_an_expert_parallel_stage_is_counted_alike_from_samples():
    layout = Layout(dp=4, ep=2, zero=3, recompute="full", micro_batch_size=MICRO)
    assert_counted_alike(*both_ways(mixtral(8), layout, Workload(4 * MICRO * 4, SEQ, torch.bfloat16)))


def test_fsdp_gathers_and_reduces_the_parameters_bytes():
    weights = 4 * decoder_params(2)
    full = counted(dp=2, zero=3)
    assert collective(full, "all_gather", "forward", "dp")[1] == weights
    assert collective(full, "all_gather", "backward", "dp")[1] == weights  # ZeRO-3 gathers again for backward
    assert collective(full, "reduce_scatter", "backward", "dp")[1] == weights
    kept = counted(dp=2, zero=2)  # ZeRO-2 keeps them gathered from forward to backward
    assert collective(kept, "all_gather", "forward", "dp")[1] == weights
    assert collective(kept, "all_gather", "backward", "dp") == (0, 0)
    memory = full.ranks[0].memory.at_peak
    assert memory["weights"] == weights // 2
    # AdamW's state: two moments in the weights' dtype, and a float32 step per tensor (2 per layer norm and linear,
    # 2 embeddings, the final norm's 2)
    tensors = 2 * (4 * 2 + 2 * 2) + 2 + 2
    assert memory["optimizer_state"] == 2 * weights // 2 + 4 * tensors


def test_plain_data_parallelism_all_reduces_every_gradient_once():
    assert collective(counted(dp=2), "all_reduce", "backward", "dp")[1] == 4 * decoder_params(2)


def test_a_pipeline_sends_activations_forward_and_gradients_back():
    whole, piped = counted(layers=2).ranks[0], counted(layers=2, pp=2)
    first, last = piped.ranks
    assert (first.layers, last.layers, first.stage, last.stage) == (1, 1, 0, 1)
    assert first.rank == 0 and last.rank == 1
    assert collective(piped, "send", "forward", "pp", 0) == (1, ACTIVATION)
    assert collective(piped, "recv", "backward", "pp", 0) == (1, ACTIVATION)
    assert collective(piped, "recv", "forward", "pp", 1) == (1, ACTIVATION)
    assert collective(piped, "send", "backward", "pp", 1) == (1, ACTIVATION)
    for phase in ("forward", "backward"):  # every matmul on one stage or the other
        assert first.flops[phase].matmul + last.flops[phase].matmul == whole.flops[phase].matmul
    assert (first.memory.in_flight, last.memory.in_flight) == (2, 1)  # 8 micro-batches, 2 stages (1F1B)
    assert first.params + last.params == decoder_params(2) + VOCAB * H  # the head keeps its own copy of the table


@pytest.mark.parametrize("layout, shards", [(dict(pp=2), 1), pytest.param(dict(pp=2, tp=2), 2, marks=pytest.mark.slow),
                                            pytest.param(dict(pp=2, dp=2, zero=1), 2, marks=pytest.mark.slow)])
def test_a_tied_table_split_over_stages_has_its_copies_gradients_summed_once_a_step(layout, shards):
    """The first stage's table and the last's head are copies of one tied table: their gradients (float32, the
    rank's shard of it under tp or ZeRO) are all-reduced between the two before the optimizer steps (Megatron-LM's
    embedding group); nothing where one stage holds both, nor for an untied head."""
    piped = counted(layers=2, **layout)
    for rank in (0, 1):
        assert collective(piped, "all_reduce", "optimizer", "embedding", rank) == (1, VOCAB * H * 4 // shards)
    assert collective(counted(layers=2), "all_reduce", "optimizer", "embedding") == (0, 0)
    untied = count_layout(decoder(2, tie_embeddings=False), Layout(pp=2, micro_batch_size=MICRO),
                          Workload(8 * MICRO, SEQ))
    assert collective(untied, "all_reduce", "optimizer", "embedding", 1) == (0, 0)


# ---- activations: Korthikanti et al. 2022, bytes a layer at 16-bit ----

S, B, HK, A = 128, 2, 256, 4  # h = 256, a = 4: 5as/h = 10
SBH = S * B * HK


@lru_cache(maxsize=None)
def saved_per_layer(kernel: str, **layout) -> float:
    """Bytes one layer saves for backward (3 layers less 2), in units of s*b*h, a bfloat16 decoder with dropout 0.1
    (the paper's layout: layer norms, GELU MLP of 4h, dropout after attention and the MLP)."""
    saved = []
    for layers in (2, 3):
        build = decoder(layers, d_model=HK, vocab_size=512, max_positions=S, dropout=0.1)
        with sdpa_kernel([SDPBackend.MATH if kernel == "math" else SDPBackend.FLASH_ATTENTION]):
            count = count_layout(build, Layout(micro_batch_size=B, **layout), Workload(B, S, torch.bfloat16))
        saved.append(count.ranks[0].memory.activations_bytes)
    return (saved[1] - saved[0]) / SBH


KORTHIKANTI = [
    # the paper's sbh(34 + 5as/h); CPU's math attention keeps q, k, v and the softmax in float32 (+6, +2as/h), has
    # no dropout on the scores (-3as/h: its mask and output), and CPU's dropout keeps its mask in the activations'
    # dtype, 2 bytes not 1 (+2)
    ("math", {}, 34 + 5 * A * S / HK, 2 + 6 + (2 - 3) * A * S / HK),
    # flash attention keeps no s x s tensor: the paper's figure with selective recomputation, sbh 34
    ("flash", {}, 34, 2),
    # selective recomputation of the math kernel's core: the same
    ("math", dict(recompute="selective"), 34, 2),
    # tensor parallelism: sbh(10 + 24/t) (selective), the masks replicated
    ("flash", dict(tp=2), 10 + 24 / 2, 2),
    # and sequence parallelism: 34 sbh / t; PyTorch's column-parallel linears (qkv, MLP's up) save the input they
    # gather, where Megatron-LM saves its shard and gathers it again in backward: 2(1 - 1/t) more each
    ("flash", dict(tp=2, sequence_parallel=True), 34 / 2, 2 / 2 + 2 * 2 * (1 - 1 / 2)),
    # full recomputation keeps the layer's input alone: 2 sbh
    ("flash", dict(recompute="full"), 2, 0),
]


@pytest.mark.parametrize("kernel, layout, paper, difference", [  # the paper's own cases fast, the CPU kernel's slow
    case if case[0] == "flash" else pytest.param(*case, marks=pytest.mark.slow) for case in KORTHIKANTI])
def test_activations_per_layer_are_korthikantis_with_what_pytorch_keeps_otherwise(kernel, layout, paper, difference):
    """Within 1 %: what the paper leaves out besides, the layer norms' mean and deviation (2 numbers a token each)
    and flash attention's log-sum-exp (one a token and head), under 0.1 s*b*h here."""
    assert saved_per_layer(kernel, **layout) == pytest.approx(paper + difference, rel=0.01)


# ---- a stage of identical layers counted from two samples (measure/rank_sample.py) ----

def assert_counted_alike(whole: LayoutCount, sampled: LayoutCount) -> None:
    """Every figure of each rank the same as counted whole, each memory peak too; its ops the same, in order."""
    for w, s in zip(whole.ranks, sampled.ranks, strict=True):
        assert w.sampled is None and s.sampled is not None and s.sampled[0] < s.sampled[1] < w.layers
        assert (s.layers, s.params, s.flops, s.collectives, s.memory, s.uncounted) == \
            (w.layers, w.params, w.flops, w.collectives, w.memory, w.uncounted)
        assert s.memory.peak_bytes == w.memory.peak_bytes and s.memory.at_peak == w.memory.at_peak
        assert s.trace.module_calls == w.trace.module_calls and set(s.trace.phases) == set(w.trace.phases)
        for phase in w.trace.phases:
            assert s.trace.ops(phase) == w.trace.ops(phase)


def both_ways(build, layout: Layout, work: Workload, optimizer=None) -> tuple[LayoutCount, LayoutCount]:
    extra = {} if optimizer is None else {"optimizer": optimizer}
    return (count_layout(build, layout, work, sample=False, **extra), count_layout(build, layout, work, **extra))


@pytest.mark.slow
def test_a_pipeline_rank_of_a_decoder_under_every_kind_of_parallelism_is_counted_alike_from_samples():
    # 12 layers, 6 a stage; ZeRO-3 (whose backward prefetches a layer ahead), tensor parallelism, full recomputation
    layout = Layout(dp=2, tp=2, pp=2, zero=3, recompute="full", micro_batch_size=MICRO)
    assert_counted_alike(*both_ways(decoder(12), layout, Workload(8 * MICRO * 2, SEQ)))


@pytest.mark.slow
def test_a_hugging_face_llama_with_weight_decay_adamw_is_counted_alike_from_samples():
    """The job's optimizer (weight decay: an op a parameter besides the _foreach ops over each group), FSDP's
    mixed precision, sequence parallelism and selective recomputation."""
    family = FAMILIES["hf"]
    cfg = family.config(dict(family="hf", name="tiny", model_type="llama", hidden_size=64, intermediate_size=128,
                             num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                             max_position_embeddings=SEQ))
    layout = Layout(dp=2, tp=2, zero=1, sequence_parallel=True, recompute="selective", micro_batch_size=2)
    decayed = lambda params: torch.optim.AdamW(param_groups(params), weight_decay=0.01)  # noqa: E731
    assert_counted_alike(*both_ways(lambda: family.Model(cfg), layout, Workload(8, SEQ, torch.float32,
                                                                                  torch.bfloat16), decayed))


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(), dict(dp=2, zero=0), dict(dp=2, zero=2), dict(dp=2, zero=3),
                                    dict(tp=2, sequence_parallel=True, recompute="selective"), dict(recompute="full"),
                                    dict(pp=4)])
def test_every_layout_of_a_decoder_is_counted_alike_from_samples(layout):
    lay = Layout(micro_batch_size=MICRO, **layout)
    whole, sampled = both_ways(decoder(20), lay, Workload(8 * MICRO * lay.dp, SEQ))
    assert_counted_alike(whole, sampled)
    cal = default_profile(accelerator("H100"))
    for w, s in zip(whole.ranks, sampled.ranks):
        for fused in (False, True):
            seconds = predict(w.trace, cal, fused=fused).seconds
            assert predict(s.trace, cal, fused=fused).seconds == pytest.approx(seconds, rel=1e-12)


@pytest.mark.slow
def test_an_interleaved_stage_is_counted_whole():
    count = count_layout(decoder(20), Layout(pp=2, vpp=2, micro_batch_size=MICRO), Workload(8 * MICRO, SEQ))
    assert [r.sampled for r in count.ranks] == [None, None]


def test_a_model_whose_layers_differ_is_counted_whole():
    def build():
        model = decoder(8)()
        model.blocks[5].attn.causal = False  # one bidirectional layer among causal ones
        return model
    count = count_layout(build, Layout(micro_batch_size=MICRO), Workload(8 * MICRO, SEQ))
    assert count.ranks[0].sampled is None and count.ranks[0].layers == 8


# ---- the process group ----

def test_the_fake_process_group_is_torn_down_and_never_taken_over():
    import sys

    hook = sys.excepthook
    counted(tp=2)
    assert not dist.is_initialized()
    assert sys.excepthook is hook  # each group wrapped it: a later traceback had a [rankN]: prefix per group counted
    with pytest.raises(ConfigError):  # a refusal inside the count still tears the group down
        count_layout(decoder(2), Layout(pp=4), Workload(8, SEQ))
    assert not dist.is_initialized()
    with fake_world(Layout(tp=2), 0):
        with pytest.raises(RuntimeError, match="exists already"):
            counted(tp=2, dp=2)
    assert not dist.is_initialized()


def test_a_count_leaves_its_step_and_memory_tracker_to_the_garbage_collector():
    """Issue 27: each count left some 4 MiB held (a layout search counts hundreds in one worker). The backward-segment
    hooks on the layers' inputs kept the step's pipe, and through it the memory tracker and the rank's model, alive
    after the step; the step removes them at its end."""
    import gc
    import weakref

    from flopsweep.measure import rank_step

    made = []
    init = rank_step.Pipe.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    rank_step.Pipe.__init__ = remember
    try:
        count_layout(decoder(2), Layout(dp=2, tp=2, zero=3, micro_batch_size=MICRO), Workload(4 * MICRO, SEQ))
    finally:
        rank_step.Pipe.__init__ = init
    gc.collect()
    assert made and all(ref() is None for ref in made)


@pytest.mark.parametrize("layout, needs", [
    (dict(pp=4, vpp=2), "needs parallel.vpp=1 (not 2)"),        # it also said "parallel.pp even (not 4)"
    (dict(pp=3), "needs parallel.pp even (not 3)"),             # and "parallel.vpp=1 (not 1)"
    (dict(pp=3, vpp=2), "needs parallel.pp even (not 3) and parallel.vpp=1 (not 2)"),
])
def test_dualpipes_refusal_names_only_what_is_amiss(layout, needs):
    with pytest.raises(ConfigError) as err:
        Layout(schedule="dualpipe", **layout).check()
    assert str(err.value).endswith(needs), str(err.value)


def test_sequence_parallelism_without_tensor_parallelism_is_refused():
    """tp=1 with sequence_parallel=true was counted as plain data parallelism and named 'seqpar'."""
    with pytest.raises(ConfigError) as err:
        Layout(sequence_parallel=True).check()
    assert err.value.key == "parallel.sequence_parallel" and "needs parallel.tp > 1" in str(err.value)
