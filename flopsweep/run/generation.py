"""A ``workload=generate`` job: its generation counted (on any device) and timed (on cpu and cuda), as metrics."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import torch

from flopsweep.build.model import Built
from flopsweep.build.spec import JobSpec
from flopsweep.core import metrics as M
from flopsweep.core.shape import ModelShape
from flopsweep.measure.generate import (GenerationCount, GenerationTiming, Generator, Tokens, count_generation,
                                        simulate_generation, time_generation)
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.measure.size import measure_size
from flopsweep.run.assemble import Progress


def measure_generation(spec: JobSpec, built: Built, progress: Progress) -> None:
    """Count, size and time the generation into ``progress``: the prefill as the counted forward pass (its per-module
    and per-op tables), the generation's figures under ``progress.metrics``."""
    gen, tokens = generator(spec, built, spec.batch.size)
    size, prompt, new_tokens = spec.batch.size, spec.batch.seq_len, spec.generate.new_tokens
    on_meta = spec.device.is_meta
    shape = spec.family.shape(spec.model)
    counted = None
    with MetaLikeCPU() if on_meta else contextlib.nullcontext():
        if spec.measure.count:
            progress.phase = "count"
            counted = count_generation(built.model, gen, tokens, prompt, new_tokens,
                                       causal_half=spec.measure.causal_attention == "half", context=built.autocast,
                                       experts=shape.experts, int8=spec.dtype.int8)
            progress.count = counted.prefill
            progress.notes["generation"] = {"decode_steps": counted.steps, "last_context": counted.last_context,
                                            "counted": counted.method}
            touched = shape.experts_reached(size)
            if counted.routed_bytes and touched is not None:
                progress.notes["generation"]["experts_read"] = (
                    f"a decode step reads the {touched:.3g} of {shape.experts} routed experts a layer that a batch of "
                    f"{size} tokens is expected to reach, each to {shape.experts_per_token}, under uniform routing")
        progress.phase = "size"
        progress.size = measure_size(built.model, built.inputs, None, built.autocast,
                                     int8=spec.dtype.int8, training=False)
        if on_meta:  # its memory at the peak, as a real job's pre-check estimates it
            progress.size = dataclasses.replace(progress.size, step=simulate_generation(
                built.model, gen, tokens, prompt, new_tokens, context=built.autocast, int8=spec.dtype.int8))
    timing = None
    if spec.measure.time and not on_meta:
        progress.phase = "time"
        if spec.device.is_cuda:  # the generation's peak, as a training job's is its steps': not the build's
            torch.cuda.reset_peak_memory_stats(str(spec.device))
        timing = time_generation(gen, tokens, prompt, new_tokens, str(spec.device), warmup=spec.measure.warmup,
                                 repeats=spec.measure.repeats, context=built.autocast)
    progress.metrics.update(generation_metrics(size, new_tokens, counted, timing, shape))


def generator(spec: JobSpec, built: Built, size: int) -> tuple[Generator, Tokens]:
    """The built model's generator, and what makes its synthetic token ids (``size`` sequences)."""
    gen = spec.family.generator(spec.model)(built.model)

    def tokens(length: int) -> torch.Tensor:
        return torch.randint(0, gen.vocab_size, (size, length), device=str(spec.device))

    return gen, tokens


def generation_metrics(batch: int, new_tokens: int, counted: Optional[GenerationCount],
                       timing: Optional[GenerationTiming], shape: ModelShape) -> dict[str, Optional[float]]:
    m: dict[str, Optional[float]] = {M.NEW_TOKENS: new_tokens}
    if counted is not None:
        prefill = counted.prefill.forward.matmul
        per_token, state = counted.cache_line()
        m.update({M.FLOPS_PREFILL: prefill, M.FLOPS_DECODE: counted.decode_matmul,
                  M.FLOPS_GENERATION: prefill + counted.decode_matmul, M.FLOPS_STEP: prefill + counted.decode_matmul,
                  M.KV_CACHE_BYTES: counted.kv_cache_bytes,
                  M.KV_CACHE_BYTES_PER_TOKEN: per_token, M.CACHE_STATE_BYTES: state,
                  M.DECODE_WEIGHTS_READ_BYTES: decode_weights_read(counted, shape)})
        if counted.routed_bytes:
            m[M.ROUTED_EXPERT_BYTES] = counted.routed_bytes
        if counted.decode_first is not None:
            m[M.FLOPS_DECODE_TOKEN_FIRST] = _per_sequence(counted.decode_first.matmul, batch)
            m[M.FLOPS_DECODE_TOKEN_LAST] = _per_sequence(counted.decode_last.matmul, batch)
    if timing is not None:
        first = timing.tpot_first.median
        last = timing.tpot_last.median if timing.tpot_last is not None else first
        mean = (first + last) / 2  # a step's time, like its cost, grows with its context: the mean of the two ends
        m.update({M.TIME_TTFT: timing.ttft.median, M.TIME_TPOT: first, M.TIME_TPOT_SPREAD: timing.tpot_first.iqr,
                  M.TIME_TPOT_LAST: last, M.TIME_GENERATION: timing.ttft.median + (new_tokens - 1) * mean,
                  M.OUTPUT_TOKENS_PER_S: batch / mean})
    return m


def decode_weights_read(counted: GenerationCount, shape: ModelShape) -> Optional[float]:
    """The weights a decode step of the counted batch reads: as counted, but of a mixture of experts' routed experts
    only those the batch's tokens are expected to reach (uniform routing, :func:`experts_touched`), not every one
    that the counted step read (on meta a grouped matmul reads its whole stacked weights)."""
    touched = shape.experts_reached(counted.batch)
    if counted.weights_read_bytes is None or not counted.routed_bytes or touched is None:
        return counted.weights_read_bytes
    return counted.weights_read_bytes - counted.routed_read_bytes + counted.routed_bytes * touched / shape.experts


def _per_sequence(flops: int, batch: int) -> float:
    return flops // batch if flops % batch == 0 else flops / batch
