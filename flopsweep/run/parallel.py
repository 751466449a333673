"""A ``parallel.*`` job: the layout counted rank by rank on meta (:func:`~flopsweep.measure.ranks.count_layout`), its
per-GPU memory, FLOPs and communication; with ``predict.hardware``, its step predicted on that part and its
interconnect (:mod:`flopsweep.measure.rank_time`). docs/parallel.md."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from flopsweep.build.optimizers import make_optimizer
from flopsweep.build.spec import JobSpec
from flopsweep.core import metrics as M
from flopsweep.core.comm import PLACEMENT, Network
from flopsweep.core.hardware import Accelerator, accelerator
from flopsweep.core.progress import entered
from flopsweep.core.result import Result
from flopsweep.core.text import capacity, size_bytes
from flopsweep.measure.defaults import profile_for
from flopsweep.measure.experts import EXPERT_DATA_DIM
from flopsweep.measure.layout import DATA_DIM, EMBEDDING_DIM, Layout
from flopsweep.measure.ops import GROUPED_MM_NAMES
from flopsweep.measure.predict import body_seconds, predict
from flopsweep.measure.rank_time import StepTime, step_bytes, step_time
from flopsweep.measure.ranks import LayoutCount, Workload, count_layout, param_groups
from flopsweep.run.assemble import job_info


def run_parallel(spec: JobSpec, config: dict[str, Any]) -> Result:
    """Count the layout and put its figures under their metric names (device=meta: nothing is allocated)."""
    layout = spec.parallel.layout()
    work = Workload(spec.batch.size, spec.batch.seq_len, spec.dtype.weights, spec.dtype.autocast_dtype,
                    spec.measure.causal_attention == "half")
    entered("count ranks")
    count = count_layout(lambda: spec.family.Model(spec.model), layout, work,
                         lambda params: make_optimizer(spec.optimizer, param_groups(params)))
    metrics = layout_metrics(count)
    info = {**job_info(spec, None), "parallel": layout_info(count)}
    step, prediction_info = _predicted(spec, count)
    if step is not None:
        metrics.update(step_metrics(count, step, prediction_info.pop("peak"), spec.batch.tokens))
        bound = prediction_info["bound"][step.ranks.index(step.critical)]
        part = accelerator(prediction_info["part"])
        fits = count.busiest.memory.peak_in_flight_bytes <= part.memory_bytes
        metrics[M.PARALLEL_FITS] = float(fits)
        info["parallel"]["bottleneck"] = _bottleneck(count, step, part, bound, fits)
        info["parallel"]["step"] = {"seconds": step.seconds, **step.parts(),
                                    "ranks": [asdict(r) for r in step.ranks]}
    if prediction_info:
        info["prediction"] = prediction_info
    uncounted = {op: n for r in count.ranks for op, n in r.uncounted.items()}
    breakdown = {"collectives": collective_rows(count), "memory_at_peak": dict(count.busiest.memory.at_peak),
                 "uncounted_ops": uncounted}
    return Result("ok", None, config, metrics, breakdown, info=info)


def layout_metrics(count: LayoutCount) -> dict[str, float]:
    layout, m, busiest = count.layout, count.micro_batches, count.busiest
    states = busiest.memory.states_bytes + busiest.memory.partner_states  # DualPipe: the other stage's too
    metrics = {M.BATCH_SIZE: count.batch_size, M.SEQ_LEN: count.seq_len, M.PARALLEL_GPUS: layout.world_size,
               M.PARALLEL_MICRO_BATCHES: m, M.PARALLEL_MEMORY_PER_GPU: busiest.memory.peak_in_flight_bytes,
               M.PARALLEL_STATES_PER_GPU: states,
               M.PARALLEL_ACTIVATIONS_PER_GPU: round(busiest.memory.activations_bytes * busiest.memory.in_flight),
               M.FLOPS_STEP_PER_GPU: max(r.step_flops(m, hardware=True) for r in count.ranks)}
    for rank in count.ranks:
        for op, nbytes in step_bytes(rank, layout, m).items():
            metrics[M.comm_metric(op)] = max(metrics.get(M.comm_metric(op), 0), nbytes)
    return metrics


def step_metrics(count: LayoutCount, step: StepTime, peak: Optional[float], tokens: int) -> dict[str, float]:
    gpus = count.layout.world_size
    model, hardware = count.global_flops() / gpus, count.global_flops(hardware=True) / gpus  # a GPU's share
    metrics = {M.TIME_STEP_PREDICTED: step.seconds, M.TIME_COMM_EXPOSED: step.comm_exposed_s,
               M.TIME_BUBBLE: step.bubble_s, M.TFLOPS_PER_GPU_PREDICTED: model / step.seconds / 1e12,
               M.TOKENS_PER_S_PER_GPU_PREDICTED: tokens / step.seconds / gpus}
    if peak:
        metrics[M.MFU_PREDICTED] = model / step.seconds / peak
        metrics[M.HFU_PREDICTED] = hardware / step.seconds / peak
    return metrics


def _predicted(spec: JobSpec, count: LayoutCount) -> tuple[Optional[StepTime], dict[str, Any]]:
    """The predicted step on ``predict.hardware`` (None without one), and what ``info.prediction`` records."""
    if spec.predict.hardware is None:
        return None, {}
    cal, origin = profile_for(spec.predict.hardware, None, False)
    part = accelerator(cal.part) if cal is not None else None
    if cal is None or part is None or part.interconnect is None:
        why = origin if cal is None else f"{cal.part} has no interconnect in the hardware table (core/hardware.py)"
        return None, {"error": f"not predicted: {why}"}
    predictions = [predict(r.trace, cal, fused=bool(spec.predict.fused), autocast=spec.dtype.autocast)
                   for r in count.ranks]
    network = Network(part.interconnect, _sizes(count.layout), spec.parallel.gpus_per_node or part.interconnect.domain)
    experts = [body_seconds(r.trace, cal, GROUPED_MM_NAMES, autocast=spec.dtype.autocast) for r in count.ranks]
    step = step_time(count, predictions, network, experts)
    dtype = spec.dtype.compute
    info = {"part": cal.part, "profile": origin, "digest": cal.digest(), "default": cal.default,
            "fused": bool(spec.predict.fused), "peak": predictions[0].peak.get(dtype),
            "bound": [p.bound() for p in predictions], "notes": sorted({n for p in predictions for n in p.notes}),
            "network": {dim: _tier_words(network, dim) for dim in PLACEMENT if count.layout.mesh_sizes()[dim] > 1}}
    if count.layout.tp > 1 and not network.within_domain("tp"):
        info["notes"].append(f"tp={count.layout.tp} spans scale-up domains of {network.domain} GPUs: its collectives "
                             "take the scale-out network")
    return step, info


def _sizes(layout: Layout) -> dict[str, int]:
    return {**layout.mesh_sizes(), "ep": layout.ep, DATA_DIM: layout.data_parallel,
            EXPERT_DATA_DIM: layout.data_parallel // layout.ep, EMBEDDING_DIM: 2 if layout.pp > 1 else 1}


def _tier_words(network: Network, dim: str) -> str:
    link, bandwidth = network.tier(dim)
    tier = "scale-up" if link is network.interconnect.scale_up else "scale-out"
    return f"{tier}, {bandwidth:g} GB/s each way per GPU ({link.source})"


def _bottleneck(count: LayoutCount, step: StepTime, part: Accelerator, bound: str, fits: bool) -> str:
    words = step.bottleneck(bound)
    if not fits:
        return f"does not fit: {size_bytes(count.busiest.memory.peak_in_flight_bytes)} a GPU at the peak, over " \
               f"the {part.name}'s {capacity(part)}; {words}"
    return words


def layout_info(count: LayoutCount) -> dict[str, Any]:
    return {"layout": asdict(count.layout), "gpus": count.layout.world_size, "micro_batches": count.micro_batches,
            "ranks": [{"stage": r.stage, "rank": r.rank, "layers": r.layers, "sampled_layers": r.sampled,
                       "params": r.params,
                       "peak_bytes": r.memory.peak_bytes, "in_flight": r.memory.in_flight,
                       "activations_bytes": r.memory.activations_bytes,
                       "flops": {p: c.matmul for p, c in r.flops.items()}} for r in count.ranks]}


def collective_rows(count: LayoutCount) -> list[dict[str, Any]]:
    """Each counted rank's collectives of one micro-batch (the optimizer's once a step)."""
    return [{"stage": r.stage, "op": k.op, "phase": k.phase, "mesh_dim": k.mesh_dim, "group_size": k.group_size,
             "calls": t.calls, "bytes": t.bytes} for r in count.ranks for k, t in sorted(
                 r.collectives.items(), key=lambda kv: (kv[0].phase, kv[0].mesh_dim, kv[0].op))]
