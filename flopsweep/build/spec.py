"""The validated job: everything the build, measure and run stages need, as :func:`flopsweep.config.resolve.resolve`
makes it from a composed config. Nothing below the config reads the Hydra config again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from flopsweep.build.optimizers import OptimizerConf
from flopsweep.build.train_modes import TrainConf, Workload, trains
from flopsweep.core.device import Device
from flopsweep.measure.layout import ParallelConf
from flopsweep.measure.settings import GenerateConf, MeasureConf, PredictConf
from flopsweep.models.base import BatchShape, Family, ModelConfig
from flopsweep.sinks.target import Target

MAX_BATCH = "max"  # batch.size=max: the largest batch whose estimated training peak fits the memory budget

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int8": torch.float32}  # int8 weights are stored quantised; arithmetic runs in float32


@dataclass(frozen=True)
class Precision:
    """The weights' dtype (``dtype.params``) and mixed precision's compute dtype over float32 weights
    (``dtype.autocast``), by name as results record them."""

    params: str = "float32"            # float32 | float16 | bfloat16 | int8 (weight-only, inference)
    autocast: Optional[str] = None     # bfloat16 | float16

    @property
    def compute(self) -> str:
        """The dtype the arithmetic runs in: what the FLOPs and the peak they are compared with are in."""
        return self.autocast or self.params

    @property
    def int8(self) -> bool:
        return self.params == "int8"

    @property
    def weights(self) -> torch.dtype:
        """The dtype the model is made in (int8 weights are quantised from float32 ones)."""
        return DTYPES[self.params]

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return DTYPES[self.autocast] if self.autocast else None


@dataclass(frozen=True)
class MaxBatch:
    """``batch.size=max``: choose the largest batch whose estimated training peak fits ``budget_bytes``
    (``batch.memory_budget_gib``), or, where None, ``measure.memory_share`` of what the device has."""

    budget_bytes: Optional[int] = None


@dataclass(frozen=True)
class JobSpec:
    """A validated job. ``batch`` can always be built; ``max_batch`` set: the run stage chooses the batch size
    first (batch 1 until then)."""

    model: ModelConfig
    family: Family
    batch: BatchShape
    device: Device
    dtype: Precision
    optimizer: OptimizerConf
    measure: MeasureConf
    peak_tflops: Optional[float]
    threads: Optional[int]
    workload: Workload = Workload.train
    train: TrainConf = field(default_factory=TrainConf)
    max_batch: Optional[MaxBatch] = None
    generate: GenerateConf = field(default_factory=GenerateConf)
    predict: PredictConf = field(default_factory=PredictConf)
    parallel: Optional[ParallelConf] = None  # set: the layout counted rank by rank (run/parallel.py)
    tracking: Optional[Target] = None        # where the run is logged; None: tracking=none
    skip_existing: bool = False              # a finished run of the same fingerprint in the store: not measured again
    model_source: Optional[dict[str, Any]] = None  # a file defining the model beyond its fields (ModelConfig.source)
    notes: tuple[str, ...] = ()              # what flopsweep chose that was not given, said before the job

    @property
    def generates(self) -> bool:
        return self.workload is Workload.generate

    @property
    def training(self) -> bool:
        return trains(self.dtype.params, self.workload)
