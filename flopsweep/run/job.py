"""One job, from a validated spec to a Result: check that it fits in memory (or choose its batch), build, count,
size, time, and put the numbers under their metric names. Nothing here prints or talks to a tracking store;
failures, out-of-memory errors and jobs too large for the machine become results."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import traceback
from typing import Any, Optional

import torch

from flopsweep.build.model import Built, build
from flopsweep.build.spec import JobSpec
from flopsweep.core import metrics as M
from flopsweep.core.device import Device
from flopsweep.core.errors import ConfigError, one_line, require
from flopsweep.core.progress import entered
from flopsweep.core.result import Result
from flopsweep.core.text import size_bytes
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.measure.profile import forward_latency
from flopsweep.measure.size import SavedActivations, SizeRecord, StepMemory, measure_size, simulate_step
from flopsweep.measure.system import OtherWork, SystemSampler, load_average
from flopsweep.measure.timing import compiled, time_per_block, time_step
from flopsweep.run.assemble import Progress, collect_metrics, job_result, with_step_memory
from flopsweep.run.generation import measure_generation
from flopsweep.run.parallel import run_parallel
from flopsweep.run.prediction import predict_step
from flopsweep.run.fit import (Available, BatchSearch, MetaEstimate, available_memory, check_memory, find_max_batch,
                               memory_limit, with_batch_size)


def run_job(spec: JobSpec, config: dict[str, Any]) -> Result:
    """Measure one job. A real (cpu/cuda) job is first sized on meta and skipped if it would not fit in
    ``measure.memory_share`` of the memory available; ``batch.size=max`` chooses its batch first; running out of
    memory anywhere (build, count, size, timing) is a result, ``oom``, and the memory is released after it."""
    try:
        if spec.parallel is not None:  # a layout counted rank by rank on meta (run/parallel.py)
            return run_parallel(spec, config)
        if spec.max_batch is not None:
            return _run_max_batch(spec, config)
        return _run_checked(spec, config)
    except ConfigError as err:
        return Result("failed", str(err), config)
    except Exception as err:  # noqa: BLE001 - a failed measurement is a result, not a crash of the sweep
        why = next((why for words, why in META_FAILURES if words in str(err)), None) if spec.device.is_meta else None
        said = f"device=meta: {why}; count it on device=cpu ({one_line(err, 500)})" if why else one_line(err, 500)
        failed = Result("failed", said, config, info={"traceback": traceback.format_exc()})
    release_memory(spec.device)  # what the failed job held, now that its frames are gone
    return failed


# why a step cannot run on meta, by what PyTorch says (bart, deberta-v2: Tensor.item(); xlnet: its positions)
_ON_CPU = "the model makes tensors on the CPU in its step, whatever its inputs' device"
META_FAILURES = (("meta tensor", "the model reads a tensor's value in its step, which meta tensors have none of"),
                 ("device meta is not on the expected device", _ON_CPU), ("found at least two devices", _ON_CPU))


def out_of_memory(err: BaseException) -> Optional[BaseException]:
    """The out-of-memory error ``err`` is, or was raised from (Hydra's instantiate wraps what a model's constructor
    raises): CUDA's (any accelerator's) ``torch.OutOfMemoryError``, or the CPU allocator refusing a request."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, torch.OutOfMemoryError) or (
                isinstance(err, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(err)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def release_memory(device: Device) -> None:
    """After running out of memory, and after every CUDA job: collect what the job left (a failed attempt's
    frames held the model and the batch) and give the CUDA caching allocator's blocks back, so that the next
    job in this process, or a smaller batch, starts with the device's whole memory."""
    gc.collect()
    if device.is_cuda and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _run_checked(spec: JobSpec, config: dict[str, Any], estimate: Optional[MetaEstimate] = None,
                 available: Optional[Available] = None) -> Result:
    """The job, after the memory pre-check on a real device (``measure.memory_check``); ``estimate`` and
    ``available``, where the caller has them (``batch.size=max``'s), are the check's: the model is not built on meta
    again, nor the memory read again."""
    if spec.device.is_meta or not spec.measure.memory_check:
        return _run(spec, config)
    skipped, check_info, step = _precheck(spec, config, estimate, available)
    if skipped is not None:
        return skipped
    result = with_step_memory(_run(spec, config), step)
    result.info["memory_check"] = check_info
    return result


def _precheck(spec: JobSpec, config: dict[str, Any], estimate: Optional[MetaEstimate],
              available: Optional[Available]) -> tuple[Optional[Result], dict[str, Any], Optional[StepMemory]]:
    """Estimate the job's training peak on meta; a ``skipped`` result if it exceeds ``measure.memory_share`` of
    the memory available, else None; what to record under ``info.memory_check`` either way; and the simulated
    step on meta, if one ran."""
    entered("memory check")
    try:
        estimate = estimate or MetaEstimate(spec)
        check = check_memory(spec, estimate, available or available_memory(spec.device))
    except ConfigError:
        raise  # the job itself would fail the same way
    except Exception as err:  # noqa: BLE001 - a model that cannot run on meta is still measured
        return None, {"error": f"not checked: no estimate on meta ({one_line(err, 500)})"}, None
    if check is None:
        return None, {"error": f"not checked: the memory available on {spec.device} is unknown here"}, None
    size = estimate.size(spec.batch.size)
    if not check.fits:
        return _skipped(spec, config, check.reason(), size, {"memory_check": check.info()}), check.info(), size.step
    return None, check.info(), size.step


def _skipped(spec: JobSpec, config: dict[str, Any], reason: str, size: SizeRecord, info: dict[str, Any]) -> Result:
    """Not run, for lack of memory: the sizes estimated on meta are kept (they are what a run would report)."""
    metrics = collect_metrics(spec.batch, None, size, None, training=spec.training, dtype=spec.dtype.compute)
    info = {"skipped": reason, "device": str(spec.device), "sizes_from": "meta", **info}
    return with_step_memory(Result("skipped", reason, config, metrics, info=info), size.step)


def _run_max_batch(spec: JobSpec, config: dict[str, Any]) -> Result:
    """``batch.size=max``: choose the batch, then the job's checked run at it, with the estimate the choice made. On
    a real device that run is the confirmation: if it runs out of memory, step down and run again."""
    estimate = MetaEstimate(spec)
    available = None if spec.device.is_meta else available_memory(spec.device)
    search = _choose_batch(spec, config, estimate, available)
    if isinstance(search, Result):
        return search
    size, attempts = search.chosen, []
    while True:
        result = _run_checked(with_batch_size(spec, size), _config_at_batch(config, size), estimate, available)
        attempts.append({"batch": size, "status": result.status, "error": result.error})
        if result.status != "oom" or size == 1 or len(attempts) == MAX_ATTEMPTS:
            break
        size = step_down(size)
    info = result.info["batch_search"] = search.info()
    if spec.device.is_meta:
        info["confirmed"] = "estimated on meta, not run: device=meta runs nothing"
    elif result.status != "skipped":  # a batch the pre-check stopped ran nothing
        info["attempts"] = attempts
        info["confirmed"] = (f"yes: batch {size} ran on {spec.device}" if result.status == "ok" else
                             f"no: {len(attempts)} runs on {spec.device}, from batch {search.chosen} down, failed")
    if not spec.device.is_meta and not spec.measure.memory_check:  # sized on meta all the same
        with_step_memory(result, estimate.size(size).step)
    return result


def _choose_batch(spec: JobSpec, config: dict[str, Any], estimate: MetaEstimate,
                  available: Optional[Available]) -> BatchSearch | Result:
    """The largest batch whose estimated peak fits the budget (``batch.memory_budget_gib``, else
    ``measure.memory_share`` of the memory available), and how it was found; a skipped result where not even batch 1
    fits."""
    if spec.max_batch.budget_bytes is not None:
        budget = spec.max_batch.budget_bytes
        source = f"batch.memory_budget_gib={budget / 2**30:g}"
    else:
        require(available is not None, "batch.memory_budget_gib", None,
                f"missing: the memory available on {spec.device} is unknown here, so batch.size=max needs a budget")
        budget = memory_limit(spec.measure.memory_share, available)
        source = f"measure.memory_share={spec.measure.memory_share} of {available.bytes} bytes ({available.source})"
    search = find_max_batch(estimate, budget, source)
    if search.chosen == 0:
        reason = (f"batch.size=max: even batch 1 needs an estimated {size_bytes(estimate.peak(1))}, over the budget "
                  f"of {size_bytes(budget)} ({source})")
        return _skipped(with_batch_size(spec, 1), config, reason, estimate.size(1), {"batch_search": search.info()})
    return search


def _config_at_batch(config: dict[str, Any], size: int) -> dict[str, Any]:
    """The job's config as run: ``batch.size`` the batch chosen, not ``max`` (the fingerprint keeps ``max``)."""
    return {**config, "batch": {**(config.get("batch") or {}), "size": size}}


MAX_ATTEMPTS = 8  # runs at decreasing batches after an out-of-memory error, batch.size=max on a real device


def step_down(size: int) -> int:
    """The next batch to try after ``size`` ran out of memory: three quarters of it (at least one less)."""
    return max(1, min(size - 1, size * 3 // 4))


class DidNotCompile(Exception):
    """``measure.compile=true`` on a model that ``torch.compile`` refuses."""


def _run(spec: JobSpec, config: dict[str, Any]) -> Result:
    """Build and measure; running out of memory in any phase gives an ``oom`` result with what was measured."""
    progress = Progress()
    try:
        result = _measure(spec, config, progress)
    except KeyboardInterrupt as err:  # a signal: what was measured before it goes up with it, for the job's record
        with contextlib.suppress(Exception):
            err.measured = job_result(spec, config, progress, status="interrupted",  # type: ignore[attr-defined]
                                      error="interrupted before the job finished")
        raise
    except DidNotCompile as err:  # a failed job that keeps its count and sizes
        return job_result(spec, config, progress, status="failed", error=str(err))
    except Exception as err:
        cause = out_of_memory(err)
        if cause is None:
            raise
        result = job_result(spec, config, progress, status="oom", error=(
            f"out of memory at batch.size={spec.batch.size} ({progress.phase}): {one_line(cause, 500)}"))
        del cause
        result.info.update({"batch_size": spec.batch.size, "oom_phase": progress.phase,
                            "traceback": traceback.format_exc()})
    if result.status == "oom" or spec.device.is_cuda:
        release_memory(spec.device)  # out here: the error, its frames and the model they held are gone by now
    return result


def _measure(spec: JobSpec, config: dict[str, Any], progress: Progress) -> Result:
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    on_cuda = spec.device.is_cuda
    held_before = 0  # what the process held before the job (its caller's tensors, or a library's): not the job's
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(str(spec.device))  # a peak of this job's, not of one before it
        held_before = torch.cuda.memory_allocated(str(spec.device))
    built = build(spec)
    (measure_generation if spec.generates else _measure_step)(spec, built, progress)
    progress.measured_peak = torch.cuda.max_memory_allocated(str(spec.device)) - held_before if on_cuda else None
    if spec.measure.profile and progress.timing is not None:  # after the step timings, which the hooks would slow
        progress.phase = "profile"
        progress.latency = forward_latency(built.model, built.inputs, built.autocast, str(spec.device),
                                           warmup=spec.measure.warmup, repeats=spec.measure.repeats,
                                           training=spec.training)
    return job_result(spec, config, progress, model=built.model)


def _measure_step(spec: JobSpec, built: Built, progress: Progress) -> None:
    """Count, size and time a training step (or an inference forward pass) into ``progress``."""
    progress.periodic_ops = getattr(built.optimizer, "periodic_ops", {})
    on_meta = spec.device.is_meta
    # every pass on meta takes the attention kernel the CPU would, so that counts and sizes match
    with MetaLikeCPU() if on_meta else contextlib.nullcontext():
        saved = None
        if not (spec.measure.count and progress.periodic_ops):  # the optimizer's state made: a step counted as every
            built.create_optimizer_state()  # later one (SGD's momentum is a copy at the first, 3 FLOPs a weight after)
        if spec.measure.count:
            progress.phase = "count"
            saved = SavedActivations(built.model) if spec.training else None

            def counted_forward() -> contextlib.ExitStack:  # autocast, and record what backward will need
                stack = contextlib.ExitStack()
                stack.enter_context(built.autocast())
                if saved is not None:
                    stack.enter_context(saved)
                return stack

            progress.count = count_step(built.model, built.inputs, built.optimizer, backward=spec.training,
                                        causal_half=spec.measure.causal_attention == "half", context=counted_forward)
        progress.phase = "size"
        progress.size = measure_size(built.model, built.inputs, built.optimizer, built.autocast,
                                     int8=spec.dtype.int8, training=spec.training,
                                     activations=saved.bytes if saved is not None else None)
        if on_meta:  # a step as every one after the first runs it: the optimizer's state exists, no gradients yet
            built.model.zero_grad(set_to_none=True)
            try:
                step = simulate_step(built.model, built.inputs, built.optimizer, built.autocast,
                                     training=spec.training, int8=spec.dtype.int8)
            except Exception as err:  # noqa: BLE001 - what was counted and sized stands without it
                progress.notes["memory_at_peak"] = f"not simulated: {one_line(err, 500)}"
            else:
                progress.size = dataclasses.replace(progress.size, step=step)
    if spec.measure.time and not on_meta:
        progress.phase = "time"
        timer = time_per_block if spec.measure.timing == "per_block" else time_step
        model = built.model
        if spec.measure.compile:  # the counts above are the eager step's: the FLOPs a step needs do not change
            progress.phase = "compile"
            try:
                model, progress.metrics[M.TIME_COMPILE] = compiled(built.model, built.inputs, built.autocast,
                                                                   str(spec.device), training=spec.training)
            except Exception as err:  # noqa: BLE001 - torch.compile's own errors, many kinds; the job fails
                if out_of_memory(err) is not None:
                    raise
                raise DidNotCompile(f"measure.compile=true: the model does not compile: {one_line(err, 300)}") \
                    from None
            progress.phase = "time"
        if spec.device.is_cuda:  # the steps' peak, not the build's
            torch.cuda.reset_peak_memory_stats(str(spec.device))
        load = load_average()  # before this job's own timing load (a record: the previous job's own load is in it)
        with SystemSampler(gpus=spec.device.is_cuda) as machine, OtherWork() as others:
            progress.timing = timer(model, built.inputs, built.optimizer, built.autocast, str(spec.device),
                                    warmup=spec.measure.warmup, repeats=spec.measure.repeats, training=spec.training)
        progress.system = machine.samples
        progress.timing = dataclasses.replace(progress.timing, load_average=load, cores=os.cpu_count(),
                                              other_cores=others.cores)
    progress.prediction, progress.prediction_info = predict_step(spec, progress.count, progress.timing)


