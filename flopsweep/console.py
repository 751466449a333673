"""Human-readable numbers, the tables printed on the console, and how commands write and end."""

from __future__ import annotations

import gc
import sys
from typing import Any, Iterable, NoReturn, Optional

from flopsweep import metrics as M


def human(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{_three(value / factor)}{prefix}{unit}"
    return f"{_three(value)}{unit}"


def _three(value: float) -> str:
    """Three significant digits, without the exponent that ``.3g`` gives from 999.5 up (``1000``, not ``1e+03``)."""
    text = f"{value:.3g}"
    return f"{value:.0f}" if "e" in text and abs(value) >= 1 else text


def seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def size_bytes(value: Optional[float]) -> str:
    if value is None:
        return "-"
    for factor, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{_three(value / factor)} {unit}"
    return f"{value:.0f} B"


def format_metric(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.startswith("time/"):
        return seconds(value) if key.endswith("_s") else f"{value:.3g}"
    if key.endswith("_bytes"):
        return size_bytes(value)
    if key == M.MFU:
        return f"{100 * value:.1f} %"
    if key.startswith(("flops/", "macs/", "size/params", "speed/")):
        return human(value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


JOB_METRICS = [M.FLOPS_FORWARD, M.FLOPS_BACKWARD, M.FLOPS_OPTIMIZER, M.FLOPS_STEP, M.FLOPS_FORWARD_ANALYTIC,
               M.PARAMS, M.WEIGHTS_BYTES, M.TRAIN_PEAK_BYTES, M.TIME_STEP, M.TOKENS_PER_S, M.MFU]


def metric_lines(metrics: dict[str, Any], keys: Optional[list[str]] = None) -> list[str]:
    """One aligned line per metric: all of them, or those of ``keys`` that the job has."""
    shown = {k: metrics[k] for k in keys if k in metrics} if keys is not None else metrics
    width = max((len(k) for k in shown), default=0)
    return [f"{key:<{width}}  {format_metric(key, value)}" for key, value in shown.items()]


SUMMARY_COLUMNS = [("job", None), ("model", None), ("batch", None), ("seq", None), ("dtype", None),
                   ("device", None), ("status", None), ("params", M.PARAMS), ("fwd FLOPs", M.FLOPS_FORWARD),
                   ("step FLOPs", M.FLOPS_STEP), ("step time", M.TIME_STEP), ("tokens/s", M.TOKENS_PER_S),
                   ("MFU", M.MFU)]


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def summary_row(job: str, result) -> list[str]:
    cfg = result.config or {}
    model = (cfg.get("model") or {}).get("name", "?")
    batch = cfg.get("batch") or {}
    cells = [job, model, str(batch.get("size", "-")), str(result.metrics.get(M.SEQ_LEN) or "-"),
             (cfg.get("dtype") or {}).get("name", "-"), str((cfg.get("device") or {}).get("type", "-")),
             result.status]
    for _, key in SUMMARY_COLUMNS[len(cells):]:
        cells.append(format_metric(key, result.metrics.get(key)))
    return cells


def summary_table(results: list[tuple[str, Any]]) -> str:
    return table([name for name, _ in SUMMARY_COLUMNS], [summary_row(job, r) for job, r in results])


def _share(part: Optional[float], whole: Optional[float]) -> str:
    return f"{100 * part / whole:.1f} %" if part is not None and whole else "-"


def profile_text(rows: list[dict[str, Any]], title: str, top: int = 3) -> str:
    """The module profile as text: the model's totals, the top modules at each depth, then the whole tree."""
    from flopsweep.measure.profile import by_depth

    model = rows[0]
    flops, latency = model["forward_flops"], model["forward_latency_s"]
    lines = [f"Module profile: {title}",
             f"{model['type']}: {human(model['params'])} parameters, forward {human(flops)} FLOPs "
             f"({human(model['macs'])} MACs), backward {human(model['backward_flops'])} FLOPs, forward latency "
             f"{seconds(latency) if latency is not None else 'not timed'}"
             + (f", {human(flops / latency)}FLOP/s" if latency else ""),
             "FLOPs: matmul class, multiply-add = 2. Latency: mean forward pass, hooks on every module.", "",
             f"By depth: the top {top} modules by forward FLOPs at each depth, all of that depth, and the rest "
             "(work done directly in shallower modules)"]
    lines.append(table(["depth", "module", "type", "params", "fwd FLOPs", "FLOPs share", "fwd latency", "time share"],
                       [[str(r["depth"]), r["module"], r["type"], human(r["params"]), human(r["forward_flops"]),
                         _share(r["forward_flops"], flops), seconds(r["forward_latency_s"]),
                         _share(r["forward_latency_s"], latency)] for r in by_depth(rows, top)]))
    lines += ["", "Every module (inclusive: each with everything under it)"]
    lines.append(table(["module", "type", "params", "MACs", "fwd FLOPs", "bwd FLOPs", "fwd latency", "FLOP/s"],
                       [["  " * r["depth"] + r["module"], r["type"], human(r["params"]), human(r["macs"]),
                         human(r["forward_flops"]), human(r["backward_flops"]), seconds(r["forward_latency_s"]),
                         human(r["forward_flops_per_s"])] for r in rows]))
    return "\n".join(lines) + "\n"


def say(text: str, stream: Any = None) -> None:
    """Write ``text`` and its newline in one write: the lines of jobs running side by side then stay whole
    (print writes the newline apart, and with PYTHONUNBUFFERED each part reaches the shared pipe on its own)."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def exit_command(code: int) -> NoReturn:
    """End a command with ``code``. What it imported (torch, MLflow, SQLAlchemy: some 300k objects) is frozen first:
    the interpreter's exit otherwise collects them all, several times over, 1.2 s after the work is done."""
    gc.freeze()
    sys.exit(code)
