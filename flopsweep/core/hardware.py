"""Accelerators: dense peak throughput by dtype (TFLOP/s; TOP/s for int8), memory and memory bandwidth, each row with
its source, for MFU (matched against ``torch.cuda.get_device_name()``) and for projections (``--gpu NAME``); the
interconnect of the systems each part is sold in (:class:`Interconnect`); and the CPU's model name, a CPU job's device
name.

The table is data shipped with the package (``core/data/hardware.yaml``), read and checked by the same function as a
user's own part (``flopsweep-project --hardware FILE``, :func:`from_fields`): a figure the table gets wrong is refused
naming the part and the field, as a user's would be. Every figure is dense (no 2:4 sparsity) as the vendor publishes
it; memory in GB (10^9 bytes) and bandwidth in GB/s as published.
"""

from __future__ import annotations

import re
import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from flopsweep.core.errors import ConfigError, is_number, nearest, not_one_of, require

DTYPES = ("float32", "tf32", "bfloat16", "float16", "fp8", "int8", "fp4")
# the usual spellings of a number format, as the hardware table and the serving bytes name it
DTYPE_SPELLINGS = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
                   "float8": "fp8", "e4m3": "fp8", "e5m2": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
                   "fp8_e4m3": "fp8", "int4": "int4", "uint4": "int4", "nf4": "int4", "nvfp4": "fp4", "mxfp4": "fp4",
                   "float4": "fp4", "e2m1": "fp4", "float4_e2m1fn_x2": "fp4"}


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_tflops: dict[str, float]   # dense, by compute dtype (DTYPES)
    memory_gb: float
    bandwidth_gbs: float
    source: str
    aliases: tuple[str, ...] = ()   # other names it goes by (in device names too)
    interconnect: Optional["Interconnect"] = None  # how the part's systems join GPUs (None: no figures for it)

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


def _key(name: str) -> str:
    return "".join(name.lower().split()).replace("-", "")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[\s\-_]+", name.lower()) if w]


def _within(part: list[str], words: list[str]) -> bool:
    return any(words[i:i + len(part)] == part for i in range(len(words) - len(part) + 1))


def accelerator(name: str) -> Optional[Accelerator]:
    """The part ``name`` names exactly (``--gpu H100``, case, spaces and dashes aside), else the most specific one
    whose name or alias is among its words (a device name: ``NVIDIA H100 80GB HBM3``, ``NVIDIA A100-SXM4-80GB``);
    None for an unknown part: ``H1000`` or an ``RTX A1000`` is not an H100 or an A100."""
    key, words = _key(name), _words(name)
    for acc in ACCELERATORS:
        if key in {_key(n) for n in (acc.name, *acc.aliases)}:
            return acc
    for acc in ACCELERATORS:
        if any(_within(_words(n), words) for n in (acc.name, *acc.aliases)):
            return acc
    return None


def names() -> list[str]:
    return [acc.name for acc in ACCELERATORS]


def unknown_part(name: str) -> str:
    """Why ``name`` (``--gpu``, ``predict.hardware``) is no part: the nearest of the table, else all of them."""
    zeroed = {name.lower(): name.lower().replace("o", "0")}  # A10O, H1OO: a letter O typed for a zero
    near = not_one_of(name, names(), "docs/serving.md lists them", cutoff=0.5, spellings=zeroed)
    return f"is not in the hardware table ({near})"


def peak_flops(device_name: str, compute_dtype: str, override_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s for the device and the dtype the matmuls run in; None when unknown (then no MFU)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    acc = accelerator(device_name)
    return acc.peak(compute_dtype) if acc is not None else None


FIELDS = ("name", "peak_tflops", "memory_gb", "bandwidth_gbs", "source", "aliases", "interconnect")
LINK_FIELDS = ("bandwidth_gbs", "latency_s", "efficiency", "source")


def from_fields(fields: Any, origin: str, links: Optional[dict[str, Any]] = None) -> Accelerator:
    """A part from a mapping (a YAML file's, the shipped table's): ``name``, ``memory_gb``, ``bandwidth_gbs`` and
    ``peak_tflops`` (by dtype), optionally ``source``, ``aliases`` and ``interconnect`` (``scale_up`` and
    ``scale_out`` links of ``bandwidth_gbs`` each way per GPU, ``latency_s``, ``efficiency`` and ``source``, the
    scale-up ``domain`` in GPUs, ``full_mesh``); a link's missing latency and efficiency come from ``links``, by
    default the shipped table's (Calculon's A100 system). A bad field is named with ``origin``."""
    require(isinstance(fields, dict), "hardware", origin, "must be a mapping of name, peak_tflops, memory_gb, "
            "bandwidth_gbs")
    unknown = sorted(set(fields) - set(FIELDS))  # first: a misspelt field was said to be the right one, missing
    near = nearest(unknown[0], FIELDS) if unknown else None
    require(not unknown, f"hardware.{unknown[0] if unknown else ''}", None,
            f"unknown field in {origin}" + (f" (did you mean {near}?)" if near else ""))
    missing = [k for k in ("name", "peak_tflops", "memory_gb", "bandwidth_gbs") if k not in fields]
    require(not missing, f"hardware.{missing[0] if missing else ''}", None, f"missing in {origin}")
    peaks = fields["peak_tflops"]
    require(isinstance(peaks, dict) and peaks, "hardware.peak_tflops", peaks, f"must map dtypes ({', '.join(DTYPES)}) "
            f"to TFLOP/s in {origin}")
    for dtype, value in peaks.items():
        require(dtype in DTYPES, f"hardware.peak_tflops.{dtype}", value,
                f"is not a dtype ({', '.join(DTYPES)}) in {origin}")
        require(_positive(value), f"hardware.peak_tflops.{dtype}", value, f"must be a number > 0 in {origin}")
    for key in ("memory_gb", "bandwidth_gbs"):
        require(_positive(fields[key]), f"hardware.{key}", fields[key], f"must be a number > 0 in {origin}")
    aliases = fields.get("aliases", [])
    require(isinstance(aliases, list) and all(isinstance(a, str) and a.strip() for a in aliases), "hardware.aliases",
            aliases, f"must be a list of names in {origin}")
    network = _interconnect(fields.get("interconnect"), origin, _LINKS if links is None else links)
    try:
        return Accelerator(str(fields["name"]), {k: float(v) for k, v in peaks.items()}, float(fields["memory_gb"]),
                           float(fields["bandwidth_gbs"]), str(fields.get("source", origin)), tuple(aliases), network)
    except (TypeError, ValueError) as err:
        raise ConfigError("hardware", origin, str(err)) from None


def _positive(value: Any) -> bool:
    return is_number(value) and 0 < value < float("inf")


def _interconnect(fields: Any, origin: str, links: dict[str, Any]) -> Optional[Interconnect]:
    if fields is None:
        return None
    key = "hardware.interconnect"
    require(isinstance(fields, dict), key, fields, f"must be a mapping of scale_up, domain, scale_out in {origin}")
    unknown = sorted(set(fields) - {"scale_up", "domain", "scale_out", "full_mesh"})
    require(not unknown, f"{key}.{unknown[0] if unknown else ''}", None, f"unknown field in {origin}")
    domain = fields.get("domain")
    require(isinstance(domain, int) and not isinstance(domain, bool) and domain >= 1, f"{key}.domain", domain,
            f"must be the GPUs of a scale-up domain, an integer >= 1, in {origin}")
    full_mesh = fields.get("full_mesh", False)
    require(isinstance(full_mesh, bool), f"{key}.full_mesh", full_mesh, f"must be true or false in {origin}")
    return Interconnect(_link(fields.get("scale_up"), f"{key}.scale_up", origin, links),
                        domain, _link(fields.get("scale_out"), f"{key}.scale_out", origin, links), full_mesh)


def _link(fields: Any, key: str, origin: str, links: dict[str, Any]) -> Link:
    require(isinstance(fields, dict), key, fields, f"must be a mapping of {', '.join(LINK_FIELDS)} in {origin}")
    unknown = sorted(set(fields) - set(LINK_FIELDS))
    require(not unknown, f"{key}.{unknown[0] if unknown else ''}", None, f"unknown field in {origin}")
    tier = links.get(key.rsplit(".", 1)[1], {})
    values = {name: fields.get(name, tier.get(name)) for name in ("bandwidth_gbs", "latency_s", "efficiency")}
    for name, value in values.items():
        require(value is not None, f"{key}.{name}", None, f"missing in {origin}")
    require(_positive(values["bandwidth_gbs"]), f"{key}.bandwidth_gbs", values["bandwidth_gbs"],
            f"must be a number > 0 in {origin}")
    require(is_number(values["latency_s"]) and 0 <= values["latency_s"] < 1, f"{key}.latency_s", values["latency_s"],
            f"must be seconds, >= 0 and below 1, in {origin}")
    require(_positive(values["efficiency"]) and values["efficiency"] <= 1, f"{key}.efficiency", values["efficiency"],
            f"must be a share of the bandwidth, above 0 and at most 1, in {origin}")
    source = str(fields.get("source", origin))
    if "latency_s" not in fields and links.get("source"):
        source += f"; {links['source']}"
    return Link(float(values["bandwidth_gbs"]), float(values["latency_s"]), float(values["efficiency"]), source)


TABLE = Path(__file__).parent / "data" / "hardware.yaml"
_LINKS: dict[str, Any] = {}  # the table's links' latency and efficiency, for a user's part that gives none


def _table() -> list[Accelerator]:
    """The shipped table, each part checked as a user's would be."""
    import yaml

    data = yaml.safe_load(TABLE.read_text())
    _LINKS.update(data.get("links") or {})
    parts = [from_fields(part, f"{TABLE.name}: {part.get('name') if isinstance(part, dict) else part}", _LINKS)
             for part in data["parts"]]
    names = [_key(n) for acc in parts for n in (acc.name, *acc.aliases)]
    require(len(names) == len(set(names)), "hardware.name", None, f"a part's name or alias repeated in {TABLE.name}")
    return parts


ACCELERATORS: list[Accelerator] = _table()  # most specific name first: see the file


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
