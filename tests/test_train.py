"""Trainable-parameter modes (train/): what frozen weights and LoRA adapters change in the counted step and in
the sizes, checked against figures computed here from the layer shapes."""

import pytest
from omegaconf import OmegaConf

from flopsweep.config import resolve
from flopsweep.job import run_job

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


def test_inference_mode_counts_the_forward_only(compose_cfg):
    full = job(compose_cfg)
    inference = job(compose_cfg, "train=inference")
    assert inference["flops/forward"] == full["flops/forward"]
    assert inference.get("flops/backward") is None and inference.get("flops/optimizer") is None
    assert inference["flops/step"] == inference["flops/forward"] and inference.get("size/grads_bytes") is None


@pytest.mark.parametrize("overrides,message", [
    (["train.mode=half"], "train.mode='half': must be one of full, frozen_backbone, lora, inference"),
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
