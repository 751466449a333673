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


def test_a_generation_on_cuda_counts_as_on_meta_is_timed_and_fits_its_estimate():
    base = ["model=llama2_7b", "model.n_layer=2", "batch.size=2", "batch.seq_len=64", "workload=generate",
            "generate.new_tokens=16", "dtype=bfloat16", "tracking=none", "measure.warmup=1", "measure.repeats=3"]
    cuda, meta = (run_job(resolve(compose_config(*base, f"device={d}")), {}) for d in ("cuda", "meta"))
    assert cuda.status == "ok" and meta.status == "ok", (cuda.error, meta.error)
    for key in ("flops/prefill", "flops/decode", "size/kv_cache_bytes", "size/decode_weights_read_bytes"):
        assert cuda.metrics[key] == meta.metrics[key], key
    m = cuda.metrics
    assert m["time/ttft_s"] > 0 and m["time/tpot_s"] > 0 and m["speed/output_tokens_per_s"] > 0
    # what the device held at most: the weights and the cache at least, the meta estimate allocator rounding apart
    assert m["size/weights_bytes"] + m["size/kv_cache_bytes"] <= m["size/measured_peak_bytes"]
    assert m["size/measured_peak_bytes"] <= 1.2 * m["size/step_peak_bytes"]


def test_a_quick_cuda_calibration_predicts_a_timed_step_within_a_factor_of_two(tmp_path, monkeypatch):
    """The calibrated part (a coarse grid) predicts GPT-2 small's eager step on it; the time model is only as good as
    its profile, so this bound is loose (the acceptance figures come from benchmarks/gpu/bench_gpu.py)."""
    from flopsweep.measure.calibrate import calibrate
    from flopsweep.measure.calibration import profile_path

    monkeypatch.setenv("FLOPSWEEP_CALIBRATION_DIR", str(tmp_path))
    cal = calibrate("cuda:0", quick=True)
    cal.save(profile_path(cal.part))
    spec = resolve(compose_config("model=gpt2_small", "batch.size=8", "batch.seq_len=512", "dtype=bfloat16",
                                  "device=cuda", "measure.repeats=5", "tracking=none"))
    result = run_job(spec, {})
    assert result.status == "ok", result.error
    assert result.info["prediction"]["default"] is False
    assert 0.5 < result.metrics["time/step_predicted_ratio"] < 2.0, result.metrics
