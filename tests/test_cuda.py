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
    base = ["model=llama2_7b", "model.n_layer=2", "batch.size=2", "batch.seq_len=64", "train=generate",
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
