"""What the machine was doing while a step was timed (issue 31: a measured MFU beside what the device did): the CPU's
utilisation and the system's memory (psutil), and each GPU's utilisation, memory and power where NVIDIA's management
library is present (``pynvml``), sampled once a second and once more when the timing ends. The names are MLflow's
own system metrics' (``system/cpu_utilization_percentage``, ...), so that a job's run shows them in MLflow's system
metrics view; megabytes are 10^6 bytes there."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

INTERVAL_S = 1.0
CPU, MEMORY_MB, MEMORY_PERCENT = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                                  "system/system_memory_usage_percentage")


class SystemSampler:
    """While entered, samples the machine every ``interval_s`` seconds on a thread of its own (and once at the end):
    :attr:`samples` is a list of ``(unix time in ms, {metric name: value})``. Without psutil it samples nothing."""

    def __init__(self, gpus: bool = False, interval_s: float = INTERVAL_S):
        self.interval_s, self.samples = interval_s, []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._gpus = _nvml_handles() if gpus else []
        try:
            import psutil
        except ImportError:
            self._psutil = None
        else:
            self._psutil = psutil
            psutil.cpu_percent(interval=None)  # the first reading of a window: from here on

    def __enter__(self) -> "SystemSampler":
        if self._psutil is not None:
            self._thread = threading.Thread(target=self._run, name="flopsweep-system-metrics", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()  # the last window, however short

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        memory = self._psutil.virtual_memory()
        values = {CPU: self._psutil.cpu_percent(interval=None), MEMORY_MB: memory.used / 1e6,
                  MEMORY_PERCENT: memory.percent}
        for index, handle in self._gpus:
            values.update(_gpu_values(index, handle))
        self.samples.append((int(time.time() * 1000), values))


def load_average() -> Optional[float]:
    """The load average over the last minute, where the system gives one (a timing's or a calibration's
    conditions: other work on the cores they measure)."""
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


class OtherWork:
    """While entered, how many cores other processes kept busy, on average: the machine's busy CPU time less this
    process's own, over the wall time (a calibration's conditions; the load average counted the calibration's own
    threads, and a minute of the command before it). :attr:`cores` is None until it has been exited."""

    def __enter__(self) -> "OtherWork":
        import psutil

        self._process, self.cores = psutil.Process(), None
        self._start = (time.perf_counter(), _busy(psutil.cpu_times()), self._own())
        return self

    def _own(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def __exit__(self, *exc: Any) -> None:
        import psutil

        wall, busy, own = self._start
        elapsed = time.perf_counter() - wall
        others = (_busy(psutil.cpu_times()) - busy) - (self._own() - own)
        self.cores = max(0.0, others / elapsed) if elapsed > 0 else 0.0


def _busy(times: Any) -> float:
    """CPU seconds the machine spent on anything but idling or waiting for I/O."""
    return sum(value for name, value in times._asdict().items() if name not in ("idle", "iowait", "guest",
                                                                                 "guest_nice"))


def _nvml_handles() -> list[tuple[int, Any]]:
    """Each GPU's NVML handle, or none where pynvml is absent or finds no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - no library, no driver, no GPU: no GPU metrics
        return []


def _gpu_values(index: int, handle: Any) -> dict[str, float]:
    import pynvml

    prefix = f"system/gpu_{index}_"
    try:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        values = {f"{prefix}memory_usage_megabytes": memory.used / 1e6,
                  f"{prefix}memory_usage_percentage": 100 * memory.used / memory.total,
                  f"{prefix}utilization_percentage": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)}
        watts = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
        values[f"{prefix}power_usage_watts"] = watts
        limit = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
        values[f"{prefix}power_usage_percentage"] = 100 * watts / limit
        return values
    except Exception:  # noqa: BLE001 - a reading the driver refuses: left out
        return {}
