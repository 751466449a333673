"""Layouts searched as a sweep (``+sweep=layouts``, docs/parallel.md): every valid layout of ``parallel.gpus`` GPUs
enumerated (:func:`enumerate_layouts`), those whose states alone exceed the part's memory left out before any job
runs (:func:`states_lower_bound`), the rest launched as jobs by :class:`LayoutSweeper`; the best printed at the end
(:func:`ranked_table`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from flopsweep.core import metrics as M
from flopsweep.core.errors import ConfigError, require, require_int
from flopsweep.core.hardware import accelerator
from flopsweep.core.result import Result
from flopsweep.core.text import capacity, format_metric, is_layout_key, layout_name, table
from flopsweep.measure.layout import RECOMPUTE, Layout
from flopsweep.sinks.identity import short_name
from flopsweep.sweep._hydra import BasicSweeper
from flopsweep.sweep import state
from flopsweep.sweep.jobdirs import job_number
from flopsweep.sweep.plan import SweepPlan
from flopsweep.sweep.state import SweepContext
from flopsweep.sweep.sweeper import RecoveringSweeper

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_STATES = {"adamw": 2}  # state tensors per parameter, in the weights' dtype; others: 0 (a lower bound)


@dataclass(frozen=True)
class SearchModel:
    """What the search needs of one job's model and step."""

    heads: int
    kv_heads: Optional[int]
    layers: int
    params: int                   # the whole model's parameters
    batch_size: int               # the global batch of a step
    seq_len: int
    weight_bytes: int             # bytes a weight (and its gradient) takes: the params dtype
    optimizer_states: int         # optimizer state tensors per parameter
    mixed_precision: bool = False
    experts: Optional[int] = None
    expert_params: int = 0        # of ``params``, the routed experts' (split over ep)


def factorizations(n: int) -> Iterator[tuple[int, int, int]]:
    """Every ``(dp, tp, pp)`` with ``dp * tp * pp == n``."""
    for tp in (d for d in range(1, n + 1) if n % d == 0):
        for pp in (d for d in range(1, n // tp + 1) if (n // tp) % d == 0):
            yield n // (tp * pp), tp, pp


def enumerate_layouts(gpus: int, model: SearchModel, micro_batch_sizes: Sequence[int] = (1, 2, 4, 8),
                      recompute: Sequence[str] = RECOMPUTE, zeros: Sequence[int] = (0, 1, 2, 3),
                      sequence_parallel: bool = False, cps: Sequence[int] = (1,),
                      eps: Sequence[int] = (1,)) -> list[Layout]:
    """Every layout of ``gpus`` GPUs that a job accepts (:meth:`Layout.check_model`, :meth:`Layout.check_counted`),
    at each context-parallel size of ``cps`` that divides them and each expert-parallel size of ``eps`` (a mixture
    of experts': it splits the experts within dp x cp); vpp 1; ZeRO above 0 only where dp x cp > 1 (with one
    data-parallel rank there is nothing to shard: the same layout again); ``sequence_parallel`` only where tp > 1."""
    found = []
    meshes = ((dp, tp, pp, cp) for cp in cps if gpus % cp == 0 for dp, tp, pp in factorizations(gpus // cp))
    for (dp, tp, pp, cp), ep, mbs, how in itertools.product(meshes, eps, micro_batch_sizes, recompute):
        for zero in (z for z in zeros if z == 0 or dp * cp > 1):
            layout = Layout(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, zero=zero, recompute=how, micro_batch_size=mbs,
                            sequence_parallel=sequence_parallel and tp > 1)
            try:
                layout.check_model(heads=model.heads, kv_heads=model.kv_heads, layers=model.layers,
                                   batch_size=model.batch_size, seq_len=model.seq_len, experts=model.experts)
                layout.check_counted(model.mixed_precision)
            except ConfigError:
                continue
            found.append(layout)
    return found


def states_lower_bound(layout: Layout, model: SearchModel) -> float:
    """Bytes the busiest GPU holds at least when the optimizer steps: its weights, their gradients (the same shards
    and dtype) and the optimizer's state. A tensor-parallel rank holds at least ``1/tp`` of the parameters (norms are
    replicated, not split), the busiest pipeline stage at least ``1/pp`` (the average), and ZeRO >= 1 (FSDP2) shards
    all three over dp x cp (padding only adds); of a mixture of experts, a rank holds ``1/ep`` of the routed experts,
    sharded over the ``dp x cp / ep`` ranks that hold the same ones. Activations, gathered weights and buffers are
    left out: never more than what a job counts, so a layout over the part's memory by this bound cannot fit."""
    sharded = layout.zero >= 1
    dense = (model.params - model.expert_params) / (layout.data_parallel if sharded else 1)
    experts = model.expert_params / (layout.data_parallel if sharded else layout.ep)
    return (dense + experts) / (layout.tp * layout.pp) * model.weight_bytes * (2 + model.optimizer_states)


def search_overrides(layout: Layout) -> list[str]:
    """A layout as a job's overrides."""
    keys = ("dp", "tp", "pp", "cp", "ep", "micro_batch_size", "recompute", "zero", "sequence_parallel")
    return [f"parallel.{key}={str(getattr(layout, key)).lower()}" for key in keys]


def search_model(cfg: Any) -> SearchModel:
    """The model of a composed job (its ``parallel.*`` layout keys left out), from its resolved spec."""
    import torch
    from omegaconf import OmegaConf

    from flopsweep.config.resolve import resolve

    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    for key in cfg.parallel:
        if key != "gpus_per_node":
            cfg.parallel[key] = None
    spec = resolve(cfg)
    shape = spec.family.shape(spec.model)
    require(bool(shape.heads and shape.layers), "parallel.gpus", None,
            f"searches the layouts of transformer decoders: {spec.model.name or spec.family.name} has no heads")
    with torch.device("meta"):
        named = dict(spec.family.Model(spec.model).named_parameters())
    experts = sum(p.numel() for name, p in named.items() if ".experts." in f".{name}")  # HF's stacked experts
    return SearchModel(shape.heads, shape.kv_heads, shape.layers, sum(p.numel() for p in named.values()),
                       spec.batch.size, spec.batch.seq_len, BYTES.get(spec.dtype.params, 1),
                       OPTIMIZER_STATES.get(spec.optimizer.name, 0), spec.dtype.autocast is not None, shape.experts,
                       experts)


class LayoutSweeper(RecoveringSweeper):
    """flopsweep's sweeper whose jobs are, for each job the sweep's values give, every layout of ``parallel.gpus``
    GPUs that can fit ``predict.hardware``'s memory (``sweeps/layouts.yaml``)."""

    def __init__(self, micro_batch_sizes: Sequence[int] = (1, 2, 4, 8), recompute: Sequence[str] = RECOMPUTE,
                 zero: Sequence[int] = (0, 2, 3), cp: Sequence[int] = (1,), ep: Sequence[int] = (1,), top: int = 10,
                 **rest: Any) -> None:
        super().__init__(**rest)
        self.micro_batch_sizes, self.recompute, self.zeros, self.top = micro_batch_sizes, recompute, zero, top
        self.cps, self.eps = cp, ep

    def _check_settings(self) -> None:
        """Its own keys, checked before any job (a ``top`` of ``abc`` failed after the whole sweep had run; a
        ``recompute`` or ``zero`` value it does not know left out without a word, or blamed on parallel.gpus)."""
        require_int(self.top, "hydra.sweeper.top")
        allowed = {"micro_batch_sizes": None, "recompute": RECOMPUTE, "zero": (0, 1, 2, 3), "cp": None, "ep": None}
        for key, values in zip(allowed, (self.micro_batch_sizes, self.recompute, self.zeros, self.cps, self.eps)):
            name = f"hydra.sweeper.{key}"
            require(values is not None and not isinstance(values, (str, int, float)) and len(values) > 0, name, values,
                    "must be a non-empty list, as in sweeps/layouts.yaml")
            for value in values:
                if allowed[key] is None:
                    require_int(value, name)
                else:
                    require(value in allowed[key], name, value, f"must be one of {', '.join(map(str, allowed[key]))}")

    def split_arguments(self, overrides: Any, max_batch_size: Optional[int]) -> list[list[list[str]]]:
        jobs = [job for chunk in BasicSweeper.split_arguments(overrides, None) for job in chunk]
        try:
            self._check_settings()
            expanded = [job + search_overrides(layout) for job in jobs for layout in self._search(job)]
        except ConfigError as err:
            from hydra.errors import HydraException

            raise HydraException(str(err)) from None
        replace(SweepContext.current(), total=len(expanded),  # the jobs' progress lines and run names
                swept=tuple(SweepPlan(self.config, expanded).varying)).publish()
        size = max_batch_size or max(len(expanded), 1)
        return [expanded[i:i + size] for i in range(0, len(expanded), size)]

    def _search(self, job: list[str]) -> list[Layout]:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        gpus, hardware = cfg.parallel.gpus, cfg.predict.hardware
        require_int(gpus, "parallel.gpus")
        require(hardware is not None and accelerator(hardware) is not None, "predict.hardware", hardware,
                "a layout search needs a part of the hardware table to fit its memory and predict its step")
        model = search_model(cfg)
        valid = enumerate_layouts(gpus, model, self.micro_batch_sizes, self.recompute, self.zeros,
                                  bool(cfg.parallel.sequence_parallel), self.cps, self.eps)
        require(bool(valid), "parallel.gpus", gpus,
                f"has no layout the model and batch take: dp x micro-batch must divide batch.size={model.batch_size}, "
                f"tp its {model.heads} attention heads" + (f" and {model.kv_heads} KV heads" if model.kv_heads else "")
                + f", pp be at most its {model.layers} layers"
                + (", and mixed precision needs ZeRO over dp x cp > 1" if model.mixed_precision else ""))
        part = accelerator(hardware)
        kept = [layout for layout in valid if states_lower_bound(layout, model) <= part.memory_bytes]
        print(f"flopsweep: {len(valid)} valid layouts of {gpus} GPUs ({' '.join(job) or 'the command'}); "
              f"{len(valid) - len(kept)} left out whose weights, gradients and optimizer state alone exceed the "
              f"{hardware}'s {capacity(part)}; {len(kept)} to run", flush=True)
        require(bool(kept), "parallel.gpus", gpus, f"leaves no layout that can fit the {hardware}'s memory")
        return kept

    def sweep(self, arguments: list[str]) -> Any:
        returns = super().sweep(arguments)
        results = [(p.parent.name, r) for p in Path(str(self.config.hydra.sweep.dir)).glob("*/result.json")
                   if (r := Result.read_or_none(p)) is not None]
        # said after the summary (above it, 312 rows hid it); one ranking for each model, batch, ... the sweep varies:
        # tokens/s of different models are no ranking
        apart = [key for key in SweepContext.current().swept if not is_layout_key(key)]
        groups: dict[str, list[tuple[str, Result]]] = {}
        for job, result in sorted(results, key=lambda jr: job_number(jr[0])):
            groups.setdefault(short_name(result.config, apart) if apart else "", []).append((job, result))
        state.current().coda = "\n\n".join((f"{name}: " if name else "") + ranked_table(found, self.top)
                                             for name, found in groups.items())
        return returns


def ranked(results: list[tuple[str, Result]]) -> list[tuple[str, Result]]:
    """The jobs with a predicted speed, those whose memory fits the part first, each fastest first (tokens/s a
    GPU)."""
    speed = M.TOKENS_PER_S_PER_GPU_PREDICTED
    found = [(job, r) for job, r in results if r.status == "ok" and r.metrics.get(speed) is not None]
    return sorted(found, key=lambda jr: (not _fits(jr[1]), -jr[1].metrics[speed]))


def _fits(result: Result) -> bool:
    return result.metrics.get(M.PARALLEL_FITS, 1.0) >= 1.0


def ranked_table(results: list[tuple[str, Result]], top: int = 10) -> str:
    """The ``top`` layouts by predicted tokens/s a GPU, with the memory a GPU and the bottleneck beside."""
    found = ranked(results)
    best = found[:top]
    rows = []
    for place, (job, r) in enumerate(best, 1):
        lay = r.layout
        rows.append([str(place), job, layout_name(lay, " "),  # as the run and the summary name it, ZeRO in it
                     str(lay.get("micro_batch_size")), str(lay.get("recompute")),
                     format_metric(M.TOKENS_PER_S_PER_GPU_PREDICTED, r.metrics.get(M.TOKENS_PER_S_PER_GPU_PREDICTED)),
                     format_metric(M.MFU_PREDICTED, r.metrics.get(M.MFU_PREDICTED)),
                     format_metric(M.PARALLEL_MEMORY_PER_GPU, r.metrics.get(M.PARALLEL_MEMORY_PER_GPU)),
                     r.bottleneck or "-"])
    over = sum(not _fits(r) for _, r in found)
    title = f"The {len(best)} fastest of {len(found)} layouts predicted (tokens/s a GPU)" + \
        ("; none fits the part's memory:" if over and over == len(found) else
         f"; {over} do not fit the part's memory, ranked after those that do:" if over else ":")
    return title + "\n" + table(["rank", "job", "layout", "micro-batch", "recompute", "tokens/s/GPU", "MFU",
                                 "memory/GPU", "bottleneck"], rows)
