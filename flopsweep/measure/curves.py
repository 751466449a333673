"""The curves a calibration profile's points make (:mod:`flopsweep.measure.calibration`): a throughput over a grid of
shapes, interpolated in log space, and seconds over sizes, interpolated in log-log. No torch."""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Grid:
    """A throughput measured over a grid of shapes, interpolated multilinearly in log space (log of each dimension,
    log of the throughput) and held at the edge beyond it. A grid point that was not measured (too large to time)
    takes the best throughput of the measured points it contains in every dimension: a larger shape is at least as
    efficient. Exact at every measured point, so nothing is assumed of the curve's form."""

    axes: tuple[tuple[float, ...], ...]
    values: dict[tuple, float]          # grid index -> log throughput

    def __call__(self, *xs: float) -> float:
        corners: list[tuple[tuple, float]] = [((), 1.0)]
        for axis, x in zip(self.axes, xs):
            lx = math.log(min(max(x, axis[0]), axis[-1]))
            i = max(0, min(bisect.bisect_right(axis, math.exp(lx)) - 1, len(axis) - 2)) if len(axis) > 1 else 0
            if len(axis) == 1:
                corners = [(c + (0,), w) for c, w in corners]
                continue
            w = (lx - math.log(axis[i])) / (math.log(axis[i + 1]) - math.log(axis[i]))
            w = min(max(w, 0.0), 1.0)
            corners = [(c + (i,), cw * (1 - w)) for c, cw in corners] + [(c + (i + 1,), cw * w) for c, cw in corners]
        return math.exp(sum(self.values[c] * w for c, w in corners if w))

    @classmethod
    def fit(cls, xs: Sequence[Sequence[float]], ys: Sequence[float]) -> "Grid":
        n = len(xs[0])
        axes = tuple(tuple(sorted({float(x[i]) for x in xs})) for i in range(n))
        measured: dict[tuple, list[float]] = {}
        for x, y in zip(xs, ys):
            measured.setdefault(tuple(axes[i].index(float(x[i])) for i in range(n)), []).append(math.log(y))
        values = {key: sum(v) / len(v) for key, v in measured.items()}
        for key in itertools.product(*(range(len(a)) for a in axes)):
            if key not in values:
                inside = [v for k, v in values.items() if all(a <= b for a, b in zip(k, key))]
                values[key] = max(inside) if inside else min(values.values())
        return cls(axes, values)


@dataclass(frozen=True)
class Curve:
    """Seconds for ``x`` (bytes or elements), interpolated in log-log between measured points; beyond the last point,
    at its rate; below the first, its time."""

    xs: tuple[float, ...]
    seconds: tuple[float, ...]

    def __call__(self, x: float) -> float:
        if x <= self.xs[0]:
            return self.seconds[0]
        if x >= self.xs[-1]:
            return self.seconds[-1] * x / self.xs[-1]
        i = bisect.bisect_right(self.xs, x)
        x0, x1, t0, t1 = self.xs[i - 1], self.xs[i], self.seconds[i - 1], self.seconds[i]
        w = math.log(x / x0) / math.log(x1 / x0)
        return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))

    @classmethod
    def of(cls, rows: Sequence[Sequence[float]], floor: float = 0.0) -> "Curve":
        """From rows (x, seconds): sorted, each time less ``floor`` (the launch, kept apart) but never below a tenth of
        itself, and made non-decreasing (a larger transfer never takes less time)."""
        pairs = sorted((float(x), float(t)) for x, t in rows)
        xs, ts, last = [], [], 0.0
        for x, t in pairs:
            last = max(last, max(t - floor, t / 10))
            xs.append(x)
            ts.append(last)
        return cls(tuple(xs), tuple(ts))
