"""How a job measures: the ``measure`` node of the config, and the ``generate`` node of ``workload=generate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
    compile: bool = False                # time the step under torch.compile (counts stay the eager step's)


@dataclass
class PredictConf:
    """The ``predict`` node: a step's time predicted from its counted ops and a calibration profile."""

    hardware: Optional[str] = None  # a part (hardware table) or a profile file; None: the device timed, if calibrated
    fused: Optional[bool] = None  # elementwise ops fused into kernels; None: as the step is timed (measure.compile)


@dataclass
class GenerateConf:
    """The ``generate`` node: what ``workload=generate`` generates after its prompt of ``batch.seq_len`` tokens."""

    new_tokens: int = 128
