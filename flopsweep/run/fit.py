"""Will a job fit in memory? Its training peak (or its generation's) estimated on ``meta`` (no memory used, any
scale), the memory a device has available, the pre-check that skips a real job which would not fit, and the search
for the largest batch that fits a budget (``batch.size=max``). Nothing here runs a job or prints;
:mod:`flopsweep.run.job` does."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from flopsweep.build.model import Built, build, example_inputs
from flopsweep.build.spec import JobSpec
from flopsweep.core.device import META, Device
from flopsweep.core.text import size_bytes
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.measure.generate import simulate_generation
from flopsweep.measure.size import SizeRecord, measure_size, simulate_step
from flopsweep.run.generation import generator

SEARCH_LIMIT = 1 << 24  # batch.size=max stops here for a model whose memory does not grow with the batch


def with_batch_size(spec: JobSpec, size: int) -> JobSpec:
    return dataclasses.replace(spec, batch=dataclasses.replace(spec.batch, size=size))


@dataclass(frozen=True)
class Estimate:
    """A job's memory at one batch size, from meta: its sizes (as a counted job reports them) and the peak of a
    simulated step. ``peak_bytes``, the figure every check uses, is the larger of ``size/train_peak_bytes``
    (everything static plus every saved activation at once) and the simulated peak (temporaries included)."""

    size: SizeRecord  # with its simulated step (``size.step``)

    @property
    def step_peak_bytes(self) -> int:
        return self.size.step.peak_bytes

    @property
    def peak_bytes(self) -> int:
        # the simulated step holds the weights and buffers too: it is the peak of an inference build
        return max(self.size.train_peak_bytes or 0, self.step_peak_bytes)


class MetaEstimate:
    """The job's model built once on ``meta`` and sized at any batch size. The optimizer takes a step on zero
    gradients first, so that its state exists, as in every step after the first; each batch size then costs one
    simulated step on meta (forward, backward, optimizer step: well under a second for a 7B model), which records
    the activations saved for backward and the most bytes alive at once (:func:`simulate_step`)."""

    def __init__(self, spec: JobSpec):
        self.spec = dataclasses.replace(spec, device=META)
        started = time.perf_counter()
        self.built: Built = build(self.spec)
        with MetaLikeCPU():  # Adafactor's step reads norms with .item()
            self.built.create_optimizer_state()
        self._estimates: dict[int, Estimate] = {}
        self.seconds = time.perf_counter() - started

    def at(self, batch_size: int) -> Estimate:
        if batch_size not in self._estimates:
            started = time.perf_counter()
            built, spec = self.built, self.spec
            built.model.zero_grad(set_to_none=True)
            inputs = example_inputs(spec, dataclasses.replace(spec.batch, size=batch_size))
            with MetaLikeCPU():  # the attention kernel the CPU would run, so activations match a cpu job's
                if spec.generates:
                    gen, tokens = generator(spec, built, batch_size)
                    step = simulate_generation(built.model, gen, tokens, spec.batch.seq_len,
                                               spec.generate.new_tokens, context=built.autocast, int8=spec.dtype.int8)
                else:
                    step = simulate_step(built.model, inputs, built.optimizer, built.autocast,
                                         training=spec.training, int8=spec.dtype.int8)
            size = measure_size(built.model, inputs, built.optimizer, built.autocast, training=spec.training,
                                int8=spec.dtype.int8, activations=step.activations_bytes)
            self._estimates[batch_size] = Estimate(dataclasses.replace(size, step=step))
            self.seconds += time.perf_counter() - started
        return self._estimates[batch_size]

    def size(self, batch_size: int) -> SizeRecord:
        return self.at(batch_size).size

    def peak(self, batch_size: int) -> int:
        return self.at(batch_size).peak_bytes

    @property
    def estimates(self) -> dict[int, int]:
        """Every batch size estimated so far, and its peak in bytes."""
        return {b: e.peak_bytes for b, e in sorted(self._estimates.items())}


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # where the figure comes from, for the reason a job was skipped


def memory_limit(share: float, available: Available) -> int:
    """The bytes a job may use: ``measure.memory_share`` of what is available."""
    return int(share * available.bytes)


def available_memory(device: Device) -> Optional[Available]:
    """What the device can still allocate: on ``cuda:i`` the driver's free memory plus what this process's caching
    allocator holds unused; on ``cpu`` MemAvailable (``/proc/meminfo``), or less where this process's cgroup
    has a lower limit; None on ``meta`` or where it cannot be told (no ``/proc``)."""
    if device.is_cuda:
        free, _total = torch.cuda.mem_get_info(torch.device(str(device)))
        cached = torch.cuda.memory_reserved(str(device)) - torch.cuda.memory_allocated(str(device))
        return Available(free + cached, f"free on {device}, torch.cuda.mem_get_info")
    if device.kind != "cpu":
        return None
    info = _meminfo()
    if "MemAvailable" not in info:
        return None
    found = Available(info["MemAvailable"], "MemAvailable in /proc/meminfo")
    room = _cgroup_room()
    return room if room is not None and room.bytes < found.bytes else found


def _meminfo() -> dict[str, int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _cgroup_room(proc_cgroup: Path = Path("/proc/self/cgroup"),
                 root: Path = Path("/sys/fs/cgroup")) -> Optional[Available]:
    """The room left under the memory limits of this process's own cgroup and its ancestors (v2, and v1's memory
    controller), as ``/proc/self/cgroup`` names them: under Slurm or systemd a job's limit is its own cgroup's, not
    the root's. Page cache that can be dropped counts as room; the least room of any level is the room. None where no
    level has a limit."""
    rooms = [room for folder, files in _own_memory_cgroups(proc_cgroup, root)
             if (room := _room_in(folder, *files)) is not None]
    return min(rooms, key=lambda room: room.bytes, default=None)


_V2 = ("memory.max", "memory.current", "inactive_file")
_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def _own_memory_cgroups(proc_cgroup: Path, root: Path) -> list[tuple[Path, tuple[str, str, str]]]:
    """This process's memory cgroup folders, innermost first, up to the hierarchy's root, with their files' names."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    found: list[tuple[Path, tuple[str, str, str]]] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, files = root, _V2
        elif "memory" in controllers.split(","):
            base, files = root / "memory", _V1
        else:
            continue
        folder = base / path.strip().lstrip("/")
        found += [(level, files) for level in [folder, *folder.parents] if level == base or base in level.parents]
    return found or [(root, _V2), (root / "memory", _V1)]


def _room_in(folder: Path, limit_file: str, usage_file: str, stat_key: str) -> Optional[Available]:
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if not limit.isdigit() or int(limit) >= 1 << 60:  # "max", or v1's "no limit"
        return None
    cache = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == stat_key:
                cache = int(value)
    except (OSError, ValueError):
        pass
    return Available(max(0, int(limit) - usage + cache), f"room under the cgroup limit ({folder / limit_file})")


@dataclass(frozen=True)
class MemoryCheck:
    """A real job's estimated peak against ``share`` of the memory its device has available."""

    device: Device
    estimated_bytes: int
    available: Available
    share: float
    seconds: float
    batch: int = 0  # the job's batch.size: at 1 there is no smaller one to advise

    @property
    def limit_bytes(self) -> int:
        return memory_limit(self.share, self.available)

    @property
    def fits(self) -> bool:
        return self.estimated_bytes <= self.limit_bytes

    def reason(self) -> str:
        return (f"estimated training peak {size_bytes(self.estimated_bytes)} ({self.estimated_bytes:,} bytes, on meta) "
                f"exceeds measure.memory_share={self.share} of the {size_bytes(self.available.bytes)} "
                f"({self.available.bytes:,} bytes) available on {self.device} ({self.available.source}): "
                + ("use a smaller batch.size, " if self.batch != 1 else "count it on device=meta (sizes, no time), "
                   "use a shorter batch.seq_len, ")
                + ("raise measure.memory_share, " if self.estimated_bytes <= memory_limit(1.0, self.available)
                   else "")  # not where even all of it is too little
                + "or set measure.memory_check=false to run it anyway")

    def info(self) -> dict[str, Any]:
        return {"estimated_bytes": self.estimated_bytes, "available_bytes": self.available.bytes,
                "available_source": self.available.source, "share": self.share, "limit_bytes": self.limit_bytes,
                "fits": self.fits, "estimate_s": round(self.seconds, 3)}


def check_memory(spec: JobSpec, estimate: MetaEstimate, available: Optional[Available]) -> Optional[MemoryCheck]:
    """The pre-check of a real job (its batch as in ``spec``); None where the available memory is unknown."""
    if available is None:
        return None
    peak = estimate.peak(spec.batch.size)
    return MemoryCheck(spec.device, peak, available, spec.measure.memory_share, estimate.seconds, spec.batch.size)


@dataclass
class BatchSearch:
    """The largest batch whose estimated peak fits ``budget_bytes`` (0: not even one sample fits)."""

    budget_bytes: int
    budget_source: str
    chosen: int
    estimates: dict[int, int] = field(default_factory=dict)  # batch size -> estimated peak bytes, every one tried
    capped: bool = False  # the peak did not grow with the batch: the search stopped at SEARCH_LIMIT

    def info(self) -> dict[str, Any]:
        fitting = self.estimates.get(self.chosen)
        return {"requested": "max", "chosen": self.chosen, "budget_bytes": self.budget_bytes,
                "budget_source": self.budget_source, "estimated_peak_bytes": fitting,
                "next_estimated_peak_bytes": self.estimates.get(self.chosen + 1),
                "method": "meta estimates of the training peak: doubling from batch 1 until one does not fit, a secant "
                          "through the last two that fit, then bisection until batch b fits and b + 1 does not",
                "estimates": [[b, p] for b, p in sorted(self.estimates.items())], "capped": self.capped}


def largest_fitting_batch(peak: Callable[[int], int], budget: int, limit: int = SEARCH_LIMIT) -> tuple[int, bool]:
    """The largest ``b`` in [1, limit] with ``peak(b) <= budget`` (0 if none), for ``peak`` non-decreasing in
    ``b``, and whether that is ``limit`` itself. Doubling from 1 brackets the answer; then a secant through the
    last two fitting points guesses it (the training peak is affine in the batch once the activations outgrow
    the optimizer step's temporaries: weights, gradients and state are fixed, activations grow per sample), the
    guess and its neighbour are tried, and bisection finishes what they leave: about log2(b) + 2 estimates."""
    if peak(1) > budget:
        return 0, False
    lo, hi = 1, None  # peak(lo) fits; peak(hi) does not
    while hi is None:
        if lo == limit:
            return lo, True
        step = min(2 * lo, limit)
        if peak(step) <= budget:
            lo = step
        else:
            hi = step
    if lo > 1:
        previous = lo // 2
        slope = (peak(lo) - peak(previous)) / (lo - previous)
        guess = lo + int((budget - peak(lo)) // slope) if slope > 0 else hi - 1
        guess = min(max(guess, lo + 1), hi - 1)
        if guess > lo:
            if peak(guess) <= budget:
                lo = guess
                if guess + 1 < hi:
                    lo, hi = (guess + 1, hi) if peak(guess + 1) <= budget else (lo, guess + 1)
            else:
                hi = guess
                if guess - 1 > lo:
                    lo, hi = (guess - 1, hi) if peak(guess - 1) <= budget else (lo, guess - 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid) <= budget else (lo, mid)
    return lo, False


def find_max_batch(estimate: MetaEstimate, budget: int, budget_source: str) -> BatchSearch:
    chosen, capped = largest_fitting_batch(estimate.peak, budget)  # chosen + 1 is estimated too, unless capped
    return BatchSearch(budget, budget_source, chosen, estimate.estimates, capped)
