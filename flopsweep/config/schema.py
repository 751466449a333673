"""The typed schema Hydra composes against, and where the configs live (inside an installed wheel, or beside the
package in a source checkout). Each group's dataclass lives beside the code it configures (a model family's
``Config``, :class:`~flopsweep.build.optimizers.OptimizerConf`, ...); the ones here are resolved into plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from flopsweep.build.optimizers import OptimizerConf
from flopsweep.build.train_modes import TrainConf, Workload
from flopsweep.measure.layout import ParallelConf
from flopsweep.measure.settings import GenerateConf, MeasureConf, PredictConf
from flopsweep.sinks.target import TrackingConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]


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


@dataclass
class BatchConf:
    size: Any = 1                        # an integer >= 1, or max (checked in resolve: OmegaConf has no int | str)
    seq_len: Optional[int] = None        # None = the model's default_seq_len
    image_size: Optional[int] = None     # image models only; None = the model's image_size
    memory_budget_gib: Optional[float] = None  # batch.size=max: None = the device's available x measure.memory_share


@dataclass
class Schema:
    model: Any = MISSING
    workload: Workload = Workload.train  # train | inference | generate: what the job runs
    device: DeviceConf = field(default_factory=DeviceConf)
    dtype: DtypeConf = field(default_factory=DtypeConf)
    batch: BatchConf = field(default_factory=BatchConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    train: TrainConf = field(default_factory=TrainConf)
    measure: MeasureConf = field(default_factory=MeasureConf)
    predict: PredictConf = field(default_factory=PredictConf)
    generate: GenerateConf = field(default_factory=GenerateConf)  # workload=generate
    parallel: ParallelConf = field(default_factory=ParallelConf)  # a layout counted rank by rank (device=meta)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    skip_existing: bool = False          # skip a job whose fingerprint already has a FINISHED run (resume)
