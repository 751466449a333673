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
