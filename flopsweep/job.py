"""One job, from a validated spec to a Result: build, count, size, time, and put the numbers under their
metric names. Nothing here prints or talks to a tracking store; failures become results."""

from __future__ import annotations

import contextlib
import platform
import traceback
from typing import Any, Optional

import torch

from flopsweep import metrics as M
from flopsweep.build import build
from flopsweep.config import JobSpec
from flopsweep.errors import ConfigError
from flopsweep.measure.count import StepCount, count_step
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.measure.peaks import peak_flops
from flopsweep.measure.profile import forward_latency, module_rows
from flopsweep.measure.size import SavedActivations, SizeRecord, measure_size
from flopsweep.measure.timing import TimingRecord, time_per_block, time_step
from flopsweep.models.base import BatchShape
from flopsweep.result import Result


def run_job(spec: JobSpec, config: dict[str, Any]) -> Result:
    try:
        return _measure(spec, config)
    except torch.OutOfMemoryError as err:
        return Result("oom", _one_line(err), config, info={"batch_size": spec.batch.size,
                                                           "traceback": traceback.format_exc()})
    except ConfigError as err:
        return Result("failed", str(err), config)
    except Exception as err:  # noqa: BLE001 - a failed measurement is a result, not a crash of the sweep
        return Result("failed", _one_line(err), config, info={"traceback": traceback.format_exc()})


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}"


def _measure(spec: JobSpec, config: dict[str, Any]) -> Result:
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    built = build(spec)
    on_meta = spec.device == "meta"
    # every pass on meta takes the attention kernel the CPU would, so that counts and sizes match
    with MetaLikeCPU() if on_meta else contextlib.nullcontext():
        count = saved = None
        if spec.measure.count:
            saved = SavedActivations(built.model) if spec.training else None

            def counted_forward() -> contextlib.ExitStack:  # autocast, and record what backward will need
                stack = contextlib.ExitStack()
                stack.enter_context(built.autocast())
                if saved is not None:
                    stack.enter_context(saved)
                return stack

            count = count_step(built.model, built.inputs, built.optimizer, backward=spec.training,
                               causal_half=spec.measure.causal_attention == "half", context=counted_forward)
        elif built.optimizer is not None:  # the optimizer's state exists only after a step
            for p in built.trainable:
                p.grad = torch.zeros_like(p)
            built.optimizer.step()
        size = measure_size(built.model, built.inputs, built.optimizer, built.autocast,
                            int8=spec.params_dtype == "int8", training=spec.training,
                            activations=saved.bytes if saved is not None else None)
    timing = None
    if spec.measure.time and not on_meta:
        timer = time_per_block if spec.measure.timing == "per_block" else time_step
        if spec.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(spec.device)
        timing = timer(built.model, built.inputs, built.optimizer, built.autocast, spec.device,
                       warmup=spec.measure.warmup, repeats=spec.measure.repeats, training=spec.training)
    measured_peak = torch.cuda.max_memory_allocated(spec.device) if spec.device.startswith("cuda") else None
    latency = None
    if spec.measure.profile and timing is not None:  # after the step timings, which the hooks would slow
        latency = forward_latency(built.model, built.inputs, built.autocast, spec.device, warmup=spec.measure.warmup,
                                  repeats=spec.measure.repeats, training=spec.training)

    forward_analytic, backward_analytic = closed_forms(spec)
    metrics = collect_metrics(spec.batch, count, size, timing, training=spec.training,
                              dtype=spec.autocast or spec.params_dtype, peak_tflops=spec.peak_tflops,
                              measured_peak=measured_peak)
    metrics[M.FLOPS_FORWARD_ANALYTIC] = forward_analytic
    if backward_analytic is not None:
        metrics[M.FLOPS_BACKWARD_ANALYTIC] = backward_analytic
    breakdown: dict[str, Any] = {}
    if count is not None:
        breakdown = {"modules": count.module_table(spec.measure.module_depth), "ops": count.op_table(),
                     "uncounted_ops": count.uncounted}
        if spec.measure.profile:
            breakdown["profile"] = module_rows(built.model, count, latency)
    return Result("ok", None, config, metrics, breakdown, info=job_info(spec, timing))


def closed_forms(spec: JobSpec) -> tuple[Optional[int], Optional[int]]:
    """The family's closed-form forward FLOPs and, for training jobs, backward FLOPs. A family with a backward
    closed form models the train modes (the decoder); the others' forward is the base model's, which LoRA's
    adapters change, so they give none under ``train=lora``."""
    forward = getattr(spec.family, "analytic_forward_flops", None)
    backward = getattr(spec.family, "analytic_backward_flops", None)
    if backward is not None:
        return (forward(spec.model, spec.batch, spec.train),
                backward(spec.model, spec.batch, spec.train) if spec.training else None)
    if forward is None or spec.train.mode == "lora":
        return None, None
    return forward(spec.model, spec.batch), None


def collect_metrics(batch: BatchShape, count: Optional[StepCount], size: SizeRecord, timing: Optional[TimingRecord],
                    *, training: bool, dtype: str, peak_tflops: Optional[float] = None,
                    measured_peak: Optional[int] = None) -> dict[str, Optional[float]]:
    """The measured metrics under their names. ``dtype``: the one the matmuls run in (for the MFU's peak)."""
    m: dict[str, Optional[float]] = {M.BATCH_SIZE: batch.size, M.SEQ_LEN: batch.seq_len}
    if count is not None:
        m[M.FLOPS_FORWARD] = count.forward.matmul
        m[M.FLOPS_FORWARD_ELEMENTWISE] = count.forward.elementwise
        m[M.MACS_FORWARD] = count.forward.macs
        step = count.forward.matmul
        if count.backward is not None:
            m[M.FLOPS_BACKWARD] = count.backward.matmul
            m[M.FLOPS_BACKWARD_ELEMENTWISE] = count.backward.elementwise
            step += count.backward.matmul
        if count.optimizer is not None:
            # the optimizer step is all per-element arithmetic
            m[M.FLOPS_OPTIMIZER] = count.optimizer.matmul + count.optimizer.elementwise
            step += m[M.FLOPS_OPTIMIZER]
        m[M.FLOPS_STEP] = step
    m.update({M.PARAMS: size.params, M.PARAMS_TRAINABLE: size.params_trainable,
              M.PARAMS_EMBEDDING: size.params_embedding, M.WEIGHTS_BYTES: size.weights_bytes,
              M.BUFFERS_BYTES: size.buffers_bytes})
    if training:
        m.update({M.GRADS_BYTES: size.grads_bytes, M.OPTIMIZER_STATE_BYTES: size.optimizer_state_bytes,
                  M.ACTIVATIONS_BYTES: size.activations_bytes, M.TRAIN_PEAK_BYTES: size.train_peak_bytes})
    if measured_peak is not None:
        m[M.MEASURED_PEAK_BYTES] = measured_peak
    if timing is not None:
        m[M.TIME_FORWARD] = timing.forward.median
        if timing.backward is not None:
            m[M.TIME_BACKWARD] = timing.backward.median
        if timing.optimizer is not None:
            m[M.TIME_OPTIMIZER] = timing.optimizer.median
        m[M.TIME_STEP] = timing.step.median
        m[M.TIME_STEP_SPREAD] = timing.step.iqr
        m[M.TIME_STEP_CV] = timing.step.cv
        seconds = timing.step.median
        m[M.SAMPLES_PER_S] = batch.size / seconds
        if batch.seq_len:
            m[M.TOKENS_PER_S] = batch.tokens / seconds
        if count is not None:
            # model FLOPs (matmul class, forward + backward) per second: the MFU numerator
            model_flops = count.forward.matmul + (count.backward.matmul if count.backward else 0)
            m[M.FLOPS_PER_S] = model_flops / seconds
            peak = peak_flops(timing.device_name, dtype, peak_tflops)
            m[M.MFU] = m[M.FLOPS_PER_S] / peak if peak else None
    return m


def job_info(spec: JobSpec, timing: Optional[TimingRecord]) -> dict[str, Any]:
    from flopsweep import __version__

    info: dict[str, Any] = {
        "causal_attention": spec.measure.causal_attention,
        "flops_convention": "multiply-add = 2; flops/* count matmul-class ops, *_elementwise the rest",
        "versions": {"flopsweep": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "host": platform.node(), "device": spec.device,
    }
    if spec.params_dtype == "int8":
        info["int8"] = "weight-only int8 storage (per-row float32 scales); arithmetic in float32; inference only"
    if timing is not None:
        info["timing"] = {"method": timing.method, "warmup": timing.warmup, "repeats": timing.repeats,
                          "threads": timing.threads, "device_name": timing.device_name,
                          "step_min_s": timing.step.minimum, "step_max_s": timing.step.maximum,
                          "blocks": timing.blocks}
    return info
