"""Default profiles for parts nobody calibrated here: the hardware table's peaks and bandwidth, shaped by published
measurements (each source named in the profile), and marked ``default``; and the profile a job predicts with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flopsweep.core.hardware import Accelerator, accelerator
from flopsweep.measure.calibration import Calibration, find_profile, profile_dir

# A matmul's share of the dense peak, from LLMCompass's measured A100 GEMMs (M x 12288 x 12288: 92% of peak at
# M = 8192, 83% at 1024, 33% at 64): peak share 0.93 and a knee of 115 in each dimension fit all three within 2%.
MATMUL_SHARE, MATMUL_KNEE = 0.93, 115.0
MEMORY_SHARE = 0.85             # of the datasheet's bandwidth, for large transfers (STREAM-like copies on HBM)
DEFAULT_SOURCES = {
    "matmul": "LLMCompass, measured A100 GEMMs (ae/figure5/ab/real_hardware/matmul_A100.csv), as shares of peak",
    "memory": f"{MEMORY_SHARE:.0%} of the datasheet bandwidth",
    "launch": "measured on the H100 machine lent to flopsweep (its host's CPU): calibrate the part to replace it",
}
GRID = (16, 64, 256, 1024, 4096, 16384)


@dataclass(frozen=True)
class Saturating:
    """``peak * prod(x_i / (x_i + c_i))``: a throughput that grows with each dimension and saturates at ``peak`` (the
    shape of the default profiles' curves, :mod:`flopsweep.measure.defaults`)."""

    peak: float
    knees: tuple[float, ...]

    def __call__(self, *xs: float) -> float:
        value = self.peak
        for x, c in zip(xs, self.knees):
            value *= x / (x + c)
        return value


# parts calibrated on a GPU lent to this project (benchmarks/gpu/run.sh), shipped as data; a part beside one of them
# with the same compute and another memory is that profile with its memory scaled by the bandwidths of the table
MEASURED = {"H100": "nvidia-h100-80gb-hbm3.json"}
SAME_COMPUTE = {"H200": "H100"}
DATA = Path(__file__).with_name("data")


def default_profile(acc: Accelerator) -> Calibration:
    """A profile of ``acc`` not calibrated on this machine: a profile measured on the same part elsewhere (shipped),
    else one of a part of the same compute with its memory scaled, else the table's row shaped by published
    efficiencies. Marked ``default`` either way."""
    base = SAME_COMPUTE.get(acc.name, acc.name)
    if base in MEASURED:
        cal = Calibration.load(DATA / MEASURED[base])
        cal.default, cal.sources = True, {**cal.sources, "default": f"measured on an {base} for flopsweep, shipped"}
        if base != acc.name:
            other = accelerator(base)
            cal = cal.scaled(bandwidth=acc.bandwidth / other.bandwidth)
            cal.part = acc.name
            cal.sources["default"] += f"; memory scaled to the {acc.name}'s bandwidth"
        return cal
    return _from_table(acc)


def _from_table(acc: Accelerator) -> Calibration:
    """A profile of ``acc`` from its table row and the published shapes of efficiency (no measurement here)."""
    # the host's costs (its CPU, driver and PyTorch, not the GPU's) as measured on the H100 machine lent to flopsweep
    host = Calibration.load(DATA / MEASURED["H100"])
    cal = Calibration(part=acc.name, device="cuda", default=True, sources={**DEFAULT_SOURCES, "peak": acc.source},
                      peak={d: acc.peak(d) for d in acc.peak_tflops if acc.peak(d)}, graph_timed=True,
                      launch_s=host.launch_s, launch_backward_s=host.launch_backward_s, view_s=host.view_s,
                      module_s=host.module_s, graph_launch_s=host.graph_launch_s)
    for dtype in ("float32", "bfloat16", "float16", "fp8"):
        peak = acc.peak(dtype)
        if peak is None:
            continue
        curve = Saturating(MATMUL_SHARE * peak, (MATMUL_KNEE,) * 3)
        cal.matmul[dtype] = [[m, k, n, 2 * m * k * n / curve(m, k, n)] for m in GRID for k in GRID for n in GRID]
    bandwidth = MEMORY_SHARE * acc.bandwidth  # points of the device's time alone (graph_timed): launches apart
    cal.memory = [[2.0 ** p, max(cal.graph_launch_s or 0.0, 2.0 ** p / bandwidth)] for p in range(10, 34, 2)]
    return cal


def profile_for(hardware: Optional[str], device_name: Optional[str], gpu: bool) -> tuple[Optional[Calibration], str]:
    """The profile to predict with, and where it came from: ``hardware`` (a profile file, or a part: calibrated here,
    else its default), else the device a job timed on (calibrated here; a GPU of the table: its default). A CPU is
    never looked up in the table (an AMD A10-7850K is no A10G)."""
    if hardware is not None and hardware.endswith(".json"):
        return Calibration.load(Path(hardware)), f"profile {hardware}"
    name = hardware if hardware is not None else device_name
    if name is None:
        return None, "no part to predict for: set predict.hardware"
    acc = accelerator(name) if hardware is not None or gpu else None
    found = find_profile(name) or (find_profile(acc.name) or _calibrated_as(acc) if acc is not None else None)
    if found is not None:
        return found, f"calibrated on this machine ({profile_dir()})"
    if acc is not None:
        cal = default_profile(acc)  # a profile shipped for its part, or the table's row: said which
        return cal, f"{cal.sources.get('default', 'default curves from the table and published efficiencies')}; " \
                    "not calibrated here"
    return None, f"{name} is not calibrated here: run flopsweep-calibrate --device {'cuda' if gpu else 'cpu'}"


def _calibrated_as(acc: Accelerator) -> Optional[Calibration]:
    """A profile calibrated here on a device that the table knows as ``acc`` (saved under the device's full name)."""
    folder = profile_dir()
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        try:
            cal = Calibration.load(path)
        except (ValueError, OSError):
            continue
        if cal.device == "cuda" and accelerator(cal.part) is acc:
            return cal
    return None
