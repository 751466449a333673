"""Analysis of logged runs, on the DataFrame of :func:`flopsweep.load_runs` (one row per run): side-by-side
comparison against a baseline run, scaling exponents from log-log fits, the costliest modules of a run, and
counted against closed-form FLOPs.

    import flopsweep
    from flopsweep import analysis
    df = flopsweep.load_runs(experiment="seq_len_scaling")
    analysis.scaling_fit(df, x="batch.seq_len", y="flops/forward", by="model.name")
    analysis.compare(df, baseline="gpt2_small|b1|s512|float32|meta")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from flopsweep.core import metrics as M
from flopsweep.core.errors import require
from flopsweep.core.profile import leaves

COMPARE = (M.FLOPS_STEP, M.FLOPS_FORWARD, M.PARAMS, M.TRAIN_PEAK_BYTES, M.TIME_STEP, M.TOKENS_PER_S, M.MFU)


def compare(df: pd.DataFrame, baseline: str, metrics: Optional[Sequence[str]] = None,
            key: str = "run_name") -> pd.DataFrame:
    """One row per run (indexed by ``key``), each metric beside its ratio to the baseline run's
    (``metric / baseline``; for a time, below 1 is faster, and ``baseline / time`` is the speedup)."""
    require(key in df.columns, "key", key, "is not a column of the runs")
    rows = df[df[key] == baseline]
    require(len(rows) == 1, "baseline", baseline, f"matches {len(rows)} runs by {key}; it must match one")
    wanted = [m for m in (metrics or COMPARE) if m in df.columns]
    require(bool(wanted), "metrics", list(metrics or COMPARE), "none of them is a column of the runs")
    base = rows.iloc[0]
    out = df.set_index(key)[wanted].astype(float)
    for m in wanted:
        denominator = base[m]
        out[f"{m} / baseline"] = out[m] / denominator if pd.notna(denominator) and denominator != 0 else np.nan
    return out[[c for m in wanted for c in (m, f"{m} / baseline")]]


def scaling_fit(df: pd.DataFrame, x: str, y: str, by: Optional[str] = None) -> pd.DataFrame:
    """The log-log slope of ``y`` against ``x`` (``y ∝ x^slope``) per group of ``by``: a least-squares line
    through ``(log x, log y)`` with its R², the points it used and their range; and ``local_slopes``, the slope
    between each pair of neighbouring x values (a slope that rises from 1 toward 2 is attention taking over)."""
    for column in (x, y) + ((by,) if by else ()):
        require(column in df.columns, "column", column, "is not a column of the runs")
    groups = df.groupby(by, sort=True) if by else [(None, df)]
    rows = []
    for name, part in groups:
        points = part[[x, y]].astype(float).dropna()
        points = points[(points[x] > 0) & (points[y] > 0)].groupby(x, as_index=False)[y].median().sort_values(x)
        row: dict[str, Any] = {"group": name[0] if isinstance(name, tuple) else name, "points": len(points)}
        if len(points) >= 2:
            lx, ly = np.log(points[x].to_numpy()), np.log(points[y].to_numpy())
            slope, intercept = np.polyfit(lx, ly, 1)
            residual = ly - (slope * lx + intercept)
            total = ((ly - ly.mean()) ** 2).sum()
            row.update(slope=float(slope), r2=float(1 - (residual ** 2).sum() / total) if total > 0 else 1.0,
                       x_min=float(points[x].min()), x_max=float(points[x].max()),
                       local_slopes=[float(s) for s in np.diff(ly) / np.diff(lx)])
        else:
            row.update(slope=np.nan, r2=np.nan, x_min=np.nan, x_max=np.nan, local_slopes=[])
        rows.append(row)
    return pd.DataFrame(rows).set_index("group") if by else pd.DataFrame(rows).drop(columns="group")


def bottlenecks(run: str | Path, depth: Optional[int] = None, top: Optional[int] = 10, uri: Optional[str] = None,
                merge_repeats: bool = False) -> pd.DataFrame:
    """The costliest modules of one run (its job folder or MLflow run id), costliest first: forward + backward
    FLOPs and their share of the model's. ``depth`` picks one level of the module tree; by default the leaves
    of the recorded tree (modules with no recorded children) and the own work of the others, ``"<module> (own)"``
    (attention's score matmuls, which run in the attention module itself): all of the model. ``merge_repeats``
    adds up the modules that differ only in a layer index (``blocks.*.attn``: every block's attention together),
    with their ``count``. The ``top`` costliest rows (None: every one, whose shares add up to 1).
    A run with a module profile (``measure.profile=true``) gives every module and, when it was timed,
    ``time_share``: the share of the forward pass's latency (backward time is not measured per module)."""
    import re

    from flopsweep.sinks.reader import load_measured
    from flopsweep.sinks.target import target_at

    require(top is None or (isinstance(top, int) and top >= 1), "top", top, "must be an integer >= 1, or None for "
            "every module")  # 0 gave an empty table
    result, _ = load_measured(str(run), target_at(uri, None, "").uri)  # a skipped job: the run it found
    breakdown = result.breakdown or {}
    records = breakdown.get("profile") or breakdown.get("modules") or []
    modules = pd.DataFrame(records)
    require(not modules.empty, "run", str(run), "has no per-module breakdown (measure.count=false?)")
    model = modules[modules["depth"] == 0].iloc[0]
    total = model["forward_flops"] + model["backward_flops"]
    timed = "forward_latency_s" in modules and pd.notna(model["forward_latency_s"])
    if depth is None:
        keys = ("forward_flops", "backward_flops", "forward_elementwise", "backward_elementwise")
        keys += ("forward_latency_s",) if timed else ()
        rows = pd.DataFrame(leaves(records, keys))
    else:
        rows = modules[modules["depth"] == depth].copy()
        require(not rows.empty, "depth", depth, f"has no modules (recorded depths 0-{int(modules['depth'].max())})")
    rows["flops"] = rows["forward_flops"] + rows["backward_flops"]
    rows["elementwise"] = rows["forward_elementwise"] + rows["backward_elementwise"]
    rows["count"] = 1
    columns = ["flops", "forward_flops", "backward_flops", "elementwise", "count"]
    columns += ["forward_latency_s"] if timed else []
    if merge_repeats:
        rows["module"] = [re.sub(r"\.\d+(?=[. ]|$)", ".*", name) for name in rows["module"]]
        rows = rows.groupby("module", as_index=False)[columns].sum()
    rows["share"] = rows["flops"] / total if total else np.nan
    shares = ["share"]
    if timed:
        rows["time_share"] = rows["forward_latency_s"] / model["forward_latency_s"]
        shares.append("time_share")
    order = ["flops", "forward_latency_s"] if timed else ["flops"]
    return rows.sort_values(order, ascending=False)[["module", *shares, *columns]].head(top).reset_index(drop=True)


def counted_vs_closed_form(df: pd.DataFrame, key: str = "run_name") -> pd.DataFrame:
    """Each run's counted forward FLOPs against its family's closed form (``flops/forward_analytic``)."""
    for column in (key, M.FLOPS_FORWARD, M.FLOPS_FORWARD_ANALYTIC):
        require(column in df.columns, "column", column, "is not a column of the runs")
    out = df.set_index(key)[[M.FLOPS_FORWARD, M.FLOPS_FORWARD_ANALYTIC]].astype(float)
    out["difference"] = out[M.FLOPS_FORWARD] - out[M.FLOPS_FORWARD_ANALYTIC]
    out["ratio"] = out[M.FLOPS_FORWARD] / out[M.FLOPS_FORWARD_ANALYTIC]
    return out
