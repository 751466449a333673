"""Timings on the CPU: full steps and the time-one-block-and-multiply mode (``measure.timing=per_block``)."""

from pathlib import Path

import pytest

from flopsweep.build.model import build
from flopsweep.config.resolve import resolve
from flopsweep.measure.timing import Stats, block_lists, time_per_block, time_step
from tests.helpers import compose_config

TINY = ["model=gpt2_small", "model.d_model=64", "model.n_layer=3", "model.n_head=4", "model.vocab_size=97",
        "model.max_positions=64", "batch.size=2", "batch.seq_len=16", "device=cpu"]


def test_stats_of_samples():
    s = Stats.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0 and s.minimum == 1.0 and s.maximum == 100.0 and s.iqr > 0 and s.cv > 1


@pytest.mark.parametrize("timer", [time_step, time_per_block], ids=["full", "per_block"])
def test_timings_are_positive_and_add_up(timer):
    built = build(resolve(compose_config(*TINY)))
    record = timer(built.model, built.inputs, built.optimizer, built.autocast, "cpu", warmup=1, repeats=3)
    assert record.forward.median > 0 and record.backward.median > 0 and record.optimizer.median > 0
    assert record.step.median >= record.forward.median
    assert record.repeats == 3 and record.threads >= 1
    # the CPU by its model, as the kernel names it (a fingerprint tells two CPUs apart), not the platform's "x86_64"
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    if models:
        assert record.device_name == models[0]
    if timer is time_per_block:
        assert record.method == "per_block" and record.blocks == {"blocks": 3}
    else:
        assert record.method == "full"


def test_inference_build_times_forward_only():
    built = build(resolve(compose_config(*TINY, "dtype=int8")))
    record = time_step(built.model, built.inputs, built.optimizer, built.autocast, "cpu", warmup=1, repeats=2,
                       training=False)
    assert record.backward is None and record.optimizer is None and record.forward.median > 0


def test_block_lists_finds_the_stack():
    built = build(resolve(compose_config(*TINY, "device=meta")))
    assert {name: len(stack) for name, stack in block_lists(built.model).items()} == {"blocks": 3}


def test_the_machine_is_sampled_while_a_step_is_timed_and_once_at_its_end():
    import time

    import psutil

    from flopsweep.measure.system import CPU, MEMORY_MB, MEMORY_PERCENT, SystemSampler

    began = time.time() * 1000
    with SystemSampler(interval_s=0.05) as machine:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # busy: one core's worth
            pass
    assert len(machine.samples) >= 4  # every 50 ms, and the last window
    times = [t for t, _ in machine.samples]
    assert times == sorted(times) and began <= times[0] <= times[-1] <= time.time() * 1000
    total_mb = psutil.virtual_memory().total / 1e6
    for _, values in machine.samples:
        assert set(values) == {CPU, MEMORY_MB, MEMORY_PERCENT}  # no GPU asked for
        assert 0 <= values[CPU] <= 100 and 0 < values[MEMORY_MB] < total_mb and 0 < values[MEMORY_PERCENT] < 100
    assert max(values[CPU] for _, values in machine.samples) > 0


@pytest.mark.slow
def test_a_timed_jobs_run_carries_what_the_machine_did_as_mlflows_system_metrics(tmp_path):
    from mlflow import MlflowClient

    from flopsweep.core.result import Result
    from tests.helpers import run_app

    tiny = ["model=gpt2_small", "model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.vocab_size=1000",
            "batch.seq_len=32", "batch.size=2"]
    timed = run_app(*tiny, "device=cpu", "measure.repeats=10", cwd=tmp_path)
    assert timed.returncode == 0, timed.stderr
    (path,) = tmp_path.glob("outputs/runs/*/*/result.json")
    samples = Result.read(path).system_metrics
    assert samples and all("system/cpu_utilization_percentage" in values for _, values in samples)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("flopsweep").experiment_id])
    history = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
    assert [(m.timestamp, m.step, m.value) for m in history] == [
        (t, i, values["system/system_memory_usage_megabytes"]) for i, (t, values) in enumerate(samples)]
    (tmp_path / "meta").mkdir()
    counted = run_app(*tiny, "device=meta", "tracking=none", cwd=tmp_path / "meta")
    (path,) = (tmp_path / "meta").glob("outputs/runs/*/*/result.json")
    assert counted.returncode == 0 and Result.read(path).system_metrics == []  # nothing was timed
