"""Size and memory: parameter counts, bytes by dtype, optimizer state from the real optimizer, activations."""

import contextlib
import gc
import weakref

import pytest
import torch

from flopsweep.build.model import build
from flopsweep.config.resolve import resolve
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.measure.size import SavedActivations, measure_size
from tests.helpers import compose_config

TINY = ["model=gpt2_small", "model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.vocab_size=97",
        "model.max_positions=64", "batch.size=2", "batch.seq_len=16"]


def sized(*overrides, device="meta"):
    spec = resolve(compose_config(*TINY, f"device={device}", *overrides))
    built = build(spec)
    with MetaLikeCPU() if device == "meta" else contextlib.nullcontext():
        if spec.training:
            count_step(built.model, built.inputs, built.optimizer, context=built.autocast)
        size = measure_size(built.model, built.inputs, built.optimizer, built.autocast,
                            int8=spec.dtype.int8, training=spec.training)
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


@pytest.mark.parametrize("workload", ["inference", "generate"])
def test_an_int8_jobs_peak_and_decode_read_hold_its_weights_as_stored(tmp_path, workload):
    """dtype=int8 sized its weights as stored (a byte and a row's scale) but simulated its peak, and read its decode
    step, with them as float32: 4x the weights in the peak the memory check uses and in serve's roofline."""
    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job

    cfg = compose_config(*TINY, "device=meta", "tracking=none", "dtype=int8", f"workload={workload}",
                         "generate.new_tokens=8")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    d, V, P, L = 64, 97, 64, 2  # GPT-2 layout: its matrices stored as int8 with a float32 scale a row
    matrices = [(V, d), (P, d)] + L * [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]
    vectors = L * (2 * d + 3 * d + d + 2 * d + 4 * d + d) + 2 * d
    stored = sum(rows * cols + 4 * rows for rows, cols in matrices) + 4 * vectors
    assert result.metrics["size/weights_bytes"] == stored
    assert result.breakdown["memory_at_peak"]["weights"] == stored
    if workload == "generate":  # the whole model but the position table, of which a decode step reads one row (the
        # batch's sequences are at one position), an int8 row with its scale
        assert result.metrics["size/decode_weights_read_bytes"] == stored - (P * d + 4 * P) + (d + 4)


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

    from flopsweep.run.job import run_job

    cfg = compose_config(*TINY, f"device={device}", "measure.time=false", *extra)
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    separate, _ = sized(*extra, device=device)
    assert result.metrics["size/activations_bytes"] == separate.activations_bytes > 0
    assert result.metrics["size/train_peak_bytes"] == separate.train_peak_bytes


class _Sum(torch.nn.Module):
    """One linear layer and a sum: a loss whose memory can be told from the shapes."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = torch.nn.Linear(n_in, n_out, bias=False)

    def forward(self, x):
        return self.linear(x).sum()


def test_inference_step_memory_at_its_peak_by_hand():
    from flopsweep.measure.size import simulate_step

    model = _Sum(4, 1000).to("meta")
    step = simulate_step(model, {"x": torch.empty(8, 4, device="meta")}, None, contextlib.nullcontext,
                         training=False)
    # alive at the peak: the weight, the batch, the 8x1000 output and then its sum (float32)
    assert step.at_peak == {"weights": 4 * 4000, "buffers": 0, "gradients": 0, "optimizer_state": 0,
                            "batch": 4 * 32, "activations": 0, "kv_cache": 0, "temporary": 4 * 8000 + 4}
    assert step.peak_bytes == sum(step.at_peak.values()) and step.activations_bytes is None


def test_a_step_whose_peak_is_the_optimizer_holds_every_gradient_and_the_state():
    """Batch 1 through a 512x512 layer: the activations are tiny, so the peak comes in AdamW's step, with every
    gradient alive (labelled as such after backward, though created in it) and the moments made before."""
    from flopsweep.measure.size import optimizer_state_bytes, simulate_step

    model = _Sum(512, 512).to("meta")
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    inputs = {"x": torch.empty(1, 512, device="meta")}
    simulate_step(model, inputs, optimizer, contextlib.nullcontext)  # creates the state, as the first step does
    state = optimizer_state_bytes(optimizer)
    assert state == 2 * 4 * 512 * 512 + 4  # two float32 moments and the step count
    step = simulate_step(model, inputs, optimizer, contextlib.nullcontext)
    at = step.at_peak
    assert at["weights"] == at["gradients"] == 4 * 512 * 512 and at["optimizer_state"] == state
    assert at["batch"] == 4 * 512 and at["activations"] == 0  # the layer saved only the batch (and its weight)
    assert at["temporary"] > 0 and step.peak_bytes == sum(at.values())
    assert model.linear.weight.grad is None  # cleared after, as between steps


@pytest.mark.parametrize("batch", [2, 32])
def test_a_meta_job_reports_its_step_peak_split_by_what_is_alive(batch):
    """At batch 2 the weights and AdamW dominate: the peak is in the optimizer step, every gradient alive and no
    activation (freed by backward); at batch 32 the activations dominate and the peak comes before they go."""
    import json

    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job
    from flopsweep.core.text import stats_text

    cfg = compose_config(*TINY, f"batch.size={batch}", "device=meta", "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    m, at = result.metrics, result.breakdown["memory_at_peak"]
    assert m["size/step_peak_bytes"] == sum(at.values()) and m["size/temporary_bytes"] == at["temporary"] > 0
    assert at["weights"] == m["size/weights_bytes"] and at["optimizer_state"] == m["size/optimizer_state_bytes"]
    assert at["batch"] == 2 * batch * 16 * 8  # input ids and targets, int64
    if batch == 2:
        assert m["size/activations_bytes"] < m["size/weights_bytes"]
        assert at["gradients"] == m["size/grads_bytes"] and at["activations"] == 0
    else:
        assert m["size/activations_bytes"] > 4 * m["size/weights_bytes"]
        assert 0 < at["activations"] <= m["size/activations_bytes"] and at["gradients"] < m["size/grads_bytes"]
    assert "memory alive at the simulated step's peak" in stats_text(result)
    json.dumps(result.to_dict())  # plain numbers: it goes to result.json


class _ForwardOnce(torch.nn.Linear):
    """A user model that runs once and refuses a second forward: the count stands, the simulated step cannot."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("this model runs once")
        return super().forward(x)


def test_a_step_that_cannot_be_simulated_loses_nothing_counted():
    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job

    cfg = compose_config("model=custom", "model._target_=tests.measure.test_size._ForwardOnce", "+model.in_features=8",
                         "+model.out_features=4", "model.inputs=[{name: x, shape: [batch, 8]}]", "device=meta",
                         "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    assert result.metrics["flops/forward"] == 2 * 8 * 4 and result.metrics["size/params"] == 8 * 4 + 4
    assert result.info["memory_at_peak"] == "not simulated: RuntimeError: this model runs once"
    assert "memory_at_peak" not in result.breakdown and "size/step_peak_bytes" not in result.metrics


class _FailsAfterTanh(torch.nn.Module):
    """tanh saves its own output for backward; then the forward runs out of memory."""

    def __init__(self, alive: list):
        super().__init__()
        self.linear, self.alive = torch.nn.Linear(32, 32), alive

    def forward(self, x):
        h = torch.tanh(self.linear(x))
        self.alive.append(weakref.ref(h))
        raise torch.OutOfMemoryError("pretend: the next layer did not fit")


def test_a_forward_that_fails_while_activations_are_recorded_leaves_none_alive():
    # found on an H200: after a job ran out of memory in its forward, 94 GiB of its activations stayed allocated and
    # every later job in the process had that much less (a saved tensor held itself through its grad_fn)
    alive = []
    model = _FailsAfterTanh(alive)
    with pytest.raises(torch.OutOfMemoryError):
        count_step(model, {"x": torch.randn(4, 32)}, None, context=lambda: SavedActivations(model))
    gc.collect()
    assert len(alive) == 1 and alive[0]() is None


def test_a_model_is_made_in_its_dtype_not_in_float32_first(monkeypatch):
    # found on an H200: a bf16 job's measured peak was its build, every weight made in float32 and then cast
    made = []
    original = torch.nn.Linear.reset_parameters

    def record(self):
        made.append(self.weight.dtype)
        original(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", record)
    _, built = sized("dtype=bfloat16", device="cpu")
    assert made and set(made) == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # put back
