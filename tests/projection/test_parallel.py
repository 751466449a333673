"""Parallelism arithmetic: per-device figures for dp × tp × pp and each ZeRO stage, worked by hand from the
conventions of flopsweep.projection.parallel (never from its code), the pipeline bubble in the projection, and one-line
errors; then the real ``flopsweep-project`` on a measured job."""

import json

import pytest

from flopsweep.core import metrics as M
from flopsweep.core.errors import ConfigError
from flopsweep.projection.parallel import Parallelism, per_device
from flopsweep.projection.budget import budget_flops
from flopsweep.projection.training import Hardware, Plan, PerToken, project
from flopsweep.core.result import Result

# a round measured step: global batch 64 x 128 tokens, 1e9 parameters in 4 GB of fp32 weights, 4 GB of gradients,
# 8 GB of AdamW state, 640 GB of activations, 1 MB of buffers; 3e15 FLOPs forward + backward, 1.2e10 optimizer
STEP = {M.BATCH_SIZE: 64, M.SEQ_LEN: 128, M.FLOPS_FORWARD: 1e15, M.FLOPS_BACKWARD: 2e15, M.FLOPS_OPTIMIZER: 1.2e10,
        M.PARAMS: 1e9, M.WEIGHTS_BYTES: 4e9, M.BUFFERS_BYTES: 1e6, M.GRADS_BYTES: 4e9, M.OPTIMIZER_STATE_BYTES: 8e9,
        M.ACTIVATIONS_BYTES: 6.4e11}
NO_BUFFERS = {**STEP, M.BUFFERS_BYTES: 0}


def measured(metrics=STEP) -> Result:
    return Result("ok", None, {"model": {"name": "one_b", "family": "encoder"}}, dict(metrics))


# dp 4 x tp 2 x pp 2 = 16 GPUs, default m = pp = 2 micro-batches of 8 sequences; written out for each stage:
# weights 4e9 / 4 (tp·pp), / 4 more (dp) at ZeRO-3; gradients the same from ZeRO-2; state 8e9 / 4, / 4 from ZeRO-1;
# buffers 1e6 / 4 always; activations 6.4e11 · min(2, 2) / (4 · 2 · 2 · 2) = 4e10
@pytest.mark.parametrize("zero,weights,grads,state", [
    (0, 1e9, 1e9, 2e9),
    (1, 1e9, 1e9, 5e8),
    (2, 1e9, 2.5e8, 5e8),
    (3, 2.5e8, 2.5e8, 5e8),
])
def test_each_zero_stage_by_hand(zero, weights, grads, state):
    split = per_device(measured(), Parallelism(dp=4, tp=2, pp=2, zero=zero))
    assert split.params.device == pytest.approx(2.5e8)       # the tp·pp shard, whatever ZeRO stores
    assert split.weights_bytes.device == pytest.approx(weights)
    assert split.grads_bytes.device == pytest.approx(grads)
    assert split.optimizer_state_bytes.device == pytest.approx(state)
    assert split.buffers_bytes.device == pytest.approx(2.5e5)
    assert split.activations_bytes.device == pytest.approx(4e10)
    assert split.memory_bytes.device == pytest.approx(weights + grads + state + 2.5e5 + 4e10)
    # forward + backward split 16 ways; the optimizer step 4 ways (tp·pp), 16 ways once ZeRO shards the update
    assert split.flops.device == pytest.approx(3e15 / 16 + 1.2e10 / (4 if zero == 0 else 16))
    assert split.memory_bytes.whole == pytest.approx(4e9 + 1e6 + 4e9 + 8e9 + 6.4e11)
    assert split.bubble == pytest.approx(1 / 3)                # (pp - 1) / (m + pp - 1) = 1 / 3


def test_the_table_says_what_a_device_holds_of_the_parameters_it_computes_with_under_zero_3():
    """ZeRO-3 keeps 1/dp of a device's 250M parameters (the tp·pp shard of 1e9) and gathers them to compute."""
    from flopsweep.projection.parallel import table

    rows = {zero: next(line for line in table(per_device(measured(), Parallelism(dp=4, tp=2, pp=2, zero=zero)))
                       .splitlines() if line.startswith("parameters")) for zero in (2, 3)}
    assert rows[3].split() == ["parameters", "(ZeRO-3:", "a", "device", "holds", "62.5M,", "gathers", "the", "rest)",
                               "1B", "250M"]
    assert rows[2].split() == ["parameters", "1B", "250M"]


def test_a_layout_counted_rank_by_rank_fits_or_not_by_its_peak_not_the_even_split():
    """A train projection with a layout counted rank by rank warned from the even split (62.1 GiB a device) below a
    footer saying 44.2 GiB a GPU at the counted peak: the table now shows the peak and warns from it alone."""
    import dataclasses

    from flopsweep.projection.parallel import table

    # dp 4 x tp 2 x pp 2, ZeRO-3: 2.5e8 + 2.5e5 + 2.5e8 + 5e8 + 4e10 = 4.100025e10 B a device (38.2 GiB) split evenly
    split = per_device(measured(), Parallelism(dp=4, tp=2, pp=2, zero=3))
    assert split.memory_bytes.device == pytest.approx(4.100025e10)
    assert table(split, 30 * 2**30).splitlines()[-1] == (
        "warning: a device needs 38.2 GiB, more than the 30 GiB of one GPU: more GPUs, more sharding, or a smaller "
        "batch, or more, smaller micro-batches (--micro-batches)")
    low = table(dataclasses.replace(split, counted_peak_bytes=28 * 2**30), 30 * 2**30).splitlines()
    assert low[-1].split() == ["memory", "at", "the", "peak,", "counted", "rank", "by", "rank", "28", "GiB"]
    high = table(dataclasses.replace(split, counted_peak_bytes=45 * 2**30), 40 * 2**30).splitlines()
    assert high[-1] == ("warning: a device needs 45 GiB at the peak, more than the 40 GiB of one GPU: more GPUs, more "
                        "sharding, or a smaller batch, or more, smaller micro-batches (--micro-batches)")
    one_stage = per_device(measured(), Parallelism(dp=8, zero=3))
    assert table(one_stage, 2**30).splitlines()[-1].endswith("more GPUs, more sharding, or a smaller batch")


LAYOUTS = [(1, 1, 1, None), (8, 1, 1, None), (1, 4, 1, None), (1, 1, 4, None), (2, 2, 2, None), (4, 8, 2, None),
           (2, 1, 4, 8), (2, 2, 4, 2), (1, 1, 8, 32), (16, 1, 1, 4)]


@pytest.mark.parametrize("dp,tp,pp,m", LAYOUTS)
def test_each_zero_stage_shards_one_more_kind_and_a_replica_holds_the_whole(dp, tp, pp, m):
    """Properties of every layout, not its formulas: without ZeRO the tp·pp devices of a replica hold every weight,
    gradient and optimizer state once; each stage then shards one more kind over dp (state, then gradients, then
    weights), after which that kind summed over all devices is the whole; a stage never holds more than the one
    before, nor changes the activations; the bubble is 0 only without a pipeline and shrinks with more micro-batches."""
    devices = dp * tp * pp
    splits = [per_device(measured(NO_BUFFERS), Parallelism(dp, tp, pp, zero, m)) for zero in range(4)]
    plain = splits[0]
    replica = plain.weights_bytes.device + plain.grads_bytes.device + plain.optimizer_state_bytes.device
    assert replica * tp * pp == pytest.approx(4e9 + 4e9 + 8e9)
    assert splits[1].optimizer_state_bytes.device * devices == pytest.approx(8e9)
    assert splits[2].grads_bytes.device * devices == pytest.approx(4e9)
    assert splits[3].weights_bytes.device * devices == pytest.approx(4e9)
    for before, after in zip(splits, splits[1:]):
        assert after.memory_bytes.device <= before.memory_bytes.device
        assert after.activations_bytes.device == before.activations_bytes.device
    assert splits[1].memory_bytes.device < plain.memory_bytes.device or dp == 1
    assert 0 <= plain.bubble < 1 and (plain.bubble == 0) == (pp == 1)
    micro = m or pp
    if 64 // dp % (2 * micro) == 0:  # twice the micro-batches, where they still divide a replica's batch
        assert Parallelism(dp, tp, pp, 0, 2 * micro).bubble < plain.bubble or pp == 1


@pytest.mark.parametrize("dp,tp,pp,m", LAYOUTS)
def test_per_device_flops_times_devices_is_the_whole(dp, tp, pp, m):
    devices = dp * tp * pp
    for zero in (1, 2, 3):
        split = per_device(measured(), Parallelism(dp, tp, pp, zero, m))
        assert split.flops.device * devices == pytest.approx(split.flops.whole)
        assert split.flops.whole == pytest.approx(3e15 + 1.2e10)
    # without ZeRO every replica repeats the optimizer step of its shard
    plain = per_device(measured(), Parallelism(dp, tp, pp, 0, m))
    assert plain.flops.device * devices == pytest.approx(3e15 + dp * 1.2e10)


@pytest.mark.parametrize("dp,tp,pp,m", LAYOUTS)
def test_zero3_memory_over_all_devices_is_the_whole(dp, tp, pp, m):
    """ZeRO-3 shards every parameter-sized tensor over all devices; activations sum to the whole when m = pp
    (every micro-batch of the first stage in flight) and to min(m, pp)/m of it otherwise; buffers are kept by
    every replica."""
    devices, micro = dp * tp * pp, m or pp
    bare = per_device(measured(NO_BUFFERS), Parallelism(dp, tp, pp, 3, m))
    in_flight = min(micro, pp) / micro
    assert bare.memory_bytes.device * devices == pytest.approx(4e9 + 4e9 + 8e9 + 6.4e11 * in_flight)
    if micro == pp:
        assert bare.memory_bytes.device * devices == pytest.approx(bare.memory_bytes.whole)
    full = per_device(measured(), Parallelism(dp, tp, pp, 3, m))
    assert full.memory_bytes.device * devices == pytest.approx(bare.memory_bytes.device * devices + dp * 1e6)


def test_the_bubble_by_hand():
    assert Parallelism(pp=1).bubble == 0
    assert Parallelism(pp=4).bubble == pytest.approx(3 / 7)                    # m = pp = 4
    assert Parallelism(pp=4, micro_batches=12).bubble == pytest.approx(3 / 15)
    assert Parallelism(pp=8, micro_batches=96).bubble == pytest.approx(7 / 103)


def test_the_bubble_stretches_time_cost_and_budgets():
    """dp 2 x pp 4 = 8 GPUs with 8 micro-batches: bubble 3/11, so time and all it buys are / (8/11)."""
    hw = Hardware("test-gpu", gpus=8, peak_flops=1e15, mfu=0.5, price_per_gpu_hour=2.0, watts_per_gpu=700.0)
    split = per_device(measured(), Parallelism(dp=2, pp=4, zero=1, micro_batches=8))
    cost = PerToken.from_result(measured())
    rows = {r.method: r for r in project(cost, Plan.of_steps(1000, 64, 128), hw, split).rows}
    flops = 6 * 1e9 * 1000 * 64 * 128
    assert rows["6ND"].gpu_hours == pytest.approx(flops / 1.8e18 * 11 / 8)   # 1.8e18 FLOPs per GPU-hour
    assert rows["6ND"].days == pytest.approx(flops / 1.8e18 * 11 / 8 / 8 / 24)
    assert rows["6ND"].cost == pytest.approx(2.0 * flops / 1.8e18 * 11 / 8)
    assert budget_flops("gpu_hours", 1000, hw, split.bubble) == pytest.approx(1000 * 1.8e18 * 8 / 11)
    assert budget_flops("flops", 3e21, hw, split.bubble) == 3e21


def test_bad_layouts_are_one_line_errors_naming_the_option():
    for kwargs, message in (({"zero": 4}, "^zero=4: must be 0, 1, 2 or 3$"), ({"zero": True}, "^zero=True: "),
                            ({"dp": 0}, "^dp=0: must be an integer >= 1$"), ({"tp": 1.5}, "^tp=1.5: "),
                            ({"micro_batches": 0}, "^micro_batches=0: ")):
        with pytest.raises(ConfigError, match=message):
            Parallelism(**kwargs)
    for layout, message in ((Parallelism(dp=5), "^dp=5: does not divide the measured batch of 64 sequences"),
                            (Parallelism(dp=4, micro_batches=3), "^micro_batches=3: does not divide the 16 "),
                            (Parallelism(pp=3),
                             "^pp=3: does not divide the 64 sequences .*give a number of micro-batches that divides")):
        with pytest.raises(ConfigError, match=message) as err:
            per_device(measured(), layout)
        assert "\n" not in str(err.value)
    gpt = Result("ok", None, {"model": {"name": "gpt", "n_head": 12, "n_layer": 4}}, dict(STEP))
    for layout, message in ((Parallelism(tp=8), "^tp=8: does not divide the model's 12 attention heads"),
                            (Parallelism(pp=8, micro_batches=8), "^pp=8: is more pipeline stages than the model's 4")):
        with pytest.raises(ConfigError, match=message):
            per_device(gpt, layout)
    assert per_device(gpt, Parallelism(tp=4, pp=4)).layout.devices == 16
    split = per_device(measured(), Parallelism(dp=2, tp=2, pp=2))
    cost = PerToken.from_result(measured())
    with pytest.raises(ConfigError, match=r"^gpus=4: differs from dp·tp·pp = 2·2·2 = 8$"):
        project(cost, Plan.of_tokens(1e12), Hardware("x", 4, 1e15, 0.4), split)
    with pytest.raises(ConfigError, match="^batch=32: differs from the 64 sequences measured"):
        project(cost, Plan.of_steps(10, 32, 128), Hardware("x", 8, 1e15, 0.4), split)
    with pytest.raises(ConfigError, match="^run='one_b': measured no training step"):
        per_device(measured({k: v for k, v in STEP.items() if k != M.ACTIVATIONS_BYTES}), Parallelism())


def test_project_command_splits_a_measured_job_over_devices(tmp_path):
    """A real job (tiny GPT on meta, global batch 8), then ``flopsweep-project train --dp 2 --tp 2 --pp 2 --zero 3``:
    the per-device figures in the JSON and in MLflow follow from the job's metrics, time carries the bubble
    (m = pp = 2: 1/3), the memory warning shows, and bad layouts are one-line errors."""
    from mlflow.tracking import MlflowClient

    from flopsweep.cli.project import main as project
    from tests.helpers import run_app, run_main

    job = run_app("model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=4", "batch.size=8",
                  "model.vocab_size=512", "batch.seq_len=16", "device=meta", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    folder = next(tmp_path.glob("outputs/runs/*/*/result.json")).parent
    m = json.loads((folder / "result.json").read_text())["metrics"]
    project_cmd = ["train", str(folder), "--steps", "100", "--batch", "8", "--gpu", "A100", "--mfu", "0.5",
                   "--dp", "2", "--tp", "2", "--pp", "2"]
    out = run_main(project, *project_cmd, "--zero", "3", "--gpu-memory", "1e-6", "--json", "p.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    par = data["parallel"]
    assert data["hardware"]["gpus"] == par["devices"] == 8 and par["bubble"] == pytest.approx(1 / 3)
    static = (m["size/weights_bytes"] + m["size/grads_bytes"] + m["size/optimizer_state_bytes"]) / 8
    memory = static + m["size/buffers_bytes"] / 4 + m["size/activations_bytes"] * 2 / (2 * 2 * 2 * 2)
    assert par["memory_bytes"]["device"] == pytest.approx(memory)
    assert par["flops"]["device"] == pytest.approx(m["flops/step"] / 8)
    six_nd = 6 * m["size/params"] * 100 * 8 * 16
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["6ND"]["gpu_hours"] == pytest.approx(six_nd / (312e12 * 0.5 * 3600) * 3 / 2)
    assert "per device" in out.stdout and "warning: a device needs" in out.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("projections").experiment_id])
    assert run.data.metrics["projection/per_device/memory_bytes"] == pytest.approx(memory)
    assert run.data.metrics["projection/pipeline_bubble"] == pytest.approx(1 / 3)
    assert run.data.params["parallel.zero"] == "3" and run.data.params["parallel.micro_batches"] == "2"
    for args, message in ((["--gpus", "4"], "gpus=4: differs from dp·tp·pp = 2·2·2 = 8"),
                          (["--zero", "4"], "zero=4: must be 0, 1, 2 or 3"),
                          (["--dp", "3"], "dp=3: does not divide the measured batch of 8 sequences")):
        bad = run_main(project, *project_cmd, *args, "--no-log", cwd=tmp_path)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_the_table_gives_a_steps_flops_as_the_totals_and_the_layout_as_its_run_is_named():
    """The per-device table's step FLOPs in exponent form, as the methods table's totals beside it (it read 3.00P
    beside 3.230e+23), and the layout as the run's name spells it (it read dp 4 × tp 2 × pp 2, ZeRO-1)."""
    from flopsweep.projection.parallel import table

    lines = table(per_device(measured(), Parallelism(dp=4, tp=2, pp=2, zero=1))).splitlines()
    assert lines[0] == "parallel dp4 tp2 pp2 zero1 = 16 GPUs, 2 micro-batches per replica (1F1B): pipeline bubble 33.3%"
    flops, = (line.split()[3:] for line in lines if line.startswith("FLOPs per step"))
    assert flops == ["3.000e+15", "1.875e+14"]  # 3e15 / 16 + 1.2e10 / 16 = 1.87500075e14
    zero0 = table(per_device(measured(), Parallelism(dp=4, tp=2, pp=2))).splitlines()[0]
    assert zero0.startswith("parallel dp4 tp2 pp2 = 16 GPUs")  # ZeRO-0 unnamed, as in a run's name
