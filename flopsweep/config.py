"""Typed configuration: the schema Hydra composes against, where the configs live, and ``resolve`` which
turns a composed config into a validated :class:`JobSpec` or raises a one-line :class:`ConfigError`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from flopsweep.errors import is_number, require, require_int
from flopsweep.models.base import BatchShape, ModelConfig

PACKAGE_DIR = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    """``conf``/``sweeps`` inside an installed wheel, else beside the package in a source checkout."""
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


CONF_DIR = _shipped("conf")
SWEEPS_DIR = _shipped("sweeps")


class DeviceType(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    meta = "meta"
    auto = "auto"


@dataclass
class DeviceConf:
    type: DeviceType = DeviceType.cpu
    index: int = 0
    threads: Optional[int] = None        # CPU threads for timing; None = PyTorch's default
    peak_tflops: Optional[float] = None  # peak dense throughput for MFU where the table has no entry


@dataclass
class DtypeConf:
    name: str = "float32"
    params: str = "float32"              # float32 | float16 | bfloat16 | int8 (weight-only, inference)
    autocast: Optional[str] = None       # bfloat16 | float16: mixed precision over float32 weights


MAX_BATCH = "max"  # batch.size=max: the largest batch whose estimated training peak fits the memory budget


@dataclass
class BatchConf:
    size: Any = 1                        # an integer >= 1, or max (checked in resolve: OmegaConf has no int | str)
    seq_len: Optional[int] = None        # None = the model's default_seq_len
    image_size: Optional[int] = None     # image models only; None = the model's image_size
    memory_budget_gib: Optional[float] = None  # batch.size=max: None = the device's available x measure.memory_share


@dataclass
class OptimizerConf:
    name: str = "adamw"                  # none | sgd | sgd_momentum | adam | adamw | adafactor | galore_adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    rank: int = 128                      # galore_adamw: the gradients' projection rank
    update_proj_gap: int = 200           # galore_adamw: steps between the SVDs that refresh the projection
    scale: float = 0.25                  # galore_adamw: the projected step's scale


@dataclass
class TrainConf:
    mode: str = "full"                   # full | frozen_backbone | lora | dora | inference
    trainable_layers: int = 0            # frozen_backbone: the last k blocks train too (the head always does)
    rank: int = 8                        # lora
    alpha: float = 16.0                  # lora: the update is scaled by alpha / rank
    targets: list[str] = field(default_factory=lambda: ["qkv", "out"])  # lora: names of the linear layers


@dataclass
class MeasureConf:
    count: bool = True
    time: bool = True                    # ignored on meta
    warmup: int = 2
    repeats: int = 10
    timing: str = "full"                 # full | per_block (time one block of each kind, times the count)
    module_depth: int = 3
    profile: bool = False                # the module profile: every module, with forward latency when timed
    causal_attention: str = "full"       # full (S^2, the MFU convention) | half (unmasked pairs only)
    seed: int = 0
    memory_check: bool = True            # cpu/cuda: skip a job whose meta-estimated training peak does not fit
    memory_share: float = 0.8            # ... in this share of the memory available (MemAvailable, CUDA free)


@dataclass
class TrackingConf:
    kind: str = "local"                  # local (SQLite store under dir/) | server (uri) | none
    uri: Optional[str] = None            # server only; else MLFLOW_TRACKING_URI
    experiment: str = "flopsweep"
    dir: str = "outputs"                 # local only: the store and artifacts, relative to the working directory


@dataclass
class Schema:
    model: Any = MISSING
    device: DeviceConf = field(default_factory=DeviceConf)
    dtype: DtypeConf = field(default_factory=DtypeConf)
    batch: BatchConf = field(default_factory=BatchConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    train: TrainConf = field(default_factory=TrainConf)
    measure: MeasureConf = field(default_factory=MeasureConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    skip_existing: bool = False          # skip a job whose fingerprint already has a FINISHED run (resume)


def register_configs() -> None:
    """Register the schema and the sweep presets (``+sweep=NAME``) with Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from flopsweep.models import FAMILIES, family

    store = ConfigStore.instance()
    store.store(name="schema", node=Schema)
    # each family's dataclass is the typed base of its presets (``defaults: [_decoder, _self_]``), so every
    # field can be overridden from the command line and is type-checked when composed
    for name in FAMILIES:
        if name != "custom":
            store.store(group="model", name=f"_{name}", node=family(name).Config)
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose_config(*overrides: str) -> DictConfig:
    """The job config the ``flopsweep`` command would compose for these overrides (for tools and tests)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))


PARAM_DTYPES = ("float32", "float16", "bfloat16", "int8")
AUTOCAST_DTYPES = ("bfloat16", "float16")
OPTIMIZERS = ("none", "sgd", "sgd_momentum", "adam", "adamw", "adafactor", "galore_adamw")  # none: no step
TRAIN_MODES = ("full", "frozen_backbone", "lora", "dora", "inference")


def trains(params_dtype: str, train_mode: str) -> bool:
    """Whether a job takes a training step: not int8 weights (measured for inference only), not train=inference."""
    return params_dtype != "int8" and train_mode != "inference"


@dataclass(frozen=True)
class JobSpec:
    """A validated job: everything the build and measure stages need. ``batch.size`` is :data:`MAX_BATCH` for
    ``batch.size=max`` until :func:`flopsweep.job.run_job` has chosen the batch (``memory_budget``: bytes, if set)."""

    model: ModelConfig
    family: ModuleType
    batch: BatchShape
    device: str                          # "cpu", "cuda:0", "meta"
    params_dtype: str
    autocast: Optional[str]
    optimizer: OptimizerConf
    measure: MeasureConf
    peak_tflops: Optional[float]
    threads: Optional[int]
    train: TrainConf = field(default_factory=TrainConf)
    memory_budget: Optional[int] = None  # batch.size=max: batch.memory_budget_gib in bytes; None = from the device

    @property
    def training(self) -> bool:
        return trains(self.params_dtype, self.train.mode)

    @property
    def wants_max_batch(self) -> bool:
        return self.batch.size == MAX_BATCH


def resolve(cfg: DictConfig) -> JobSpec:
    """Validate a composed config. Every check names the offending key; nothing is built here."""
    from flopsweep.models import family as load_family

    model_fields = OmegaConf.to_container(cfg.model, resolve=True)
    require(isinstance(model_fields, dict) and "family" in model_fields, "model.family", None,
            "missing: choose a preset (model=gpt2_small) or set model.family")
    name = model_fields.get("name")
    require(name is None or (isinstance(name, str) and name.strip() and not set(name) & set("/\\")), "model.name",
            name, "must be a non-empty name without / (it names the job's folder)")
    fam = load_family(model_fields["family"])
    model_cfg = fam.Config.from_dict(model_fields) if not hasattr(fam, "load") else fam.load(model_fields)

    batch = cfg.batch
    if batch.size != MAX_BATCH:
        require(isinstance(batch.size, int) and not isinstance(batch.size, bool) and batch.size >= 1, "batch.size",
                batch.size, f"must be an integer >= 1 or {MAX_BATCH}")
    if batch.seq_len is not None:
        require_int(batch.seq_len, "batch.seq_len")
    if batch.image_size is not None:
        require_int(batch.image_size, "batch.image_size")
    shape = model_cfg.resolve_batch(batch.size, batch.seq_len, batch.image_size)
    model_cfg.validate(shape)

    device = _resolve_device(cfg.device)
    dtype = cfg.dtype
    require(dtype.params in PARAM_DTYPES, "dtype.params", dtype.params, f"must be one of {', '.join(PARAM_DTYPES)}")
    if dtype.autocast is not None:
        require(dtype.autocast in AUTOCAST_DTYPES, "dtype.autocast", dtype.autocast,
                f"must be one of {', '.join(AUTOCAST_DTYPES)} or null")
        require(dtype.params == "float32", "dtype.autocast", dtype.autocast,
                f"mixed precision needs float32 weights, not dtype.params={dtype.params}")

    opt = cfg.optimizer
    require(opt.name in OPTIMIZERS, "optimizer.name", opt.name, f"must be one of {', '.join(OPTIMIZERS)}")
    require(0 < opt.lr < math.inf, "optimizer.lr", opt.lr, "must be a finite number > 0")
    require(0 < opt.eps < math.inf, "optimizer.eps", opt.eps, "must be a finite number > 0")
    if opt.name == "galore_adamw":
        require_int(opt.rank, "optimizer.rank")
        require_int(opt.update_proj_gap, "optimizer.update_proj_gap")
        require(0 < opt.scale < math.inf, "optimizer.scale", opt.scale, "must be a finite number > 0")
    require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "must be in [0, 1)")
    require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be >= 0")
    require(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), "optimizer.betas", list(opt.betas),
            "must be two numbers in [0, 1)")

    train = TrainConf(**OmegaConf.to_container(cfg.train, resolve=True))
    require(train.mode in TRAIN_MODES, "train.mode", train.mode, f"must be one of {', '.join(TRAIN_MODES)}")
    require(dtype.params != "int8" or train.mode in ("full", "inference"), "train.mode", train.mode,
            "int8 weights are an inference build: use dtype=float32 (or bfloat16) to train")
    if train.mode == "frozen_backbone":
        require(hasattr(fam, "HEAD"), "train.mode", train.mode,
                f"the {model_fields['family']} family has no head and block stack to keep trainable")
        require_int(train.trainable_layers, "train.trainable_layers", 0)
    if train.mode in ("lora", "dora"):
        require_int(train.rank, "train.rank")
        require(train.alpha > 0, "train.alpha", train.alpha, "must be > 0")
        require(len(train.targets) > 0, "train.targets", list(train.targets), "must name at least one linear layer")

    measure = cfg.measure
    require(is_number(measure.memory_share) and 0 < measure.memory_share <= 1, "measure.memory_share",
            measure.memory_share, "must be a number in (0, 1]")
    budget = _memory_budget(batch, device, trains(dtype.params, train.mode))
    require_int(measure.warmup, "measure.warmup", 0)
    require_int(measure.repeats, "measure.repeats")
    require_int(measure.module_depth, "measure.module_depth", 0)
    require(not measure.profile or measure.count, "measure.profile", True,
            "needs the counted step (measure.count=true): the profile is per-module FLOPs and latency")
    require(measure.timing in ("full", "per_block"), "measure.timing", measure.timing, "must be full or per_block")
    require(measure.causal_attention in ("full", "half"), "measure.causal_attention", measure.causal_attention,
            "must be full or half")
    require(cfg.tracking.kind in ("local", "server", "none"), "tracking.kind", cfg.tracking.kind,
            "must be local, server or none")
    require(not cfg.skip_existing or cfg.tracking.kind != "none", "skip_existing", True,
            "needs a store to find finished runs in: tracking=local or tracking=server")
    if cfg.device.threads is not None:
        require_int(cfg.device.threads, "device.threads")
        cpus = os.cpu_count() or 1
        require(cfg.device.threads <= cpus, "device.threads", cfg.device.threads, f"must be at most {cpus}, the CPUs "
                "here (more threads than CPUs only slow the timing, and too many crash OpenMP)")
    if cfg.device.peak_tflops is not None:
        require(cfg.device.peak_tflops > 0, "device.peak_tflops", cfg.device.peak_tflops, "must be > 0")

    return JobSpec(model=model_cfg, family=fam, batch=shape, device=device, params_dtype=dtype.params,
                   autocast=dtype.autocast, optimizer=OptimizerConf(**OmegaConf.to_container(opt)),
                   measure=MeasureConf(**OmegaConf.to_container(measure)),
                   peak_tflops=cfg.device.peak_tflops, threads=cfg.device.threads, train=train, memory_budget=budget)


def _memory_budget(batch: DictConfig, device: str, training: bool) -> Optional[int]:
    """``batch.memory_budget_gib`` in bytes, checked; for ``batch.size=max``, what the search needs."""
    gib = batch.memory_budget_gib
    if gib is not None:
        require(is_number(gib) and 0 < gib < math.inf, "batch.memory_budget_gib", gib,
                "must be a finite number of GiB > 0")
    if batch.size != MAX_BATCH:
        return None
    require(training, "batch.size", MAX_BATCH, "sizes a training step: it needs train.mode other than inference "
            "and weights that train (not dtype=int8)")
    require(gib is not None or device != "meta", "batch.memory_budget_gib", None,
            "missing: batch.size=max on device=meta needs a budget (meta has no memory of its own)")
    return None if gib is None else int(gib * 2**30)


def _resolve_device(device: DictConfig) -> str:
    import torch

    kind = DeviceType(device.type)
    if kind is DeviceType.auto:
        kind = DeviceType.cuda if torch.cuda.is_available() else DeviceType.cpu
    if kind is DeviceType.cuda:
        require(torch.cuda.is_available(), "device.type", "cuda", "no CUDA GPU is visible to PyTorch here")
        require_int(device.index, "device.index", 0)
        require(device.index < torch.cuda.device_count(), "device.index", device.index,
                f"only {torch.cuda.device_count()} CUDA device(s) visible")
        return f"cuda:{device.index}"
    return kind.value

