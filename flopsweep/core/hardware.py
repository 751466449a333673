"""Accelerators: dense peak throughput by dtype (TFLOP/s; TOP/s for int8), memory and memory bandwidth, each row with
its source, for MFU (matched against ``torch.cuda.get_device_name()``) and for projections (``--gpu NAME``); and the
CPU's model name, a CPU job's device name.

Every figure is dense (no 2:4 sparsity) as the vendor publishes it; memory in GB (10^9 bytes) and bandwidth in GB/s
as published. A user's own part comes from flags or a YAML file (``flopsweep-project --hardware FILE``).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from flopsweep.core.errors import ConfigError, is_number, require

DTYPES = ("float32", "tf32", "bfloat16", "float16", "fp8", "int8")


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_tflops: dict[str, float]   # dense, by compute dtype (DTYPES)
    memory_gb: float
    bandwidth_gbs: float
    source: str
    aliases: tuple[str, ...] = ()   # other names it goes by (in device names too)

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * 1e9

    def peak(self, dtype: str) -> Optional[float]:
        """FLOP/s in ``dtype``, None where the part has no such unit."""
        value = self.peak_tflops.get(dtype)
        return value * 1e12 if value is not None else None


def _nvidia(name: str, fp32: Optional[float], tf32: Optional[float], half: float, fp8: Optional[float],
            int8: Optional[float], memory: float, bandwidth: float, source: str, aliases: tuple[str, ...] = (),
            bf16: bool = True) -> Accelerator:
    peaks = {"float32": fp32, "tf32": tf32, "bfloat16": half if bf16 else None, "float16": half, "fp8": fp8,
             "int8": int8}
    return Accelerator(name, {k: v for k, v in peaks.items() if v is not None}, memory, bandwidth, source, aliases)


# most specific name first, and no name inside an earlier one: "H100 PCIe" before "H100", "A100" before "A10G"
ACCELERATORS: list[Accelerator] = [
    _nvidia("V100", 15.7, None, 125.0, None, None, 32, 900, "NVIDIA Tesla V100 datasheet (SXM2 32 GB)",
            ("V100-SXM2",), bf16=False),
    _nvidia("A100 40GB", 19.5, 156.0, 312.0, None, 624.0, 40, 1555, "NVIDIA A100 datasheet (SXM4 40 GB)",
            ("A100-SXM4-40GB", "A100-PCIE-40GB")),
    _nvidia("A100", 19.5, 156.0, 312.0, None, 624.0, 80, 2039, "NVIDIA A100 datasheet (SXM4 80 GB)",
            ("A100 80GB", "A100-SXM4-80GB")),
    _nvidia("A10G", 31.2, 62.5, 125.0, None, 250.0, 24, 600, "NVIDIA A10 datasheet (AWS's A10G has no datasheet "
            "of its own; its clocks may be lower)", ("A10",)),
    _nvidia("L40S", 91.6, 183.0, 362.05, 733.0, 733.0, 48, 864, "NVIDIA L40S datasheet"),
    _nvidia("L4", 30.3, 60.0, 121.0, 242.5, 242.5, 24, 300, "NVIDIA L4 datasheet"),
    _nvidia("H100 PCIe", 51.0, 378.0, 756.0, 1513.0, 1513.0, 80, 2000, "NVIDIA H100 datasheet (PCIe)"),
    _nvidia("H100", 67.0, 494.7, 989.4, 1978.9, 1978.9, 80, 3350, "NVIDIA H100 datasheet (SXM)",
            ("H100 SXM", "H100 80GB HBM3")),
    _nvidia("H200", 67.0, 494.7, 989.4, 1978.9, 1978.9, 141, 4800, "NVIDIA H200 datasheet (SXM)"),
    _nvidia("GB200", None, 1250.0, 2500.0, 5000.0, 5000.0, 186, 8000, "NVIDIA GB200 NVL72 datasheet, per GPU "
            "(72 GPUs: 180 PFLOP/s bf16, 13.4 TB HBM3e, 576 TB/s)"),
    _nvidia("B200", None, 1100.0, 2250.0, 4500.0, 4500.0, 180, 8000, "NVIDIA DGX B200 datasheet, per GPU "
            "(1,440 GB and 64 TB/s for 8)"),
    Accelerator("MI250X", {"float32": 95.7, "bfloat16": 383.0, "float16": 383.0, "int8": 383.0}, 128, 3277,
                "AMD Instinct MI250X datasheet (matrix fp32)"),
    Accelerator("MI300X", {"float32": 163.4, "tf32": 653.7, "bfloat16": 1307.4, "float16": 1307.4, "fp8": 2614.9,
                           "int8": 2614.9}, 192, 5300, "AMD Instinct MI300X datasheet (matrix fp32)"),
    Accelerator("MI325X", {"float32": 163.4, "tf32": 653.7, "bfloat16": 1307.4, "float16": 1307.4, "fp8": 2614.9,
                           "int8": 2614.9}, 256, 6000, "AMD Instinct MI325X datasheet (matrix fp32)"),
    Accelerator("TPU v4", {"bfloat16": 275.0, "int8": 275.0}, 32, 1200, "Google Cloud TPU v4 documentation"),
    Accelerator("TPU v5e", {"bfloat16": 197.0, "int8": 394.0}, 16, 819, "Google Cloud TPU v5e documentation"),
    Accelerator("TPU v5p", {"bfloat16": 459.0, "int8": 918.0}, 95, 2765, "Google Cloud TPU v5p documentation"),
    Accelerator("TPU v6e", {"bfloat16": 918.0, "int8": 1836.0}, 32, 1640, "Google Cloud TPU v6e (Trillium) "
                "documentation", ("Trillium",)),
]


def _key(name: str) -> str:
    return "".join(name.lower().split()).replace("-", "")


def accelerator(name: str) -> Optional[Accelerator]:
    """The part ``name`` names exactly (``--gpu H100``, case, spaces and dashes aside), else the most specific one
    whose name or alias is inside it (a device name: ``NVIDIA H100 80GB HBM3``); None for an unknown part."""
    key = _key(name)
    for acc in ACCELERATORS:
        if key in {_key(n) for n in (acc.name, *acc.aliases)}:
            return acc
    for acc in ACCELERATORS:
        if any(_key(n) in key for n in (acc.name, *acc.aliases)):
            return acc
    return None


def names() -> list[str]:
    return [acc.name for acc in ACCELERATORS]


def peak_flops(device_name: str, compute_dtype: str, override_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s for the device and the dtype the matmuls run in; None when unknown (then no MFU)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    acc = accelerator(device_name)
    return acc.peak(compute_dtype) if acc is not None else None


def from_fields(fields: Any, origin: str) -> Accelerator:
    """A user's accelerator from a mapping (a YAML file's): ``name``, ``memory_gb``, ``bandwidth_gbs`` and
    ``peak_tflops`` (by dtype); a bad field is named with ``origin``."""
    require(isinstance(fields, dict), "hardware", origin, "must be a mapping of name, peak_tflops, memory_gb, "
            "bandwidth_gbs")
    missing = [k for k in ("name", "peak_tflops", "memory_gb", "bandwidth_gbs") if k not in fields]
    require(not missing, f"hardware.{missing[0] if missing else ''}", None, f"missing in {origin}")
    unknown = sorted(set(fields) - {"name", "peak_tflops", "memory_gb", "bandwidth_gbs", "source"})
    require(not unknown, f"hardware.{unknown[0] if unknown else ''}", None, f"unknown field in {origin}")
    peaks = fields["peak_tflops"]
    require(isinstance(peaks, dict) and peaks, "hardware.peak_tflops", peaks, f"must map dtypes ({', '.join(DTYPES)}) "
            "to TFLOP/s")
    for dtype, value in peaks.items():
        require(dtype in DTYPES, f"hardware.peak_tflops.{dtype}", value, f"is not a dtype ({', '.join(DTYPES)})")
        require(is_number(value) and value > 0, f"hardware.peak_tflops.{dtype}", value, "must be a number > 0")
    for key in ("memory_gb", "bandwidth_gbs"):
        require(is_number(fields[key]) and fields[key] > 0, f"hardware.{key}", fields[key], "must be a number > 0")
    try:
        return Accelerator(str(fields["name"]), {k: float(v) for k, v in peaks.items()}, float(fields["memory_gb"]),
                           float(fields["bandwidth_gbs"]), str(fields.get("source", origin)))
    except (TypeError, ValueError) as err:
        raise ConfigError("hardware", origin, str(err)) from None


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``AMD EPYC 7B13``), as the kernel reports it (the platform's word for it elsewhere): a
    CPU job's device name, and every run's ``host.cpu`` tag."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
