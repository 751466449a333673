"""A part's calibration profile: what its matmuls, attention kernels, memory and launches really achieve, measured once
(``flopsweep-calibrate``) or taken from published measurements, and the curves fitted to those points that the time
model reads (:mod:`flopsweep.measure.predict`). No torch here: a profile is numbers.

The raw points are kept beside the fitted curves, so a profile can be refitted and checked:

- ``matmul[dtype]``: rows (M, K, N, seconds) of one GEMM each, C[M, N] = A[M, K] B[K, N]; ``matmul_unaligned``
  the same with N odd (16-bit tensor cores want every dimension a multiple of 8);
- ``memory_factors``: by op (its trace name: ``aten.native_batch_norm``), how many times an add of the same bytes it
  takes (norms, activations, pooling, softmax, reductions: measure/calibrate.OP_CASES);
- ``attention[dtype]``: rows (batch x heads, Sq, Sk, head dim, causal, forward seconds, backward seconds);
- ``memory``: rows (bytes read + written, seconds) of elementwise kernels making a new output (``a + b``), smallest
  to largest; ``memory_inplace`` the same writing into an input (``a += b``): on a CPU a large new output is new pages
  from the kernel, several times slower;
- ``launch_s`` (an eager op's dispatch and launch, forward from Python), ``launch_backward_s`` (an op the autograd
  engine dispatches), ``view_s`` (a view's dispatch), ``module_s`` (an ``nn.Module`` call's own machinery),
  ``graph_launch_s`` (a kernel replayed in a CUDA graph).

Curves (docs/conventions.md, "Predicted time"): a matmul's throughput over (M, K, N) and attention's over (batch x
heads, Sq, Sk, head dim), per dtype, direction and mask, interpolated in log space between the measured grid's points
(:class:`Grid`: exact at each, held at its edges); memory time interpolated in log-log between measured sizes and at
the largest one's bandwidth beyond. Each point's time less one launch is its body (launches are counted apart).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from flopsweep.core import metrics as M
from flopsweep.core.files import user_cache
from flopsweep.measure.curves import Curve, Grid

VERSION = 1


@dataclass
class Calibration:
    """A part's profile (see the module's docstring for the tables)."""

    part: str
    device: str                    # cpu | cuda
    torch: str = ""
    date: str = ""
    threads: Optional[int] = None
    default: bool = False          # from published measurements or vendor figures, not measured here
    sources: dict[str, str] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)   # dense FLOP/s by dtype, where known (a GPU's datasheet)
    matmul: dict[str, list[list[float]]] = field(default_factory=dict)
    matmul_unaligned: dict[str, list[list[float]]] = field(default_factory=dict)  # N odd: no tensor-core tiling
    memory_factors: dict[str, float] = field(default_factory=dict)  # op -> times an add of the same bytes
    attention: dict[str, list[list[float]]] = field(default_factory=dict)
    memory: list[list[float]] = field(default_factory=list)
    memory_inplace: list[list[float]] = field(default_factory=list)
    launch_s: float = 0.0
    launch_backward_s: float = 0.0
    view_s: float = 0.0
    module_s: float = 0.0
    graph_launch_s: Optional[float] = None
    graph_timed: bool = False      # matmul and memory points timed in CUDA graphs (no launch in them)
    version: int = VERSION

    # -- the fitted curves ------------------------------------------------------------------------------------
    def matmul_curve(self, dtype: str, aligned: bool = True) -> Optional[Grid]:
        rows = self.matmul.get(dtype) if aligned else self.matmul_unaligned.get(dtype)
        return _fitted(self, ("matmul", dtype, aligned), lambda: _fit_matmul(rows, self.in_points))

    def attention_curve(self, dtype: str, causal: bool, backward: bool) -> Optional[Grid]:
        return _fitted(self, ("attention", dtype, causal, backward),
                       lambda: _fit_attention(self.attention.get(dtype), causal, backward, self.launch_s))

    def memory_curve(self, inplace: bool = False) -> Curve:
        rows = self.memory_inplace if inplace and self.memory_inplace else self.memory
        return _fitted(self, ("memory", inplace), lambda: Curve.of(rows, self.in_points))

    def memory_time(self, moved: float, allocated: float = 0.0, inplace: bool = False) -> float:
        """Seconds of a memory-bound body moving ``moved`` bytes and making ``allocated`` bytes of new outputs: where
        both adds were measured, moved in place plus the new pages; else the add's curve (new output, or in place)."""
        allocation = self.allocation_curve() if self.device == "cpu" else None  # a GPU's allocator keeps its blocks
        if allocation is None:
            return self.memory_curve(inplace)(moved) if moved else 0.0
        return (self.memory_curve(True)(moved) if moved else 0.0) + (allocation(allocated) if allocated else 0.0)

    def allocation_curve(self) -> Optional[Curve]:
        """Seconds that making a new output of so many bytes adds to an op (a CPU maps fresh pages for a large one):
        an add making its output less one writing in place, over the output's bytes (a third of the add's)."""
        if not self.memory_inplace:
            return None
        return _fitted(self, ("allocation",), lambda: Curve.of(
            [[b / 3, max(fresh - inplace, 1e-12)] for (b, fresh), (_, inplace) in zip(self.memory,
                                                                                      self.memory_inplace)]))

    @property
    def in_points(self) -> float:
        """The launch inside each matmul and memory point's time: none where they were timed in CUDA graphs (the
        device's time alone), one eager launch where they were timed eagerly (a CPU)."""
        return 0.0 if self.graph_timed else self.launch_s

    def figures(self) -> dict[str, float]:
        """What the profile says of the part, in a few numbers (the calibration run's metrics)."""
        out = {M.CALIBRATION_LAUNCH: self.launch_s * 1e6, M.CALIBRATION_LAUNCH_BACKWARD: self.launch_backward_s * 1e6}
        if self.memory:
            size, seconds = max(self.memory)
            out[M.CALIBRATION_BANDWIDTH] = size / seconds / 1e9
        for dtype in self.dtypes():
            curve = self.matmul_curve(dtype)
            if curve is not None:
                out[M.calibration_matmul_metric(dtype)] = curve(8192, 8192, 8192) / 1e12
        return out

    def dtypes(self) -> list[str]:
        return sorted(self.matmul)

    def scaled(self, *, bandwidth: float = 1.0, compute: float = 1.0) -> "Calibration":
        """The same part with ``bandwidth`` times its memory speed and ``compute`` times its arithmetic (launches as
        they are)."""
        def faster(t: float, factor: float) -> float:
            return self.in_points + max(t - self.in_points, t / 10) / factor

        return dataclasses.replace(
            self, memory=[[b, faster(t, bandwidth)] for b, t in self.memory],
            memory_inplace=[[b, faster(t, bandwidth)] for b, t in self.memory_inplace],
            matmul={d: [[m, k, n, faster(t, compute)] for m, k, n, t in rows] for d, rows in self.matmul.items()},
            matmul_unaligned={d: [[m, k, n, faster(t, compute)] for m, k, n, t in rows]
                              for d, rows in self.matmul_unaligned.items()},
            attention={d: [[*r[:5], faster(r[5], compute), faster(r[6], compute)] for r in rows]
                       for d, rows in self.attention.items()},
            peak={d: p * compute for d, p in self.peak.items()})

    # -- files ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def digest(self) -> str:
        """What identifies this profile's figures (runs predicted by it are grouped by it)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        if data.get("version") != VERSION:
            raise ValueError(f"calibration profile version {data.get('version')!r}, this flopsweep reads {VERSION}: "
                             f"run flopsweep-calibrate again")
        if not isinstance(data, dict) or "part" not in data or "device" not in data:
            raise ValueError("not a calibration profile: part and device missing")
        known = {f.name for f in dataclasses.fields(cls)}
        cal = cls(**{k: v for k, v in data.items() if k in known})
        _check(cal)
        return cal

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check(cal: Calibration) -> None:
    """A profile that can predict: a part and a device, memory points and matmul points of four numbers each, and
    launch costs that are numbers; else a ValueError saying what is missing."""
    def number_rows(rows: Any, width: int) -> bool:
        return isinstance(rows, list) and bool(rows) and all(
            isinstance(r, list) and len(r) == width and all(isinstance(v, (int, float)) for v in r) for r in rows)

    problems = [what for what, ok in (
        ("part", isinstance(cal.part, str) and cal.part),
        ("device (cpu or cuda)", cal.device in ("cpu", "cuda")),
        ("memory points (bytes, seconds)", number_rows(cal.memory, 2)),
        ("matmul points (M, K, N, seconds)", isinstance(cal.matmul, dict) and cal.matmul and all(
            number_rows(rows, 4) for rows in cal.matmul.values())),
        ("launch costs", all(isinstance(getattr(cal, k), (int, float)) for k in ("launch_s", "launch_backward_s",
                                                                                  "view_s", "module_s"))),
    ) if not ok]
    if problems:
        raise ValueError(f"not a calibration profile: {', '.join(problems)} missing or malformed")


def _fitted(cal: Calibration, key: tuple, make) -> Any:
    cache = cal.__dict__.setdefault("_curves", {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _fit_matmul(rows: Optional[list[list[float]]], launch: float) -> Optional[Grid]:
    if not rows:
        return None
    xs = [(m, k, n) for m, k, n, _ in rows]
    ys = [2 * m * k * n / max(t - launch, t / 10) for m, k, n, t in rows]
    return Grid.fit(xs, ys)


def _fit_attention(rows: Optional[list[list[float]]], causal: bool, backward: bool,
                   launch: float) -> Optional[Grid]:
    picked = [r for r in (rows or []) if bool(r[4]) == causal]
    if not picked:
        return None
    xs, ys = [], []
    for bh, sq, sk, d, _, forward_s, backward_s in picked:
        seconds = backward_s if backward else forward_s
        flops = 4 * bh * sq * sk * d * (2 if backward else 1)  # the counted convention: QK^T and PV, full S^2
        xs.append((bh, sq, sk, d))
        ys.append(flops / max(seconds - launch, seconds / 10))
    return Grid.fit(xs, ys)


# -- where profiles live ------------------------------------------------------------------------------------------

def profile_dir() -> Path:
    """``$FLOPSWEEP_CALIBRATION_DIR``, else ``$XDG_CACHE_HOME/flopsweep/calibration`` (``~/.cache/...``)."""
    explicit = os.environ.get("FLOPSWEEP_CALIBRATION_DIR")
    return Path(explicit) if explicit else user_cache() / "calibration"


def slug(part: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") or "part"


def profile_path(part: str) -> Path:
    return profile_dir() / f"{slug(part)}.json"


def find_profile(part: str) -> Optional[Calibration]:
    """The profile calibrated on this machine for ``part`` (a device's name), or None."""
    path = profile_path(part)
    return Calibration.load(path) if path.is_file() else None
