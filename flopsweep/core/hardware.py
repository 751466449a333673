"""Peak dense throughput (TFLOP/s) of known GPUs, for MFU (vendor datasheets; see docs/conventions.md)."""

from __future__ import annotations

from typing import Optional

# (substring of torch.cuda.get_device_name(), peak by compute dtype); most specific first
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0, "fp8": 1513.0}),
    ("H100", {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4, "fp8": 1978.9}),
    ("H200", {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4, "fp8": 1978.9}),
    ("A100", {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0}),
]


def peak_flops(device_name: str, compute_dtype: str, override_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s for the device and the dtype the matmuls run in; None when unknown (then no MFU)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    for pattern, peaks in PEAK_TFLOPS:
        if pattern in device_name:
            value = peaks.get(compute_dtype)
            return value * 1e12 if value is not None else None
    return None
