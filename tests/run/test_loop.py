"""flopsweep.meter(model, optimizer) in a user's own training loop: the same record as the sweep path for the
same config, phases told apart without being told, timings from the later steps, and logging to MLflow."""

import contextlib
import re
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import flopsweep
from tests.helpers import REPO
from flopsweep.build.model import build
from flopsweep.config.resolve import resolve
from flopsweep.run.job import run_job

SAME = ["flops/forward", "flops/backward", "flops/optimizer", "flops/step", "flops/forward_elementwise",
        "flops/backward_elementwise", "macs/forward", "size/params", "size/params_trainable", "size/weights_bytes",
        "size/grads_bytes", "size/optimizer_state_bytes", "size/activations_bytes", "size/train_peak_bytes"]


@pytest.mark.parametrize("overrides", [
    ["model=gpt2_small", "model.n_layer=2", "model.d_model=32", "model.n_head=2", "batch.seq_len=16"],
    ["model=llama2_7b", "model.n_layer=2", "model.d_model=64", "model.n_head=8", "model.n_kv_head=2",
     "model.d_ff=160", "model.vocab_size=97", "batch.seq_len=16", "train=lora", "optimizer=sgd_momentum"],
])
def test_the_loop_api_counts_what_the_sweep_path_counts(compose_cfg, overrides):
    cfg = compose_cfg(*overrides, "batch.size=2", "device=cpu", "tracking=none", "measure.time=false")
    spec = resolve(cfg)
    swept = run_job(spec, OmegaConf.to_container(cfg, resolve=True))
    assert swept.status == "ok", swept.error

    built = build(spec)  # the same model, weights and batch, in a loop written by hand

    def step():
        built.model(**built.inputs).backward()
        built.optimizer.step()
        built.optimizer.zero_grad(set_to_none=True)

    step()  # a job counts a step as every later one: SGD's momentum is a copy at the first, 3 FLOPs a weight after
    meter = flopsweep.meter(built.model, built.optimizer, batch_size=2, seq_len=16)
    with meter:
        step()
    result = meter.result()
    for key in SAME:
        assert result.metrics[key] == swept.metrics[key], key
    assert result.breakdown["ops"] == swept.breakdown["ops"]
    assert result.breakdown["modules"] == swept.breakdown["modules"]
    rows = result.breakdown["profile"]
    assert rows[0]["forward_flops"] == swept.metrics["flops/forward"]


def tiny_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def test_phases_clipping_and_timed_steps():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = flopsweep.meter(model, optimizer, batch_size=8)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    for step in range(5):
        with meter if step >= 1 else contextlib.nullcontext():
            loss = torch.nn.functional.mse_loss(model(x), y)  # the loss outside the model: still forward
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # after backward, outside the model
            optimizer.step()
            optimizer.zero_grad()
    m = meter.result().metrics
    assert m["flops/forward"] == 2 * 8 * (16 * 32 + 32 * 4)
    # weight gradients of both layers, the input gradient of the second only (x needs none)
    assert m["flops/backward"] == 2 * 8 * (16 * 32 + 32 * 4) + 2 * 8 * 32 * 4
    n = sum(p.numel() for p in model.parameters())
    # plain SGD: one multiply-add per parameter (2 FLOPs); clipping's per-parameter scale is counted with it
    assert m["flops/optimizer"] > 2 * n
    assert m["flops/forward_elementwise"] < 8 * (32 + 4) * 50  # the loss and ReLU, not the clipping
    assert m["size/grads_bytes"] == 4 * n
    timing = meter.result().info["timing"]
    assert timing["method"] == "loop" and timing["repeats"] == 3  # steps 2, 3 and 4
    for key in ("time/forward_s", "time/backward_s", "time/optimizer_s"):
        assert 0 < m[key] < m["time/step_s"], key
    # the phases are inside their step, step by step (a sum of medians need not be below the median of sums)
    phases = zip(meter.samples["forward"], meter.samples["backward"], meter.samples["optimizer"])
    assert all(sum(parts) <= step for parts, step in zip(phases, meter.samples["step"], strict=True))


def test_inference_step_and_errors():
    model = tiny_mlp()
    meter = flopsweep.meter(model)
    with pytest.raises(RuntimeError, match="no step"):
        meter.result()
    with meter, torch.no_grad():
        model(torch.randn(3, 16))
    m = meter.result().metrics
    assert m["flops/forward"] == 2 * 3 * (16 * 32 + 32 * 4) and "flops/backward" not in m
    assert "size/grads_bytes" not in m and "time/step_s" not in m


@pytest.mark.slow  # 8 s: a new interpreter that trains and logs
def test_example_script_logs_to_mlflow(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "train_loop.py"), "--steps", "6",
                          "--profile-step", "3", "--log"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "By depth" in out.stdout and "time/step_s" in out.stdout
    run_id = out.stdout.split("logged: run ")[1].split()[0]
    df = flopsweep.load_runs(experiment="train-loop", store_dir=tmp_path / "outputs")
    assert list(df["run_id"]) == [run_id]
    assert df["flops/forward"].iloc[0] > 0 and df["time/step_s"].iloc[0] > 0


@pytest.mark.parametrize("kwargs,said", [({"batch_size": 0}, "batch_size=0: must be an integer >= 1"),
                                         ({"seq_len": -1}, "seq_len=-1: must be an integer >= 1, or None")])
def test_a_meter_refuses_a_batch_or_sequence_it_cannot_divide_by(kwargs, said):
    """batch_size=0 and seq_len=-1 were taken, and the record said 0 tokens a second and config/seq_len -1."""
    from flopsweep.core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"^{re.escape(said)}"):
        flopsweep.meter(torch.nn.Linear(4, 4), **kwargs)
