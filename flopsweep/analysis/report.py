"""A report of logged runs: a folder with the runs as CSV and Markdown and the plots that answer the usual
questions; and one run's module profile with its plot.

Plots (each drawn when the runs have its data): FLOPs against sequence length on log-log axes with the fitted
slope per model, step time against batch size per dtype, the training memory of each run as stacked bars,
the FLOPs shares of the costliest run's modules, MFU by dtype and device, and each timed run's predicted step against
its measured one (the diagonal, and ±25%); a sweep of parallel layouts, its own table (a GPU's figures, whether each
fits) and each layout's predicted speed against its memory a GPU.

Why one file: each plot is a short function over the same DataFrame with the same figure and save helpers, and the
report is the one reader of all of them; split by plot, every file would import the same three helpers for 20 lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from flopsweep.analysis import bottlenecks, scaling_fit
from flopsweep.core import metrics as M
from flopsweep.core.errors import require
from flopsweep.core.hardware import accelerator
from flopsweep.core.text import PARALLEL_COLUMNS, capacity, estimated_peak, format_metric
from flopsweep.sinks.identity import run_name
from flopsweep.sinks.jobdir import write_profile
from flopsweep.sinks.reader import load_result

GIB = 2**30
MODULE_AXIS = "module (* = every layer; (own) = in it, not in a child)"
MEMORY = ((M.WEIGHTS_BYTES, "weights"), (M.GRADS_BYTES, "gradients"), (M.OPTIMIZER_STATE_BYTES, "optimizer state"),
          (M.ACTIVATIONS_BYTES, "activations"))
ESTIMATED_PEAK = "est. peak"  # the larger of the two estimates, as the console's summary and the memory checks read it
TABLE = ("run_name", "status", M.PARAMS, M.FLOPS_STEP, M.FLOPS_FORWARD, ESTIMATED_PEAK, M.TIME_STEP,
         M.TOKENS_PER_S, M.MFU)
# a sweep of parallel layouts: a GPU's figures, the columns of the console's summary
LAYOUT_TABLE = ("run_name", "status", *(key for _, key, _, _ in PARALLEL_COLUMNS))


def write_report(df, out: Path, title: str, uri: Optional[str] = None, label: Optional[str] = None) -> dict[str, str]:
    """Write ``runs.csv``, ``runs.md`` and every plot the runs have data for into ``out``; each plot's title names
    ``label`` (the experiment and sweep). Returns, per plot file name, the file written or why it was not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    order = [c for c in (M.PARAMS, "model.name", "batch.seq_len", "batch.size") if c in df.columns]
    df = df.sort_values(order)  # models in size order, smallest first
    df.to_csv(out / "runs.csv", index=False)
    label = label or title
    layouts = M.PARALLEL_GPUS in df and df[M.PARALLEL_GPUS].notna().all()  # every run a layout, counted per GPU
    if layouts:  # the whole-model plots have nothing to draw (it said "no counted runs" of 312 counted layouts)
        ranked = [k for k in (M.PARALLEL_FITS, M.TOKENS_PER_S_PER_GPU_PREDICTED) if k in df]
        df = df.sort_values(ranked, ascending=False, na_position="last") if ranked else df  # as the console ranks
        drawn = {"layouts.png": _layouts(df, out, label)}
    else:
        drawn = {"flops_vs_seq_len.png": _flops_vs_seq_len(df, out, label),
                 "step_time_vs_batch.png": _time_vs_batch(df, out, label),
                 "memory_breakdown.png": _memory(df, out, label), "module_flops.png": _modules(df, out, label, uri),
                 "mfu.png": _mfu(df, out, label), "predicted_vs_measured.png": _predicted(df, out, label)}
    lines = [f"# {title}", "", f"{len(df)} runs.", "", _markdown_table(df, LAYOUT_TABLE if layouts else TABLE), "",
             "## Plots", ""]
    for name, what in drawn.items():
        lines.append(f"![{name}]({name})" if what == "drawn" else f"- `{name}` not drawn: {what}")
    (out / "runs.md").write_text("\n".join(lines) + "\n")
    return drawn


def _figure(title: str, xlabel: str, ylabel: str, label: str = "", panels: Optional[int] = None):
    """A figure titled ``title`` over ``label`` (what the report is of): one axes, or a list of ``panels`` axes when
    ``panels`` is given, three to a row."""
    import matplotlib.pyplot as plt

    count = panels or 1
    columns, rows = min(count, 3), -(-count // 3)
    fig, grid = plt.subplots(rows, columns, figsize=(8 if count == 1 else 5.5 * columns, 5 * rows), dpi=110,
                             squeeze=False)
    fig.suptitle(f"{title}\n{label}" if label else title, fontsize=11)
    axes = [ax for row in grid for ax in row]
    for ax in axes[count:]:  # the last row's empty places
        ax.remove()
    for ax in axes[:count]:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    return (fig, axes[0]) if panels is None else (fig, axes[:count])


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "drawn"


def _flops_vs_seq_len(df, out: Path, label: str) -> str:
    if "batch.seq_len" not in df or M.FLOPS_FORWARD not in df:
        return "no sequence lengths or FLOPs"
    fit = scaling_fit(df, x="batch.seq_len", y=M.FLOPS_FORWARD, by="model.name")
    fit = fit[fit["points"] >= 2]
    if fit.empty:
        return "no model was run at two or more sequence lengths"
    fig, ax = _figure("Forward FLOPs against sequence length", "sequence length (tokens)", "forward FLOPs (FLOP)",
                      label)
    for model, row in fit.iterrows():
        part = df[df["model.name"] == model].groupby("batch.seq_len")[M.FLOPS_FORWARD].median().sort_index()
        ax.plot(part.index, part.values, marker="o", label=f"{model}: slope {row.slope:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend(title="log-log slope (1 linear, 2 quadratic)")
    return _save(fig, out / "flops_vs_seq_len.png")


def _value(key: str, value) -> str:
    """A config value in a legend: ``s2048`` for a sequence length (not 2048.0: a column with gaps is float)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"s{value}" if key == "batch.seq_len" else str(value)


def _time_vs_batch(df, out: Path, label: str) -> str:
    if M.TIME_STEP not in df or df[M.TIME_STEP].isna().all():
        return "no timed runs (meta runs are counted, not timed)"
    keys = [k for k in ("model.name", "batch.seq_len", "dtype.name", "device.type") if k in df]
    if df.dropna(subset=[M.TIME_STEP]).groupby(keys, dropna=False)["batch.size"].nunique().max() < 2:
        return "no model was timed at two or more batch sizes"
    fig, (left, right) = _figure("Step time and throughput against batch size", "batch size (sequences)", "",
                                 label, panels=2)
    left.set_ylabel("median step time (s)")
    right.set_ylabel("tokens per second")
    timed = df.dropna(subset=[M.TIME_STEP])
    for name, part in timed.groupby(keys, dropna=False):
        part = part.groupby("batch.size")[[M.TIME_STEP, M.TOKENS_PER_S]].median().sort_index()
        label = " ".join(_value(k, v) for k, v in zip(keys, name) if str(v) != "nan")
        left.plot(part.index, part[M.TIME_STEP], marker="o", label=label)
        right.plot(part.index, part[M.TOKENS_PER_S], marker="o", label=label)
    batches = sorted(timed["batch.size"].unique())
    for ax in (left, right):
        if batches[-1] / max(batches[0], 1) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(int(b)) for b in batches])  # the batches run, not 1.5 and 2.5
        ax.set_ylim(bottom=0)
    right.legend(fontsize=8)
    return _save(fig, out / "step_time_vs_batch.png")


def _memory(df, out: Path, label: str) -> str:
    parts = [(key, label) for key, label in MEMORY if key in df and df[key].notna().any()]
    if not parts:
        return "no training runs with sizes"
    rows = df.dropna(subset=[parts[0][0]]).copy()
    rows["_total"] = sum(rows[key].fillna(0) for key, _ in parts) / GIB
    rows = rows.sort_values("_total")
    panels = _by_scale(rows["_total"].tolist())
    fig, axes = _figure("Training memory by run (estimate: static + saved activations)", "run", "GiB", label,
                        panels=len(panels))
    for ax, (lo, hi) in zip(axes, panels):
        chunk = rows.iloc[lo:hi]
        bottom = [0.0] * len(chunk)
        for key, label in parts:  # stacked on a linear axis: a segment's height is its size
            values = (chunk[key].fillna(0) / GIB).tolist()
            ax.bar(range(len(chunk)), values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        for x, total in enumerate(bottom):
            ax.annotate(f"{total:,.0f}" if total >= 100 else f"{total:.3g}", (x, total), ha="center", va="bottom",
                        fontsize=8)
        ax.set_xticks(range(len(chunk)), chunk["run_name"], rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "memory_breakdown.png")


def _by_scale(totals: list[float], spread: float = 30.0, most: int = 3) -> list[tuple[int, int]]:
    """Sorted ``totals`` cut into at most ``most`` runs of neighbours within ``spread`` times of each other: one
    panel each, so that a 175B model's bar does not flatten a 125M one's."""
    cuts, start = [], 0
    for i in range(1, len(totals)):
        if totals[i] > spread * max(totals[start], 1e-9) and len(cuts) < most - 1:
            cuts.append((start, i))
            start = i
    return [*cuts, (start, len(totals))]


def _modules(df, out: Path, label: str, uri: Optional[str]) -> str:
    if M.FLOPS_STEP not in df or df[M.FLOPS_STEP].isna().all():
        return "no counted runs"
    family = "model.family" if "model.family" in df else "model.name"
    counted = df.dropna(subset=[M.FLOPS_STEP])
    costliest = [part.loc[part[M.FLOPS_STEP].idxmax()] for _, part in counted.groupby(family)][:6]  # each family's
    tops = []
    for run in costliest:
        try:
            top = bottlenecks(run["run_id"], top=12, uri=uri, merge_repeats=True)
        except Exception as err:  # noqa: BLE001 - the other plots still come
            return f"no per-module breakdown for {run['run_name']} ({err})"
        tops.append((run, top[top["flops"] > 0]))
    fig, axes = _figure("Where the FLOPs go: the costliest run of each family",
                        "share of the model's forward + backward FLOPs (%)", MODULE_AXIS, label,
                        panels=len(tops))
    for ax, (run, top) in zip(axes, tops):
        shares = list(top["share"] * 100)[::-1]
        bars = ax.barh(_module_labels(top)[::-1], shares)
        ax.bar_label(bars, [f"{v:.1f}" for v in shares], fontsize=7, padding=2)
        model = str(run.get("model.name", ""))
        ax.set_title(run["run_name"] if model in run["run_name"] else f"{model} {run['run_name']}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    return _save(fig, out / "module_flops.png")


def _module_labels(rows) -> list[str]:
    """``blocks.*.attn (×12)``: a merged module with how many layers it stands for."""
    return [f"{m} (×{c})" if c > 1 else m for m, c in zip(rows["module"], rows["count"])]


def _mfu(df, out: Path, label: str) -> str:
    if M.MFU not in df or df[M.MFU].isna().all():
        return "no MFU (needs timed runs on a device with a known peak, or device.peak_tflops)"
    keys = [k for k in ("dtype.name", "device.type") if k in df]
    best = df.dropna(subset=[M.MFU]).groupby(keys)[M.MFU].max()
    fig, ax = _figure("Best MFU by dtype and device", "dtype, device", "MFU (%)", label)
    ax.bar([" ".join(map(str, k if isinstance(k, tuple) else (k,))) for k in best.index], best.values * 100)
    return _save(fig, out / "mfu.png")


def _predicted(df, out: Path, label: str) -> str:
    both = [k for k in (M.TIME_STEP, M.TIME_STEP_PREDICTED, M.TIME_STEP_PREDICTED_RATIO) if k in df]
    if len(both) < 3 or df.dropna(subset=both).empty:  # a ratio only where the prediction is of the device timed
        return "no run both timed and predicted for its own device (flopsweep-calibrate, then timed runs on it)"
    runs = df.dropna(subset=both)
    fig, ax = _figure("Predicted against measured step time", "measured step (s)", "predicted step (s)", label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    names = runs["run_name"] if "run_name" in runs else [""] * len(runs)
    for (_, row), name in zip(runs.iterrows(), names):
        ax.scatter(row[M.TIME_STEP], row[M.TIME_STEP_PREDICTED], s=25)
        ax.annotate(str(name), (row[M.TIME_STEP], row[M.TIME_STEP_PREDICTED]), fontsize=7, alpha=0.8)
    low = min(runs[M.TIME_STEP].min(), runs[M.TIME_STEP_PREDICTED].min()) / 1.5
    high = max(runs[M.TIME_STEP].max(), runs[M.TIME_STEP_PREDICTED].max()) * 1.5
    for factor, style, what in ((1.0, "-", "predicted = measured"), (1.25, ":", "±25%"), (0.75, ":", None)):
        ax.plot([low, high], [low * factor, high * factor], style, color="grey", label=what)
    ax.legend(loc="upper left")
    return _save(fig, out / "predicted_vs_measured.png")


def _layouts(df, out: Path, label: str) -> str:
    """Each layout's predicted tokens/s a GPU against its memory a GPU, those that do not fit the part apart, the
    fastest that fits named."""
    keys = [M.PARALLEL_MEMORY_PER_GPU, M.TOKENS_PER_S_PER_GPU_PREDICTED]
    runs = df.dropna(subset=[k for k in keys if k in df]) if all(k in df for k in keys) else df.iloc[:0]
    if runs.empty:
        return "no layout predicted for a part (predict.hardware)"
    fits = runs[M.PARALLEL_FITS].fillna(1) >= 1 if M.PARALLEL_FITS in runs else runs[keys[0]].notna()  # all
    fig, ax = _figure("Parallel layouts: predicted speed against memory a GPU", "memory a GPU (GiB)",
                      "predicted tokens/s a GPU", label)
    for kept, style, what in ((True, "o", "fits"), (False, "x", "does not fit the part's memory")):
        part = runs[fits == kept]
        if not part.empty:
            ax.scatter(part[keys[0]] / GIB, part[keys[1]], marker=style, s=22, label=f"{what} ({len(part)})")
    if fits.any():
        best = runs[fits].loc[runs[fits][keys[1]].idxmax()]
        ax.scatter([best[keys[0]] / GIB], [best[keys[1]]], marker="*", s=160, color="black",
                   label=f"fastest that fits: {best['run_name']}")
    parts = runs["predict.hardware"].dropna().unique() if "predict.hardware" in runs else []
    if not fits.all() and len(parts) == 1 and (part := accelerator(str(parts[0]))) is not None:
        ax.axvline(part.memory_bytes / GIB, color="grey", linestyle=":", label=f"the {part.name}'s {capacity(part)}")
    ax.legend(fontsize=8)
    return _save(fig, out / "layouts.png")


def write_profile_report(run: str, out: Optional[Path], uri: str, top: int) -> Path:
    """The module profile of one run: ``profile.txt``, its CSVs and ``profile.png`` (FLOPs share against
    forward-time share of the costliest modules, every layer's copy together)."""
    result = load_result(run, uri)
    require(bool(result.breakdown.get("profile")), "run", run,
            "has no module profile: run it again with measure.profile=true (on cpu or cuda for latencies)")
    out = out or Path("outputs") / "reports" / f"profile_{Path(run).name}"
    write_profile(result, out)
    rows = bottlenecks(run, top=top, uri=uri, merge_repeats=True)
    fig, ax = _figure(f"{run_name(result.config)}: share of forward + backward FLOPs, and of forward time (mean)",
                      "share of the model (%)", MODULE_AXIS)
    labels = _module_labels(rows)[::-1]
    positions = range(len(labels))
    ax.barh([p + 0.2 for p in positions], list(rows["share"] * 100)[::-1], height=0.4,
            label="forward + backward FLOPs")
    if "time_share" in rows:
        ax.barh([p - 0.2 for p in positions], list(rows["time_share"] * 100)[::-1], height=0.4,
                label="forward latency")
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    _save(fig, out / "profile.png")
    return out


def _markdown_table(df, table: tuple[str, ...]) -> str:
    import pandas as pd

    estimated = any(estimated_peak(row) is not None for _, row in df.iterrows())
    columns = [c for c in table if c in df.columns or (c == ESTIMATED_PEAK and estimated)]

    def cell(row, column: str) -> str:
        if column in ("run_name", "status"):
            return str(row[column]).replace("|", "\\|")
        if column == ESTIMATED_PEAK:  # it showed the training peak where the console showed the larger one
            return format_metric(M.STEP_PEAK_BYTES, estimated_peak(row))
        return format_metric(column, None if pd.isna(row[column]) else row[column])

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for _, row in df.iterrows()]
    return "\n".join(lines)
