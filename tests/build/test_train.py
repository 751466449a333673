"""Trainable-parameter modes (train/): what frozen weights and LoRA adapters change in the counted step and in
the sizes, checked against figures computed here from the layer shapes."""

import pytest
from omegaconf import OmegaConf

from flopsweep.config.resolve import resolve
from flopsweep.run.assemble import closed_forms
from flopsweep.run.job import run_job

# LLaMA-style, untied head, grouped-query heads: d=64, 8 heads of 8, 2 KV heads, SwiGLU d_ff=160, vocab 97
D, KV, FF, V, L, B, S = 64, 2 * 8, 160, 97, 2, 2, 16
TOKENS = B * S
TINY = ["model=llama2_7b", f"model.d_model={D}", f"model.n_layer={L}", "model.n_head=8", "model.n_kv_head=2",
        f"model.d_ff={FF}", f"model.vocab_size={V}", "model.max_positions=64", f"batch.size={B}",
        f"batch.seq_len={S}", "device=meta", "tracking=none"]
LINEARS = {"qkv": (D, D + 2 * KV), "out": (D, D), "gate": (D, FF), "up": (D, FF), "down": (FF, D)}  # (in, out)


def job(compose_cfg, *overrides):
    cfg = compose_cfg(*TINY, *overrides)
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    return result.metrics


def block_forward_matmul() -> int:
    return sum(2 * TOKENS * i * o for i, o in LINEARS.values()) + 4 * B * S * S * D  # linears + QK^T, PV


def test_frozen_head_only_backward_is_the_heads_weight_gradient(compose_cfg):
    m = job(compose_cfg, "train=frozen_backbone")
    # nothing before the head needs a gradient: backward is the head's weight gradient alone
    assert m["flops/backward"] == 2 * TOKENS * D * V
    assert m["size/params_trainable"] == D * V
    assert m["size/optimizer_state_bytes"] == 2 * 4 * D * V + 4  # AdamW: two fp32 moments and a step count
    assert m["flops/optimizer"] == 12 * D * V + 1             # 12 per parameter, 1 step count per tensor


def test_frozen_backbone_with_last_layer(compose_cfg):
    full = job(compose_cfg)
    last = job(compose_cfg, "train=frozen_backbone", "train.trainable_layers=1")
    # the head and the last block train: weight and input gradients for them, nothing for the first block
    assert last["flops/backward"] == 2 * (2 * TOKENS * D * V) + 2 * block_forward_matmul()
    assert full["flops/forward"] == last["flops/forward"]
    saved = full["flops/backward"] - last["flops/backward"]
    assert saved == 2 * block_forward_matmul()  # the first block's weight and input gradients
    per_block = sum(i * o for i, o in LINEARS.values()) + 2 * D  # linears, no bias, and its two RMSNorms
    assert last["size/params_trainable"] == D * V + per_block  # the head and the last block


@pytest.mark.parametrize("targets", [["qkv", "out"], ["qkv", "out", "gate", "up", "down"]])
def test_lora_parameters_and_forward_flops_are_the_closed_form(compose_cfg, targets):
    r = 4
    full = job(compose_cfg)
    lora = job(compose_cfg, "train=lora", f"train.rank={r}", f"train.targets=[{','.join(targets)}]")
    adapters = L * sum(r * (LINEARS[t][0] + LINEARS[t][1]) for t in targets)  # A: r x in, B: out x r
    assert lora["size/params_trainable"] == adapters
    assert lora["size/params"] == full["size/params"] + adapters
    # each adapter adds x A^T, then B^T: r*(in + out) multiply-adds per token
    assert lora["flops/forward"] - full["flops/forward"] == 2 * TOKENS * adapters
    assert lora["flops/optimizer"] == 12 * adapters + 2 * L * len(targets)
    assert lora["size/optimizer_state_bytes"] == 8 * adapters + 4 * 2 * L * len(targets)
    assert lora["size/grads_bytes"] == 4 * adapters
    assert lora["flops/backward"] < full["flops/backward"]  # no weight gradients for the frozen matrices


@pytest.mark.parametrize("targets", [["qkv", "out"], ["qkv", "out", "gate", "up", "down"]])
def test_dora_is_lora_plus_a_magnitude_per_output_and_the_product_for_the_norm(compose_cfg, targets):
    r = 4
    adapt = ["train.rank=4", f"train.targets=[{','.join(targets)}]"]
    lora, dora = job(compose_cfg, "train=lora", *adapt), job(compose_cfg, "train=dora", *adapt)
    outputs = L * sum(LINEARS[t][1] for t in targets)
    assert dora["size/params_trainable"] == lora["size/params_trainable"] + outputs  # one magnitude per output
    # each forward forms B A (out x r x in) for the norms of W + (alpha/r) B A: 2*r*in*out per adapted linear
    assert dora["flops/forward"] - lora["flops/forward"] == L * sum(2 * r * i * o for i, o in
                                                                     (LINEARS[t] for t in targets))
    assert dora["flops/backward"] == lora["flops/backward"]  # the norm is a constant for backward: the same matmuls
    assert dora["size/optimizer_state_bytes"] == lora["size/optimizer_state_bytes"] + 8 * outputs + 4 * L * len(targets)
    assert dora.get("flops/forward_analytic") is None  # no closed form claimed for DoRA


def test_dora_layer_is_the_papers_weight_and_starts_as_the_base():
    import torch

    from flopsweep.models.layers import DoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = DoRALinear(base, rank=2, alpha=4.0)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), base(x))  # B = 0 and m = ||W||: the base layer's output
    with torch.no_grad():
        layer.lora_b.normal_()
        layer.magnitude.mul_(torch.linspace(0.5, 1.5, 5))
    v = base.weight + 2.0 * layer.lora_b @ layer.lora_a                # alpha / r = 2
    expected = x @ (layer.magnitude[:, None] * v / v.norm(dim=1, keepdim=True)).T + base.bias
    torch.testing.assert_close(layer(x), expected)
    layer(x).sum().backward()
    assert base.weight.grad is None and layer.magnitude.grad is not None and layer.lora_a.grad is not None


def test_inference_mode_counts_the_forward_only(compose_cfg):
    full = job(compose_cfg)
    inference = job(compose_cfg, "workload=inference")
    assert inference["flops/forward"] == full["flops/forward"]
    assert inference.get("flops/backward") is None and inference.get("flops/optimizer") is None
    assert inference["flops/step"] == inference["flops/forward"] and inference.get("size/grads_bytes") is None


def test_no_optimizer_counts_forward_and_backward_and_holds_no_state(compose_cfg):
    full = job(compose_cfg)
    bare = job(compose_cfg, "optimizer=none")
    assert bare["flops/forward"] == full["flops/forward"] and bare["flops/backward"] == full["flops/backward"]
    assert bare.get("flops/optimizer") is None and bare["flops/step"] == full["flops/step"] - full["flops/optimizer"]
    assert bare["size/grads_bytes"] == full["size/grads_bytes"] > 0 and bare["size/optimizer_state_bytes"] == 0
    assert full["size/optimizer_state_bytes"] > 0


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_an_adapter_on_multihead_attentions_output_projection_is_refused_naming_it(compose_cfg, mode):
    """nn.MultiheadAttention reads out_proj.weight itself: the adapter's forward never ran and the job failed as
    'the model refused its inputs: AttributeError: 'LoRALinear' object has no attribute 'weight''."""
    cfg = compose_cfg("model=custom_example", f"train={mode}", "train.targets=[out_proj,linear1]", "device=meta",
                      "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.error == ("train.targets=['linear1', 'out_proj']: net.self_attn.out_proj is nn.MultiheadAttention's "
                            "output projection, whose weight the attention reads itself (no adapter's forward runs): "
                            "leave it out of the targets"), result.error


@pytest.mark.parametrize("overrides,message", [
    (["train.mode=half"], "train.mode='half': must be one of full, frozen_backbone, lora, dora"),
    (["train=lora", "train.rank=0"], "train.rank=0: must be an integer >= 1"),
    (["train=lora", "train.targets=[qkv,attn]"], "train.targets=['attn']: name no linear layer"),
    (["train=frozen_backbone", "train.trainable_layers=3"], "train.trainable_layers=3: the model has 2 blocks"),
    (["train=lora", "dtype=int8"], "train.mode='lora': int8 weights are an inference build"),
])
def test_bad_train_settings_name_the_key(compose_cfg, overrides, message):
    cfg = compose_cfg(*TINY, *overrides)
    try:
        result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
        error = result.error
    except Exception as err:  # resolve raises ConfigError for what it can check before building
        error = str(err)
    assert error.startswith(message), error


# The closed forms of the decoder (flopsweep/models/decoder.py) against the counted step: LoRA for several ranks
# and target sets, on the GQA/SwiGLU config above, with one KV head per query head, and GPT-2-style (GELU, biases,
# learned positions, tied head); full and frozen_backbone through the same backward walk.
MHA = ["model.n_kv_head=8"]
GPT2 = ["model=gpt2_small", "model.n_head=4", "model.n_kv_head=null", "model.d_ff=null"]  # after TINY: it wins


@pytest.mark.parametrize("model,train", [
    ([], ["train=lora", "train.rank=8", "train.targets=[qkv,out]"]),
    ([], ["train=lora", "train.rank=16", "train.targets=[qkv,out,gate,up,down]"]),
    ([], ["train=lora", "train.rank=3", "train.targets=[out]"]),
    ([], ["train=lora", "train.rank=4", "train.targets=[down,lm_head]"]),
    (MHA, ["train=lora", "train.rank=2", "train.targets=[up]"]),
    (MHA, ["train=lora", "train.rank=5", "train.targets=[gate,qkv]"]),
    (GPT2, ["train=lora", "train.rank=4", "train.targets=[qkv,lm_head]"]),
    (GPT2, ["train=lora", "train.rank=6", "train.targets=[out,up,down]"]),
    ([], []), (GPT2, []),
    ([], ["train=frozen_backbone"]), (GPT2, ["train=frozen_backbone"]),  # tied: the embedding trains with the head
    ([], ["train=frozen_backbone", "train.trainable_layers=1"]),
    (GPT2, ["train=frozen_backbone", "train.trainable_layers=1"]),
], ids=lambda overrides: " ".join(overrides) or "-")
def test_counted_step_is_the_decoder_closed_form(compose_cfg, model, train):
    from flopsweep.models import decoder

    spec = resolve(compose_cfg(*TINY, *model, *train))
    m = job(compose_cfg, *model, *train)
    forward = decoder.analytic_forward_flops(spec.model, spec.batch, spec.train)
    backward = decoder.analytic_backward_flops(spec.model, spec.batch, spec.train)
    assert (m["flops/forward"], m["flops/backward"]) == (forward, backward)
    assert (m["flops/forward_analytic"], m["flops/backward_analytic"]) == (forward, backward)
    if spec.train.mode == "lora":
        assert m["size/params_trainable"] == decoder.lora_params(spec.model, spec.train)


def test_lora_backward_closed_form_stops_at_the_first_adapter(compose_cfg):
    from flopsweep.models import decoder

    r = 8
    spec = resolve(compose_cfg(*TINY, "train=lora", f"train.rank={r}", "train.targets=[qkv,out]"))
    qkv_in, qkv_out = LINEARS["qkv"]
    attention = 8 * B * S * S * D                                            # dQ, dK, dV, dP
    mlp_inputs = sum(2 * TOKENS * i * o for name, (i, o) in LINEARS.items() if name in ("gate", "up", "down"))
    out = 2 * TOKENS * D * D + 2 * TOKENS * r * (2 * D + 2 * D)             # its input gradient, through A too
    adapter_qkv = 2 * TOKENS * r * (2 * qkv_out + qkv_in)                    # B's weight and input, A's weight
    first = adapter_qkv + attention + out + mlp_inputs                      # no gradient into the first qkv
    second = adapter_qkv + 2 * TOKENS * qkv_in * (qkv_out + r) + attention + out + mlp_inputs
    assert decoder.analytic_backward_flops(spec.model, spec.batch, spec.train) == first + second + 2 * TOKENS * D * V
    assert decoder.lora_params(spec.model, spec.train) == L * r * (qkv_in + qkv_out + 2 * D)
    full = resolve(compose_cfg(*TINY))
    assert decoder.analytic_backward_flops(full.model, full.batch, full.train) == \
        2 * decoder.analytic_forward_flops(full.model, full.batch, full.train)
    inference = resolve(compose_cfg(*TINY, "workload=inference"))  # a forward pass: no backward's closed form
    assert closed_forms(inference) == (decoder.analytic_forward_flops(full.model, full.batch, full.train), None)


@pytest.mark.parametrize("overrides,note", [
    (["train=full", "train.rank=16"], "train.rank=16 changes nothing with train.mode=full (lora and dora read it)"),
    (["train=lora", "train.trainable_layers=2"],
     "train.trainable_layers=2 changes nothing with train.mode=lora (frozen_backbone reads it)"),
    (["workload=inference", "train.alpha=4"], "train.alpha=4.0 changes nothing with workload=inference (lora and dora "
                                              "read it)"),
    (["train=lora", "train.rank=16"], None),
    (["generate.new_tokens=5"], "generate.new_tokens=5 changes nothing with workload=train (workload=generate reads "
                                "it)"),
    (["dtype=int8"], "dtype=int8: weights that do not train, measured forward only (workload=inference's pass)"),
    (["dtype=int8", "workload=inference"], None),
    (["batch.image_size=64"], "batch.image_size=64 changes nothing with llama2_7b, which does not read it"),
    (["measure.timing=per_block"], "measure.timing=per_block changes nothing on device=meta, where nothing is timed"),
])
def test_a_train_key_the_mode_does_not_read_is_said_to_change_nothing(compose_cfg, overrides, note):
    """A key of another mode, or of a generation, was ignored without a word (train=full train.rank=16 counted a
    full step; generate.new_tokens=5 a training step)."""
    spec = resolve(compose_cfg(*TINY, "device=meta", *overrides))
    assert spec.notes == ((note,) if note else ())
