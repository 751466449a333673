"""The validated job: everything the build, measure and run stages need, as :func:`flopsweep.config.resolve.resolve`
makes it from a composed config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from flopsweep.build.optimizers import OptimizerConf
from flopsweep.build.train_modes import TRAIN_MODES, TrainConf, trains
from flopsweep.measure.layout import ParallelConf
from flopsweep.measure.settings import GenerateConf, MeasureConf, PredictConf
from flopsweep.models.base import BatchShape, Family, ModelConfig

MAX_BATCH = "max"  # batch.size=max: the largest batch whose estimated training peak fits the memory budget


@dataclass(frozen=True)
class JobSpec:
    """A validated job. ``batch.size`` is :data:`MAX_BATCH` for ``batch.size=max`` until the run stage has chosen
    the batch (``memory_budget``: bytes, if set)."""

    model: ModelConfig
    family: Family
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
    generate: GenerateConf = field(default_factory=GenerateConf)
    predict: PredictConf = field(default_factory=PredictConf)
    parallel: Optional[ParallelConf] = None  # set: the layout counted rank by rank (run/parallel.py)

    @property
    def generates(self) -> bool:
        return TRAIN_MODES[self.train.mode].generates

    @property
    def training(self) -> bool:
        return trains(self.params_dtype, self.train.mode)

    @property
    def wants_max_batch(self) -> bool:
        return self.batch.size == MAX_BATCH
