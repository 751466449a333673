"""A job's result assembled from what it measured: the metrics under their names, the per-module and per-op tables,
the family's closed forms, the simulated step's memory, and what the result records of how it was measured."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from flopsweep.build.spec import JobSpec
from flopsweep.build.train_modes import TRAIN_MODES
from flopsweep.core import __version__
from flopsweep.core import metrics as M
from flopsweep.core.hardware import peak_flops
from flopsweep.core.progress import entered
from flopsweep.core.result import Result, TimingInfo
from flopsweep.measure.count import StepCount
from flopsweep.measure.predict import Prediction
from flopsweep.measure.profile import module_rows
from flopsweep.measure.size import TEMPORARY, SizeRecord, StepMemory
from flopsweep.measure.timing import TimingRecord
from flopsweep.models.base import BatchShape
from flopsweep.run.prediction import prediction_metrics


@dataclass
class Progress:
    """What a job has measured so far: an out-of-memory error keeps it (a timing that fails keeps the count)."""

    phase: str = "build"
    count: Optional[StepCount] = None
    size: Optional[SizeRecord] = None
    timing: Optional[TimingRecord] = None
    measured_peak: Optional[int] = None
    latency: Optional[dict[str, float]] = None
    notes: dict[str, str] = field(default_factory=dict)  # for info: what could not be measured, and why
    periodic_ops: dict[str, int] = field(default_factory=dict)  # the optimizer's: op -> once in so many steps
    metrics: dict[str, Optional[float]] = field(default_factory=dict)  # a mode's own (generation), over the rest
    prediction: Optional[Prediction] = None  # the step's time predicted from its counted ops
    prediction_info: dict[str, Any] = field(default_factory=dict)  # its profile, or why there is none
    system: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # the machine while it was timed

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "phase":  # said where a phase runs long (core/progress.py)
            entered(value)


def job_result(spec: JobSpec, config: dict[str, Any], progress: Progress, status: str = "ok",
               error: Optional[str] = None, model: Optional[torch.nn.Module] = None) -> Result:
    """The result of what ``progress`` holds (after an out-of-memory error, what was measured before it)."""
    count, size = progress.count, progress.size
    if size is not None:
        metrics = collect_metrics(spec.batch, count, size, progress.timing, training=spec.training,
                                  dtype=spec.dtype.compute, peak_tflops=spec.peak_tflops,
                                  measured_peak=progress.measured_peak)
    else:
        metrics = {M.BATCH_SIZE: spec.batch.size, M.SEQ_LEN: spec.batch.seq_len}
    metrics.update(progress.metrics)
    if count is not None:
        compared = progress.timing if progress.prediction_info.get("of_timed_device") else None
        metrics.update(prediction_metrics(progress.prediction, compared, count.model_flops,
                                          spec.dtype.compute))
    mean = optimizer_mean(count, progress.periodic_ops)
    if mean is not None:
        metrics[M.FLOPS_OPTIMIZER_MEAN] = mean
    forward_analytic, backward_analytic = closed_forms(spec)
    metrics[M.FLOPS_FORWARD_ANALYTIC] = forward_analytic
    if backward_analytic is not None:
        metrics[M.FLOPS_BACKWARD_ANALYTIC] = backward_analytic
    breakdown: dict[str, Any] = {}
    if count is not None:
        breakdown = step_breakdown(count, spec.measure.module_depth, model, spec.measure.profile, progress.latency)
    info = {**job_info(spec, progress.timing), **progress.notes}
    if progress.prediction_info:
        info["prediction"] = progress.prediction_info
    if progress.system:
        info["system_metrics"] = [list(sample) for sample in progress.system]
    return with_step_memory(Result(status, error, config, metrics, breakdown, info=info),
                            size.step if size is not None else None)


def optimizer_mean(count: Optional[StepCount], periodic_ops: dict[str, int]) -> Optional[float]:
    """The optimizer's FLOPs per step over many, where the counted step (the first) does work that later steps do
    once in so many (``periodic_ops``: op -> every how many steps, as an optimizer declares it); else None."""
    if count is None or count.optimizer is None or not periodic_ops:
        return None
    by_op = count.optimizer.by_op
    saved = sum((by_op[op].matmul + by_op[op].elementwise) * (1 - 1 / every)
                for op, every in periodic_ops.items() if op in by_op)
    return count.optimizer.matmul + count.optimizer.elementwise - saved


def step_breakdown(count: StepCount, module_depth: int, model: Optional[torch.nn.Module], profile: bool = False,
                   latency: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """The per-module (with each module's parameters) and per-op tables of a counted step, and the module profile
    if ``profile``. ``module_depth`` counts from the model's block stack (:func:`stack_offset`): 3 reaches each
    block's attention and MLP, in our families and in a Hugging Face decoder alike."""
    depth = module_depth + stack_offset(model)
    breakdown: dict[str, Any] = {"modules": count.module_table(depth, model), "ops": count.op_table(),
                                 "uncounted_ops": count.uncounted}
    if profile and model is not None:
        breakdown["profile"] = module_rows(model, count, latency)
    return breakdown


def stack_offset(model: Optional[torch.nn.Module]) -> int:
    """How much deeper than our families' ``blocks`` a model's block stack sits (its largest module list of two or
    more): 0 for theirs, 2 for a Hugging Face decoder's ``net.model.layers``; 0 for a model without one."""
    if model is None:
        return 0
    stacks = [(sum(p.numel() for p in module.parameters()), name) for name, module in model.named_modules()
              if isinstance(module, torch.nn.ModuleList) and len(module) >= 2]
    return max(stacks)[1].count(".") if stacks else 0


def closed_forms(spec: JobSpec) -> tuple[Optional[int], Optional[int]]:
    """The family's closed-form forward FLOPs and, for training jobs, backward FLOPs (none for a generation). A family
    whose closed forms follow the train mode (the decoder's) gives both; the others' forward is the base model's,
    which adapters change, so they give none under LoRA; no family models DoRA's norms."""
    mode, family = TRAIN_MODES[spec.train.mode], spec.family
    if spec.generates or not mode.closed_form:
        return None, None
    if family.train_flops is not None:
        forward, backward = family.train_flops(spec.model, spec.batch, spec.train)
        return forward, backward if spec.training else None
    if family.forward_flops is None or mode.adapter is not None:
        return None, None
    return family.forward_flops(spec.model, spec.batch), None


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
    m.update({M.PARAMS: size.params, M.PARAMS_ACTIVE: size.params_active if size.params_active is not None
              else size.params, M.PARAMS_TRAINABLE: size.params_trainable,
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
            m[M.FLOPS_PER_S] = count.model_flops / seconds
            # only a GPU is looked up in the accelerator table (an "AMD A10-7850K" CPU is no A10G): a CPU's is given
            gpu = timing.device_name if timing.device.startswith("cuda") else ""
            peak = peak_flops(gpu, dtype, peak_tflops)
            m[M.MFU] = m[M.FLOPS_PER_S] / peak if peak else None
    return m


def with_step_memory(result: Result, step: Optional[StepMemory]) -> Result:
    """``result`` with a simulated step's peak, its temporaries, and what was alive at it by category
    (``breakdown.memory_at_peak``): from the job's own step on meta, or from the meta estimate of a real job."""
    if step is not None:
        result.metrics.update({M.STEP_PEAK_BYTES: step.peak_bytes, M.TEMPORARY_BYTES: step.at_peak[TEMPORARY]})
        result.breakdown["memory_at_peak"] = dict(step.at_peak)
    return result


FLOPS_CONVENTION = "multiply-add = 2; flops/* count matmul-class ops, *_elementwise the rest"


def job_info(spec: JobSpec, timing: Optional[TimingRecord]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "causal_attention": spec.measure.causal_attention,
        "flops_convention": FLOPS_CONVENTION,
        "versions": {"flopsweep": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "host": platform.node(), "device": str(spec.device),
        "shape": spec.family.shape(spec.model).to_dict(),  # what readers know of the model (core/shape.py)
    }
    if spec.model_source is not None:
        info["model_source"] = spec.model_source
    if spec.dtype.int8:
        info["int8"] = "weight-only int8 storage (per-row float32 scales); arithmetic in float32; inference only"
    if timing is not None:
        info["timing"] = asdict(TimingInfo(timing.method, timing.repeats, timing.threads, timing.device_name,
                                           timing.warmup, timing.step.minimum, timing.step.maximum, timing.blocks,
                                           timing.load_average, timing.cores, timing.other_cores))
    return info
