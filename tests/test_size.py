"""Size and memory: parameter counts, bytes by dtype, optimizer state from the real optimizer, activations."""

import contextlib

import pytest

from flopsweep.build import build
from flopsweep.config import resolve
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.measure.size import measure_size
from tests.conftest import compose_config

TINY = ["model=gpt2_small", "model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.vocab_size=97",
        "model.max_positions=64", "batch.size=2", "batch.seq_len=16"]


def sized(*overrides, device="meta"):
    spec = resolve(compose_config(*TINY, f"device={device}", *overrides))
    built = build(spec)
    with MetaLikeCPU() if device == "meta" else contextlib.nullcontext():
        if spec.training:
            count_step(built.model, built.inputs, built.optimizer, context=built.autocast)
        size = measure_size(built.model, built.inputs, built.optimizer, built.autocast,
                            int8=spec.params_dtype == "int8", training=spec.training)
    return size, built


def test_tied_params_counted_once_and_embeddings():
    size, built = sized()
    d, V, P, L = 64, 97, 64, 2
    per_layer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert size.params == V * d + P * d + L * per_layer + 2 * d   # GPT-2 layout, head tied to the embedding
    assert size.params_embedding == V * d + P * d
    assert size.params_trainable == size.params


@pytest.mark.parametrize("dtype,bytes_per", [("float32", 4), ("bfloat16", 2), ("float16", 2)])
def test_weight_and_grad_bytes_follow_dtype(dtype, bytes_per):
    size, _ = sized(f"dtype={dtype}")
    assert size.weights_bytes == bytes_per * size.params
    assert size.grads_bytes == bytes_per * size.params


def test_int8_is_an_inference_build():
    size, built = sized("dtype=int8")
    matrices = [p for p in built.model.parameters() if p.dim() >= 2]
    vectors = [p for p in built.model.parameters() if p.dim() < 2]
    expected = sum(p.numel() + 4 * p.shape[0] for p in matrices) + sum(4 * p.numel() for p in vectors)
    assert size.weights_bytes == expected
    assert size.activations_bytes is None and size.grads_bytes == 0 and size.optimizer_state_bytes == 0


@pytest.mark.parametrize("optimizer,per_param", [("sgd", 0), ("sgd_momentum", 4), ("adamw", 8), ("adam", 8)])
def test_optimizer_state_from_the_real_optimizer(optimizer, per_param):
    size, built = sized(f"optimizer={optimizer}")
    tensors = len(list(built.model.parameters()))
    step_scalars = 4 * tensors if optimizer.startswith("adam") else 0  # Adam keeps a float32 step per tensor
    assert size.optimizer_state_bytes == per_param * size.params + step_scalars


def test_adafactor_state_is_factored():
    size, _ = sized("optimizer=adafactor")
    adamw, _ = sized("optimizer=adamw")
    assert 0 < size.optimizer_state_bytes < adamw.optimizer_state_bytes / 4


def test_activations_match_between_cpu_and_meta():
    cpu, _ = sized(device="cpu")
    meta, _ = sized(device="meta")
    assert cpu.activations_bytes == meta.activations_bytes > 0
    assert meta.train_peak_bytes == meta.static_bytes + meta.activations_bytes


def test_activations_scale_with_batch():
    one, _ = sized("batch.size=1")
    four, _ = sized("batch.size=4")
    assert 3.5 < four.activations_bytes / one.activations_bytes <= 4.0


@pytest.mark.parametrize("device,extra", [("meta", []), ("cpu", []), ("cpu", ["dtype=mixed_bf16"]),
                                          ("meta", ["model=t5_small", "model.n_layer=1"])])
def test_activations_recorded_while_counting_equal_a_separate_forward(device, extra):
    # a job records what autograd saves during the counted forward instead of running a second forward
    from omegaconf import OmegaConf

    from flopsweep.job import run_job

    cfg = compose_config(*TINY, f"device={device}", "measure.time=false", *extra)
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    separate, _ = sized(*extra, device=device)
    assert result.metrics["size/activations_bytes"] == separate.activations_bytes > 0
    assert result.metrics["size/train_peak_bytes"] == separate.train_peak_bytes
