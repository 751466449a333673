"""A report of logged runs: a folder with the runs as CSV and Markdown and the plots that answer the usual
questions; and one run's module profile with its plot.

Plots (each drawn when the runs have its data): FLOPs against sequence length on log-log axes with the fitted
slope per model, step time against batch size per dtype, the training memory of each run as stacked bars,
the FLOPs shares of the costliest run's modules, and MFU by dtype and device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from flopsweep.analysis import bottlenecks, scaling_fit
from flopsweep.core import metrics as M
from flopsweep.core.errors import require
from flopsweep.core.text import format_metric
from flopsweep.sinks.jobdir import write_profile
from flopsweep.sinks.reader import load_result

GIB = 2**30
MEMORY = ((M.WEIGHTS_BYTES, "weights"), (M.GRADS_BYTES, "gradients"), (M.OPTIMIZER_STATE_BYTES, "optimizer state"),
          (M.ACTIVATIONS_BYTES, "activations"))
TABLE = ("run_name", "status", M.PARAMS, M.FLOPS_STEP, M.FLOPS_FORWARD, M.TRAIN_PEAK_BYTES, M.TIME_STEP,
         M.TOKENS_PER_S, M.MFU)


def write_report(df, out: Path, title: str, uri: Optional[str] = None) -> dict[str, str]:
    """Write ``runs.csv``, ``runs.md`` and every plot the runs have data for into ``out``. Returns, per plot
    file name, the file written or why it was not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    df = df.sort_values([c for c in ("model.name", "batch.seq_len", "batch.size") if c in df.columns])
    df.to_csv(out / "runs.csv", index=False)
    drawn = {"flops_vs_seq_len.png": _flops_vs_seq_len(df, out), "step_time_vs_batch.png": _time_vs_batch(df, out),
             "memory_breakdown.png": _memory(df, out), "module_flops.png": _modules(df, out, uri),
             "mfu.png": _mfu(df, out)}
    lines = [f"# {title}", "", f"{len(df)} runs.", "", _markdown_table(df), "", "## Plots", ""]
    for name, what in drawn.items():
        lines.append(f"![{name}]({name})" if what == "drawn" else f"- `{name}` not drawn: {what}")
    (out / "runs.md").write_text("\n".join(lines) + "\n")
    return drawn


def _figure(title: str, xlabel: str, ylabel: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "drawn"


def _flops_vs_seq_len(df, out: Path) -> str:
    if "batch.seq_len" not in df or M.FLOPS_FORWARD not in df:
        return "no sequence lengths or FLOPs"
    fit = scaling_fit(df, x="batch.seq_len", y=M.FLOPS_FORWARD, by="model.name")
    fit = fit[fit["points"] >= 2]
    if fit.empty:
        return "no model was run at two or more sequence lengths"
    fig, ax = _figure("Forward FLOPs against sequence length", "sequence length (tokens)", "forward FLOPs")
    for model, row in fit.iterrows():
        part = df[df["model.name"] == model].groupby("batch.seq_len")[M.FLOPS_FORWARD].median().sort_index()
        ax.plot(part.index, part.values, marker="o", label=f"{model}: slope {row.slope:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend(title="log-log slope (1 linear, 2 quadratic)")
    return _save(fig, out / "flops_vs_seq_len.png")


def _time_vs_batch(df, out: Path) -> str:
    if M.TIME_STEP not in df or df[M.TIME_STEP].isna().all():
        return "no timed runs (meta runs are counted, not timed)"
    fig, ax = _figure("Step time against batch size", "batch size (sequences)", "median step time (s)")
    keys = [k for k in ("model.name", "dtype.name", "device.type") if k in df]
    for name, part in df.dropna(subset=[M.TIME_STEP]).groupby(keys):
        part = part.groupby("batch.size")[M.TIME_STEP].median().sort_index()
        ax.plot(part.index, part.values, marker="o", label=" ".join(map(str, name)))
    if df["batch.size"].max() / max(df["batch.size"].min(), 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.legend()
    return _save(fig, out / "step_time_vs_batch.png")


def _memory(df, out: Path) -> str:
    parts = [(key, label) for key, label in MEMORY if key in df and df[key].notna().any()]
    if not parts:
        return "no training runs with sizes"
    rows = df.dropna(subset=[parts[0][0]])
    fig, ax = _figure("Training memory by run (estimate: static + saved activations)", "run", "GiB")
    bottom = [0.0] * len(rows)
    for key, label in parts:
        values = (rows[key].fillna(0) / GIB).tolist()
        ax.bar(range(len(rows)), values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(rows)), rows["run_name"], rotation=60, ha="right", fontsize=7)
    if max(bottom) / max(min(b for b in bottom if b > 0), 1e-12) >= 100:
        ax.set_yscale("log")
    ax.legend()
    return _save(fig, out / "memory_breakdown.png")


def _modules(df, out: Path, uri: Optional[str]) -> str:
    if M.FLOPS_STEP not in df or df[M.FLOPS_STEP].isna().all():
        return "no counted runs"
    costliest = df.loc[df[M.FLOPS_STEP].idxmax()]
    try:
        top = bottlenecks(costliest["run_id"], top=12, uri=uri, merge_repeats=True)
        top = top[top["flops"] > 0]
    except Exception as err:  # noqa: BLE001 - the other plots still come
        return f"no per-module breakdown for {costliest['run_name']} ({err})"
    fig, ax = _figure(f"Where the FLOPs go: {costliest['run_name']}",
                      "share of the model's forward + backward FLOPs (%)", "module (* = every layer)")
    labels = _module_labels(top)
    ax.barh(labels[::-1], list(top["share"] * 100)[::-1])
    return _save(fig, out / "module_flops.png")


def _module_labels(rows) -> list[str]:
    """``blocks.*.attn (×12)``: a merged module with how many layers it stands for."""
    return [f"{m} (×{c})" if c > 1 else m for m, c in zip(rows["module"], rows["count"])]


def _mfu(df, out: Path) -> str:
    if M.MFU not in df or df[M.MFU].isna().all():
        return "no MFU (needs timed runs on a device with a known peak, or device.peak_tflops)"
    keys = [k for k in ("dtype.name", "device.type") if k in df]
    best = df.dropna(subset=[M.MFU]).groupby(keys)[M.MFU].max()
    fig, ax = _figure("Best MFU by dtype and device", "dtype, device", "MFU (%)")
    ax.bar([" ".join(map(str, k if isinstance(k, tuple) else (k,))) for k in best.index], best.values * 100)
    return _save(fig, out / "mfu.png")


def write_profile_report(run: str, out: Optional[Path], uri: str, top: int) -> Path:
    """The module profile of one run: ``profile.txt``, its CSVs and ``profile.png`` (FLOPs share against
    forward-time share of the costliest modules, every layer's copy together)."""
    result = load_result(run, uri)
    require(bool(result.breakdown.get("profile")), "run", run,
            "has no module profile: run it again with measure.profile=true (on cpu or cuda for latencies)")
    out = out or Path("outputs") / "reports" / f"profile_{Path(run).name}"
    write_profile(result, out)
    rows = bottlenecks(run, top=top, uri=uri, merge_repeats=True)
    fig, ax = _figure("Where the forward pass goes: share of FLOPs and of time", "share of the model (%)",
                      "module (* = every layer)")
    labels = _module_labels(rows)[::-1]
    positions = range(len(labels))
    ax.barh([p + 0.2 for p in positions], list(rows["share"] * 100)[::-1], height=0.4,
            label="forward + backward FLOPs")
    if "time_share" in rows:
        ax.barh([p - 0.2 for p in positions], list(rows["time_share"] * 100)[::-1], height=0.4,
                label="forward latency")
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.legend()
    _save(fig, out / "profile.png")
    return out


def _markdown_table(df) -> str:
    import pandas as pd

    columns = [c for c in TABLE if c in df.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in df.iterrows():
        cells = [str(row[c]).replace("|", "\\|") if c in ("run_name", "status")
                 else format_metric(c, None if pd.isna(row[c]) else row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
