"""On a CUDA GPU: counts equal those on meta, timings use CUDA events, the peak is measured.
Skipped where no GPU is visible (CI has none)."""

import contextlib

import pytest
import torch

from flopsweep.build.model import build
from flopsweep.config.resolve import resolve
from flopsweep.run.job import run_job
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU
from tests.helpers import compose_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("preset", ["gpt2_small", "bert_base", "llama2_7b"])
def test_cuda_counts_equal_meta(preset):
    overrides = [f"model={preset}", "batch.size=2", "batch.seq_len=128", "dtype=bfloat16"]
    if preset == "llama2_7b":
        overrides += ["model.n_layer=2"]
    counts = {}
    for device in ("cuda", "meta"):
        built = build(resolve(compose_config(*overrides, f"device={device}")))
        with MetaLikeCPU() if device == "meta" else contextlib.nullcontext():
            counts[device] = count_step(built.model, built.inputs, built.optimizer)
    for phase in ("forward", "backward", "optimizer"):
        assert counts["cuda"].phases()[phase].matmul == counts["meta"].phases()[phase].matmul, phase


def test_cuda_job_has_timings_mfu_and_measured_peak():
    spec = resolve(compose_config("model=gpt2_small", "batch.size=8", "batch.seq_len=512", "dtype=bfloat16",
                                  "device=cuda", "measure.repeats=5"))
    result = run_job(spec, {})
    assert result.status == "ok", result.error
    m = result.metrics
    assert m["time/step_s"] > 0 and m["size/measured_peak_bytes"] > 0
    assert m["speed/mfu"] is None or 0 < m["speed/mfu"] < 1
