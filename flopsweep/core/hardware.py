"""Accelerators: dense peak throughput by dtype (TFLOP/s; TOP/s for int8), memory and memory bandwidth, each row with
its source, for MFU (matched against ``torch.cuda.get_device_name()``) and for projections (``--gpu NAME``); the
interconnect of the systems each part is sold in (:class:`Interconnect`, :data:`INTERCONNECTS`); and the CPU's model
name, a CPU job's device name.

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
    def interconnect(self) -> Optional["Interconnect"]:
        """How the part's systems join GPUs (None where the table has no figures for it)."""
        return INTERCONNECTS.get(self.name)

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
    _nvidia("H20", 44.0, 74.0, 148.0, 296.0, 296.0, 96, 4000, "NVIDIA HGX H20 specifications as reported "
            "(SemiAnalysis, 2023; NVIDIA publishes no datasheet): dense 148 TFLOP/s bf16, 296 fp8 and int8; 96 GB "
            "HBM3 at 4.0 TB/s"),
    _nvidia("GB200", None, 1250.0, 2500.0, 5000.0, 5000.0, 186, 8000, "NVIDIA GB200 NVL72 datasheet, per GPU "
            "(72 GPUs: 180 PFLOP/s bf16, 13.4 TB HBM3e, 576 TB/s)"),
    _nvidia("B200", None, 1100.0, 2250.0, 4500.0, 4500.0, 180, 8000, "NVIDIA DGX B200 datasheet, per GPU "
            "(1,440 GB and 64 TB/s for 8)"),
    _nvidia("B300", 75.0, 1125.0, 2250.0, 4500.0, None, 288, 8000, "NVIDIA HGX B300 datasheet, per GPU of 8: dense "
            "half its sparse figures (36 PFLOP/s bf16, 72 fp8, 18 tf32 for 8), 600 TFLOP/s fp32 and 2.3 TB of HBM3e "
            "for 8; int8 cut to 2 POP/s for 8 (left out); 8 TB/s HBM3e", ("Blackwell Ultra",)),
    Accelerator("MI250X", {"float32": 95.7, "bfloat16": 383.0, "float16": 383.0, "int8": 383.0}, 128, 3277,
                "AMD Instinct MI250X datasheet (matrix fp32)"),
    Accelerator("MI300X", {"float32": 163.4, "tf32": 653.7, "bfloat16": 1307.4, "float16": 1307.4, "fp8": 2614.9,
                           "int8": 2614.9}, 192, 5300, "AMD Instinct MI300X datasheet (matrix fp32)"),
    Accelerator("MI325X", {"float32": 163.4, "tf32": 653.7, "bfloat16": 1307.4, "float16": 1307.4, "fp8": 2614.9,
                           "int8": 2614.9}, 256, 6000, "AMD Instinct MI325X datasheet (matrix fp32)"),
    # CDNA 4 (AMD at ISSCC 2026: 256 compute units of 8,192 dense fp8 FLOPs a clock; Hot Chips 2025: 2.4 GHz for the
    # MI355X, 2.2 for the MI350X): 5.03 and 4.61 PFLOP/s fp8, half that in bf16; 288 GB of HBM3E at 8 TB/s
    Accelerator("MI355X", {"bfloat16": 2516.6, "float16": 2516.6, "fp8": 5033.2}, 288, 8000,
                "AMD Instinct MI355X: 256 CUs x 8,192 fp8 FLOPs a clock x 2.4 GHz (ISSCC 2026, Hot Chips 2025)"),
    Accelerator("MI350X", {"bfloat16": 2306.9, "float16": 2306.9, "fp8": 4613.7}, 288, 8000,
                "AMD Instinct MI350X: 256 CUs x 8,192 fp8 FLOPs a clock x 2.2 GHz (ISSCC 2026, Hot Chips 2025)"),
    Accelerator("TPU v4", {"bfloat16": 275.0, "int8": 275.0}, 32, 1200, "Google Cloud TPU v4 documentation"),
    Accelerator("TPU v5e", {"bfloat16": 197.0, "int8": 394.0}, 16, 819, "Google Cloud TPU v5e documentation"),
    Accelerator("TPU v5p", {"bfloat16": 459.0, "int8": 918.0}, 95, 2765, "Google Cloud TPU v5p documentation"),
    Accelerator("TPU v6e", {"bfloat16": 918.0, "int8": 1836.0}, 32, 1640, "Google Cloud TPU v6e (Trillium) "
                "documentation", ("Trillium",)),
]


@dataclass(frozen=True)
class Link:
    """One tier of a network as one GPU sees it: ``bandwidth_gbs`` each way (GB/s, 10^9 bytes), the latency of one
    collective, and the share of the bandwidth a large collective achieves."""

    bandwidth_gbs: float
    latency_s: float
    efficiency: float
    source: str


@dataclass(frozen=True)
class Interconnect:
    """Scale-up (NVLink/NVSwitch, xGMI, TPU ICI) within a domain of ``domain`` GPUs, scale-out (InfiniBand, RoCE,
    a data-centre network) between domains. ``full_mesh``: point-to-point links, no switch (xGMI): a group of ``n``
    GPUs of a domain of ``d`` uses ``n - 1`` of each GPU's ``d - 1`` links."""

    scale_up: Link
    domain: int
    scale_out: Link
    full_mesh: bool = False


# Calculon's (Isaev et al. 2023) A100 system, systems/a100_80g.json (flopsweep/measure/data/published.json): the
# efficiencies and latencies below, the A100's bandwidths; carried over to the other parts, which have no such figures
CALCULON = "Calculon systems/a100_80g.json"
_UP_LATENCY, _UP_EFFICIENCY, _OUT_LATENCY, _OUT_EFFICIENCY = 10e-6, 0.65, 20e-6, 0.9


def _system(up_gbs: float, domain: int, out_gbs: float, up_source: str, out_source: str,
            full_mesh: bool = False) -> Interconnect:
    carried = f"; latency and efficiency: {CALCULON}"
    return Interconnect(Link(up_gbs, _UP_LATENCY, _UP_EFFICIENCY, up_source + carried), domain,
                        Link(out_gbs, _OUT_LATENCY, _OUT_EFFICIENCY, out_source + carried), full_mesh)


_DGX_A100 = _system(300, 8, 25, "A100 datasheet: NVLink 600 GB/s (both ways); DGX A100: 8 GPUs on NVSwitch",
                    "DGX A100 datasheet: 8 x 200 Gb/s HDR InfiniBand, one per GPU (Calculon: 25 GB/s)")
_DGX_H100 = _system(450, 8, 50, "H100/H200 datasheets: NVLink 900 GB/s (both ways); DGX H100/H200: 8 GPUs on "
                    "NVSwitch", "DGX H100/H200 datasheets: 8 x 400 Gb/s ConnectX-7, one per GPU")
_MI300 = _system(448, 8, 50, "MI300X/MI325X datasheets: 7 Infinity Fabric links of 128 GB/s (both ways) to the other 7 "
                 "GPUs of a platform of 8", "assumed: one 400 Gb/s NIC per GPU", full_mesh=True)
_MI350 = _system(448, 8, 50, "assumed as the MI300X's platform (7 Infinity Fabric links of 128 GB/s both ways to the "
                 "other 7 of 8 GPUs): AMD gives no per-link figure for the MI350 series", "assumed: one 400 Gb/s NIC "
                 "per GPU", full_mesh=True)
_PCIE4 = "PCIe Gen4 x16: 64 GB/s (both ways) through the host, no NVLink"

INTERCONNECTS: dict[str, Interconnect] = {
    "V100": _system(150, 8, 6.25, "V100 datasheet: NVLink 300 GB/s (both ways); DGX-1: 8 GPUs in a hybrid cube-mesh "
                    "(not all-to-all)", "DGX-1 datasheet: 4 x 100 Gb/s EDR InfiniBand for 8 GPUs"),
    "A100 40GB": _DGX_A100,
    "A100": _DGX_A100,
    "A10G": _system(32, 8, 1.5625, _PCIE4 + "; AWS g5.48xlarge: 8 GPUs", "AWS g5.48xlarge: 100 Gb/s for 8 GPUs"),
    "L40S": _system(32, 8, 6.25, _PCIE4 + "; AWS g6e.48xlarge: 8 GPUs", "AWS g6e.48xlarge: 400 Gb/s for 8 GPUs"),
    "L4": _system(32, 8, 1.5625, _PCIE4 + "; AWS g6.48xlarge: 8 GPUs", "AWS g6.48xlarge: 100 Gb/s for 8 GPUs"),
    "H100 PCIe": _system(64, 8, 12.5, "PCIe Gen5 x16: 128 GB/s (both ways); assumed 8 GPUs a server (NVLink bridges "
                         "join pairs only: left out)", "assumed: one 100 Gb/s NIC per GPU"),
    "H100": _DGX_H100,
    "H200": _DGX_H100,
    "H20": _system(450, 8, 50, "HGX H20 as reported: NVLink 900 GB/s (both ways), 8 GPUs on NVSwitch",
                   "assumed: one 400 Gb/s NIC per GPU, as DGX H100's"),
    "GB200": _system(900, 72, 50, "GB200 NVL72 datasheet: NVLink 1.8 TB/s (both ways) per GPU, 72 GPUs on NVSwitch",
                     "GB200 NVL72 reference design: one 400 Gb/s ConnectX-7 per GPU"),
    "B200": _system(900, 8, 50, "DGX B200 datasheet: NVLink 1.8 TB/s (both ways) per GPU, 8 GPUs on NVSwitch",
                    "DGX B200 datasheet: 8 x 400 Gb/s ConnectX-7, one per GPU"),
    "B300": _system(900, 8, 100, "HGX B300 datasheet: NVLink 1.8 TB/s (both ways) per GPU, 8 GPUs on NVSwitch",
                    "HGX B300 datasheet: 1.6 TB/s of networking (both ways) for 8 GPUs: 800 Gb/s ConnectX-8 each"),
    "MI300X": _MI300,
    "MI325X": _MI300,
    "MI350X": _MI350,
    "MI355X": _MI350,
    "TPU v4": _system(300, 4096, 6.25, "TPU v4 paper (Jouppi et al. 2023): 6 ICI links of 400 Gb/s each way, a 3D torus "
                      "of 4,096 chips", "assumed: v5p's 50 Gb/s per chip"),
    "TPU v5e": _system(200, 256, 3.125, "Cloud TPU v5e documentation: ICI 400 GB/s (both ways), 256 chips a pod",
                       "Cloud TPU v5e documentation: 2 x 100 Gb/s for a host of 8 chips"),
    "TPU v5p": _system(600, 8960, 6.25, "Cloud TPU v5p documentation: ICI 1,200 GB/s (both ways), 8,960 chips a pod",
                       "Cloud TPU v5p documentation: data-centre network 50 Gb/s per chip"),
    "TPU v6e": _system(400, 256, 3.125, "Cloud TPU v6e documentation: ICI 800 GB/s (both ways), 256 chips a pod",
                       "assumed: v5e's 2 x 100 Gb/s for a host of 8 chips"),
}


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
