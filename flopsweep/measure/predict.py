"""A step's time predicted from its counted ops (:class:`~flopsweep.measure.ops.OpTrace`) and a part's calibration
(:class:`~flopsweep.measure.calibration.Calibration`); no torch, no device: a count on ``meta`` predicts any part.

Each op's body takes ``max(compute, memory)``: compute is its matmul FLOPs at the calibrated matmul (or attention)
throughput for its shape and dtype; memory is its bytes read and written on the measured memory curve (elementwise
ops, reductions and copies are memory-bound: their arithmetic hides under their traffic on GPUs and on the CPUs
measured). Views move nothing. Each op also costs its dispatch and launch. The optimizer's state is made in the
counted (first) step only: its fills are left out, the prediction is of every later step.

- On a CPU the ops run one after another: a phase is the sum of bodies and launches.
- On a GPU the host issues ops ahead of the device: the host spends each op's launch, the device starts an op when
  both it is issued and the previous one is done; a phase ends when the device does. Where the host falls behind
  (small ops), the device's idle time is the launch-bound share.
- ``fused`` (compiled code, or hand-fused kernels): consecutive memory-bound ops between two matmuls or attention
  kernels are one kernel that moves the bytes of the widest of them (intermediates stay in registers), with one
  launch; views cost nothing; a matmul with a dimension that is no multiple of 8 runs at the aligned speed (Inductor
  pads such matmuls; eager code runs them on the calibrated unaligned curve, several times slower on GPUs).

Docs: docs/conventions.md, "Predicted time".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from flopsweep.measure.calibration import Calibration
from flopsweep.measure.ops import ATTENTION, ATTENTION_BACKWARD, MATMUL, MEMORY, VIEW, OpSig, OpTrace

STATE_FILLS = {"aten.zeros_like", "aten.zeros", "aten.full_like", "aten.ones_like"}  # the optimizer's first step
FOREACH_TENSORS_PER_KERNEL = 48  # a CUDA _foreach_ op launches a kernel per chunk of tensors (multi_tensor_apply)


@dataclass(frozen=True)
class PhaseTime:
    """A phase's predicted seconds and how they split: compute-bound bodies, memory-bound bodies, launches."""

    seconds: float
    compute: float
    memory: float
    launch: float


@dataclass(frozen=True)
class Prediction:
    phases: dict[str, PhaseTime]
    part: str
    digest: str
    default: bool           # the profile is a default (published figures), not measured here
    fused: bool
    peak: dict[str, float] = field(default_factory=dict)  # the part's dense FLOP/s by dtype, where known
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases.values())

    def shares(self) -> dict[str, float]:
        """Of the predicted step: compute, memory and launch, adding up to 1."""
        total = self.seconds or 1.0
        return {kind: sum(getattr(p, kind) for p in self.phases.values()) / total
                for kind in ("compute", "memory", "launch")}

    def bound(self) -> str:
        shares = self.shares()
        return max(shares, key=shares.get)


class TimeModel:
    """Seconds of one op's body on a calibrated part (curves fitted once per model)."""

    def __init__(self, cal: Calibration, autocast: Optional[str] = None, fused: bool = False):
        self.cal, self.autocast, self.fused = cal, autocast, fused
        self.memory = cal.memory_curve()
        self.notes: set[str] = set()
        self._dtype_of: dict[str, tuple[Optional[str], float]] = {}

    def dtype(self, dtype: str) -> tuple[Optional[str], float]:
        """The calibrated dtype a matmul of ``dtype`` is predicted with, and how many times faster than that curve it
        runs: under autocast, a float32 one in the autocast dtype (a count on meta runs without autocast); itself;
        an 8-bit one (``fp8``, ``int8``) the profile did not measure, at the bfloat16 curve's share of its own peak
        (a part's low-precision tensor cores reach the fraction of their peak its 16-bit ones do); else float32,
        else any."""
        if self.autocast is not None and dtype == "float32":
            dtype = self.autocast
        if dtype not in self._dtype_of:
            have, peak = self.cal.dtypes(), self.cal.peak
            chosen, speed = dtype, 1.0
            if dtype not in have and dtype in ("fp8", "int8") and "bfloat16" in have and \
                    peak.get(dtype) and peak.get("bfloat16"):
                chosen, speed = "bfloat16", peak[dtype] / peak["bfloat16"]
                self.notes.add(f"no {dtype} matmuls in the profile of {self.cal.part}: predicted at its bfloat16 "
                               f"curve's share of the {dtype} peak ({speed:g}x bfloat16's)")
            elif dtype not in have:
                chosen = "float32" if "float32" in have else (have[0] if have else None)
                if dtype in ("float32", "bfloat16", "float16", "fp8", "int8"):
                    self.notes.add(f"no {dtype} matmuls in the profile of {self.cal.part}: predicted as {chosen}")
            self._dtype_of[dtype] = (chosen, speed)
        return self._dtype_of[dtype]

    def body(self, sig: OpSig) -> tuple[float, float]:
        """(compute seconds, memory seconds) of one call."""
        if sig.kind not in (MATMUL, ATTENTION, ATTENTION_BACKWARD) or not sig.matmul:  # memory-bound
            memory = self.cal.memory_time(sig.bytes, sig.allocated, sig.inplace)
            return 0.0, memory * self.cal.memory_factors.get(sig.op, 1.0)
        memory = self.memory(sig.bytes) if sig.bytes else 0.0
        dtype, speed = self.dtype(sig.dtype)
        if sig.kind == MATMUL:
            groups, m, k, n = sig.dims
            curve = self.cal.matmul_curve(dtype) if dtype else None
            if not self.fused and dtype in self.cal.matmul_unaligned and not sig.aligned:
                curve = self.cal.matmul_curve(dtype, aligned=False) or curve
            return (sig.matmul / (speed * curve(groups * m, k, n)) if curve else 0.0), memory
        bh, sq, sk, d, causal = sig.dims
        backward = sig.kind == ATTENTION_BACKWARD
        flops = 4 * bh * sq * sk * d * (2 if backward else 1)  # the curves' convention: the full Sq x Sk, whatever
        curve = self.cal.attention_curve(dtype, bool(causal), backward) if dtype else None  # causal_attention counted
        if curve is not None:
            return flops / curve(bh, sq, sk, d), memory
        curve = self.cal.matmul_curve(dtype) if dtype else None
        self.notes.add(f"no attention kernels in the profile of {self.cal.part}: predicted as matmuls")
        return (flops / curve(bh * sq, d, sk) if curve else 0.0), memory

def body_seconds(trace: OpTrace, cal: Calibration, ops: set[str], *, autocast: Optional[str] = None) -> float:
    """Seconds of the bodies of the calls of ``ops`` (names: ``aten._grouped_mm``) in every phase of ``trace`` but
    the optimizer's, each the longer of its compute and its memory time: a part of the step to scale apart."""
    model = TimeModel(cal, autocast)
    return sum(max(model.body(trace.sigs[i])) for phase, calls in trace.phases.items() if phase != "optimizer"
               for i in calls if trace.sigs[i].op in ops)


def predict(trace: OpTrace, cal: Calibration, *, fused: bool = False, autocast: Optional[str] = None) -> Prediction:
    """The step's time on ``cal``'s part; ``autocast``: the dtype float32 matmuls run in (mixed precision)."""
    model = TimeModel(cal, autocast, fused)
    on_gpu = cal.device == "cuda"
    phases = {}
    for phase, calls in trace.phases.items():
        ops = [trace.sigs[i] for i in calls]
        if phase == "optimizer":
            ops = [sig for sig in ops if sig.op not in STATE_FILLS]
        launch = cal.launch_backward_s if phase == "backward" and cal.launch_backward_s else cal.launch_s
        compiled = fused and phase != "optimizer"  # torch.compile compiles the model, not the optimizer's step
        kernels = list(_fused(ops, model) if compiled else _eager(ops, model, launch, cal, on_gpu))
        calls = trace.module_calls.get(phase, 0)
        if calls and kernels and not compiled:  # the modules' own Python, spread over the phase's ops
            each = calls * cal.module_s / len(kernels)
            kernels = [(host + each, c, m) for host, c, m in kernels]
        phases[phase] = (_device_queue if on_gpu else _serial)(kernels, cal)
    return Prediction(phases, cal.part, cal.digest(), cal.default, fused, dict(cal.peak), tuple(sorted(model.notes)))


# a kernel to run: (host seconds to issue it, compute seconds, memory seconds)
Kernel = tuple[float, float, float]


def _eager(ops: list[OpSig], model: TimeModel, launch: float, cal: Calibration, on_gpu: bool):
    for sig in ops:
        if sig.kind == VIEW:
            yield cal.view_s, 0.0, 0.0
            continue
        compute, memory = model.body(sig)
        if sig.tensors > 1:  # a _foreach_ op: a kernel per chunk of tensors on a GPU, per tensor on a CPU (a C++ loop)
            issue = launch * math.ceil(sig.tensors / FOREACH_TENSORS_PER_KERNEL) if on_gpu else \
                (cal.launch_backward_s or launch) * sig.tensors
            yield issue, compute, memory
        else:
            yield launch, compute, memory


def _fused(ops: list[OpSig], model: TimeModel):
    """Runs of memory-bound ops between matmul-class kernels fused into one kernel each."""
    group: list[OpSig] = []

    def flush():
        if group:
            widest = max(sig.bytes for sig in group)
            yield model.cal.launch_s, 0.0, model.memory(widest) if widest else 0.0
            group.clear()

    for sig in ops:
        if sig.kind == VIEW:
            continue
        if sig.kind == MEMORY:
            group.append(sig)
            continue
        yield from flush()
        compute, memory = model.body(sig)
        yield model.cal.launch_s, compute, memory
    yield from flush()


def _serial(kernels: list[Kernel], cal: Calibration) -> PhaseTime:
    compute = memory = launch = 0.0
    for host, c, m in kernels:
        launch += host
        if c >= m:
            compute += c
        else:
            memory += m
    return PhaseTime(compute + memory + launch, compute, memory, launch)


def _device_queue(kernels: list[Kernel], cal: Calibration) -> PhaseTime:
    """The host issues, the device runs when both issued and free; the device's waits are the launch-bound time."""
    host = device = compute = memory = idle = 0.0
    shortest = cal.graph_launch_s or 0.0  # the least a kernel takes on the device
    for issue, c, m in kernels:
        host += issue
        if c == 0.0 and m == 0.0:  # a view: the host's work only
            continue
        start = max(device, host)
        idle += start - device
        body = max(c, m, shortest)
        device = start + body
        if c >= m:
            compute += body
        else:
            memory += body
    return PhaseTime(device, compute, memory, idle)
