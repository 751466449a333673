"""Formatting for people, in one place: numbers with their units, aligned tables, a job's metrics and its
``stats.txt``, a sweep's summary table and the module profile as text.

Why one file: every figure the console, ``stats.txt`` and MLflow's notes show goes through the same few helpers
(``format_metric``, ``table``, ``human``); the summary's columns and a job's lines are their two main readers."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Optional

from flopsweep.core import metrics as M
from flopsweep.core.hardware import Accelerator
from flopsweep.core.profile import by_depth
from flopsweep.core.result import Result, loaded


_ROLE = re.compile(r":\w+:`(~?)([^`]*)`")  # :func:`name`, :class:`~package.module.Name`


def plain(doc: str) -> str:
    """A docstring as a command's ``--help`` shows it: reST's markup left out (double backquotes, ``:role:`name```
    as the name, ``~`` as its last part)."""
    doc = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), doc)
    return doc.replace("``", "")


_SI = ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))
_COUNT = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))  # parameters and tokens: billions, as models are named


def human(value: Optional[float], unit: str = "", prefixes: tuple[tuple[float, str], ...] = _SI) -> str:
    """Three significant digits and a decimal prefix: FLOPs and rates in SI's (``22.3G``, ``1.13E``; with a unit
    after a space, ``149 GFLOP/s``)."""
    if value is None:
        return "-"
    for factor, prefix in prefixes:
        if abs(value) >= factor:
            return f"{_three(value / factor)}{' ' if unit else ''}{prefix}{unit}"
    return f"{_three(value)}{' ' if unit else ''}{unit}"


def count(value: Optional[float]) -> str:
    """Parameters and tokens: three significant digits in thousands, millions, billions, trillions (``109M``,
    ``175B``), as models and datasets are named; FLOPs keep SI's G."""
    return human(value, prefixes=_COUNT)


def _three(value: float) -> str:
    """Three significant digits, without the exponent that ``.3g`` gives from 999.5 up (``1000``, not ``1e+03``)."""
    text = f"{value:.3g}"
    return f"{value:.0f}" if "e" in text and abs(value) >= 1 else text


def counted(n: int, noun: str) -> str:
    """``n`` and its noun, plural unless one: ``1 job``, ``2,048 jobs``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def whole(value: Optional[float]) -> str:
    """Whole numbers from 100 up (``12,345``), three significant digits below (``0.562``): hours, days, dollars."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def billions(value: float) -> str:
    """Tokens and parameters of a plan or a budget, in billions with commas: ``1,000.0B`` for 1e12 (``175B``'s B);
    below a billion as :func:`count` gives them (``81.9M``, not ``0.1B``)."""
    return f"{value / 1e9:,.1f}B" if abs(value) >= 1e9 else count(value)


LAYOUT_KEYS = ("dp", "tp", "pp", "vpp", "cp", "ep", "zero")  # a parallel layout's name: dp16tp8pp8zero1


def layout_name(layout: Mapping[str, Any], sep: str = "") -> str:
    """A parallel layout as every table and run names it: ``dp16tp8pp8zero1`` (``sep=" "``: ``dp16 tp8 pp8 zero1``);
    dp, tp and pp as given, the others where they are not 1 (ZeRO where it is not 0)."""
    return sep.join(f"{key}{layout[key]}" for key in LAYOUT_KEYS
                    if layout.get(key) and (key in ("dp", "tp", "pp", "zero") or layout[key] != 1))


def is_layout_key(key: str) -> bool:
    """Whether a config key is one a layout's name spells (``parallel.dp``, ``parallel.zero``): where a sweep varies
    any of them, the layout is named whole, in one part of a name and one column of a table."""
    return key.startswith("parallel.") and key[len("parallel."):] in LAYOUT_KEYS


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


def capacity(part: Accelerator) -> str:
    """A part's memory in the binary unit every estimate is given in, and as its datasheet gives it: ``74.5 GiB
    (80 GB)``."""
    return f"{size_bytes(part.memory_bytes)} ({_three(part.memory_gb)} GB)"  # 24 GiB given: 25.8 GB, not 25.7698


def format_metric(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.startswith("time/"):
        return seconds(value) if key.endswith("_s") else f"{value:.3g}"
    if key.endswith(("_bytes", "_bytes_per_gpu", "_bytes_per_token")):
        return size_bytes(value)
    if key == M.PARALLEL_FITS:
        return "yes" if value >= 1 else "no"
    if key in (M.MFU, M.MFU_PREDICTED, M.HFU_PREDICTED):
        return share(value)
    if key in (M.TOKENS_PER_S, M.SAMPLES_PER_S, M.OUTPUT_TOKENS_PER_S, M.TOKENS_PER_S_PER_GPU_PREDICTED):
        return whole(value)  # as the serving table and the layout search give them: 1,512
    if key.startswith("size/params"):
        return count(value)
    if key.startswith(("flops/", "macs/", "speed/")):
        return human(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return f"{int(value):,}"  # a count: parallel/gpus 1,024, as every other line gives it
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def share(value: float) -> str:
    """A share with its sign: ``54.6%``, a small one with two significant digits (a toy model's ``0.042%``, a
    budget's ``0.00038%``; not ``0.0%``)."""
    return f"{value:.1%}" if value >= 0.001 else f"{100 * value:.2g}%"


JOB_METRICS = [M.FLOPS_FORWARD, M.FLOPS_BACKWARD, M.FLOPS_OPTIMIZER, M.FLOPS_OPTIMIZER_MEAN, M.FLOPS_STEP,
               M.FLOPS_FORWARD_ANALYTIC, M.PARAMS, M.PARAMS_ACTIVE, M.PARAMS_TRAINABLE, M.WEIGHTS_BYTES,
               M.TRAIN_PEAK_BYTES, M.STEP_PEAK_BYTES, M.MEASURED_PEAK_BYTES, M.TIME_STEP, M.TOKENS_PER_S,
               M.SAMPLES_PER_S, M.MFU,
               M.TIME_STEP_PREDICTED, M.MFU_PREDICTED]
GENERATION_METRICS = [M.FLOPS_PREFILL, M.FLOPS_DECODE_TOKEN_FIRST, M.FLOPS_DECODE_TOKEN_LAST, M.FLOPS_GENERATION,
                      M.PARAMS, M.PARAMS_ACTIVE, M.WEIGHTS_BYTES, M.KV_CACHE_BYTES, M.KV_CACHE_BYTES_PER_TOKEN,
                      M.STEP_PEAK_BYTES, M.MEASURED_PEAK_BYTES, M.TIME_TTFT, M.TIME_TPOT, M.TIME_TPOT_LAST,
                      M.OUTPUT_TOKENS_PER_S]
PARALLEL_METRICS = [M.PARALLEL_GPUS, M.PARALLEL_MICRO_BATCHES, M.FLOPS_STEP_PER_GPU, M.PARALLEL_MEMORY_PER_GPU,
                    M.PARALLEL_STATES_PER_GPU, M.PARALLEL_ACTIVATIONS_PER_GPU, M.TIME_STEP_PREDICTED,
                    M.TIME_COMM_EXPOSED, M.TIME_BUBBLE, M.TOKENS_PER_S_PER_GPU_PREDICTED, M.MFU_PREDICTED]
SPREAD_WARNING = 0.25  # a timing whose spread (IQR) is this share of its median or more is said to be noisy


def job_lines(result: Result) -> list[str]:
    """What the console says of a finished job: the figures that matter for its mode (a generation's, a LoRA job's
    trainable parameters and a mixture of experts' active ones beside all of them, a GaLore job's mean optimizer step,
    the memory a meta job would need),
    and how they were made where it is not plain (the batch batch.size=max chose, times extrapolated per block, a
    timing too noisy to trust without a second look)."""
    m = result.metrics
    keys = GENERATION_METRICS if M.FLOPS_PREFILL in m else PARALLEL_METRICS if M.PARALLEL_GPUS in m else JOB_METRICS
    for same in (M.PARAMS_TRAINABLE, M.PARAMS_ACTIVE):  # said where they differ: a LoRA job's, a mixture's
        if m.get(same) == m.get(M.PARAMS):
            keys = [k for k in keys if k != same]
    if M.TOKENS_PER_S in m:  # samples a second where a sample is no sequence of tokens (an image)
        keys = [k for k in keys if k != M.SAMPLES_PER_S]
    lines = metric_lines(m, keys)
    if M.STEP_PEAK_BYTES in m and M.TRAIN_PEAK_BYTES in m and M.STEP_PEAK_BYTES in keys:  # two estimates: which counts
        which = "the simulated step's" if m[M.STEP_PEAK_BYTES] >= m[M.TRAIN_PEAK_BYTES] else "the static sum's"
        lines.append(f"est. peak {size_bytes(estimated_peak(m))} ({which}, the larger): what the memory check and "
                     "batch.size=max use")
    search = result.info.get("batch_search") or {}
    if search.get("chosen"):
        lines.append(f"batch.size=max chose {search['chosen']} ({search.get('confirmed') or 'estimated on meta'})")
    timing = result.timing
    if timing is not None and timing.method == "per_block":
        blocks = ", ".join(f"{name} x{n}" for name, n in (timing.blocks or {}).items())
        lines.append(f"times extrapolated (measure.timing=per_block): the first block of each stack timed, times "
                     f"its length ({blocks}); embeddings, head and loss left out")
    prediction = predicted_line(result)
    if prediction:
        lines.append(prediction)
    lines += [f"note: {note}" for note in (result.info.get("prediction") or {}).get("notes") or []]  # how it was
    # made where it was not as asked (no bfloat16 matmuls in the profile: as float32; tp across scale-up domains)
    profile = result.breakdown.get("profile") or []
    if profile and profile[0]["forward_latency_s"]:
        lines.append("profile: " + hooks_line(profile[0]["forward_latency_s"], unhooked_forward(result)))
    uncounted = result.breakdown.get("uncounted_ops") or {}
    if uncounted:  # else a count short of them reads as exact (a fused layer counted 0 FLOPs)
        lines.append("warning: ops with arithmetic but no formula, not counted: " +
                     ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items())))
    noisy = spread_warning(result)
    return [*lines, f"warning: {noisy}"] if noisy else lines


def predicted_line(result: Result) -> Optional[str]:
    """The predicted step in words: for which part, from which profile, against the measured median, and what bounds
    it; or why there is none where one was asked for."""
    info, m = result.info.get("prediction") or {}, result.metrics
    if info.get("error"):
        return f"predicted step: none ({info['error']})"
    if m.get(M.TIME_STEP_PREDICTED) is None:
        return None
    ratio = m.get(M.TIME_STEP_PREDICTED_RATIO)
    against = f", x{ratio:.3g} the measured" if ratio is not None else ""  # x0.0025, not x0.00
    bound = " / ".join(f"{what} {m[key]:.0%}" for what, key in (
        ("compute", M.PREDICTED_SHARE_COMPUTE), ("memory", M.PREDICTED_SHARE_MEMORY),
        ("launch", M.PREDICTED_SHARE_LAUNCH)) if key in m) or result.bottleneck or ""
    origin = info.get("profile") or "default curves" if info.get("default") else "calibrated"  # which default
    return (f"predicted step: {seconds(m[M.TIME_STEP_PREDICTED])} on {info.get('part', '?')} ({origin}"
            f"{', fused' if info.get('fused') else ''}){against}; {bound}")


def unhooked_forward(result: Result) -> Optional[float]:
    """The job's forward time from step timings that ran without the profile's hooks (a sweep job timed whole);
    None where they ran with them (your own loop's meter) or were extrapolated (per_block)."""
    timing = result.timing
    return result.metrics.get(M.TIME_FORWARD) if timing is not None and timing.method == "full" else None


def hooks_line(hooked: float, plain: Optional[float]) -> str:
    """The profile's forward pass (hooks on every module, a mean) beside the job's timed forward (no hooks, a
    median), and how to read the profile's latencies when the two differ."""
    if not plain:
        return f"forward {seconds(hooked)} with hooks on every module (mean); module latencies are shares of it"
    ratio = hooked / plain
    line = (f"forward {seconds(hooked)} with hooks on every module (mean), {seconds(plain)} in the step timings "
            f"without them (median): x{ratio:.2f}")
    if ratio > 1 + SPREAD_WARNING:  # a quarter apart, either way
        return line + "; the hooks' cost on many small modules: read the profile's latencies as shares, not times"
    if ratio < 1 / (1 + SPREAD_WARNING):
        return line + ("; the timed forward ran slower than the profiled passes after it (a busier machine, or its "
                       "spread: see the timing), so compare shares, not times")
    return line


def spread_warning(result: Result) -> Optional[str]:
    """A line when the job's timing is noisy (spread at least :data:`SPREAD_WARNING` of the median) or when the
    machine was loaded while it timed (other processes kept more than half its cores busy; a result from before
    that was recorded, its load average over the cores: that counted a sweep's previous job and a pip install just
    before a demo, and warned on 4 of its 5 jobs), both where both hold (the load hid a spread of 108%), else None.
    Its advice is the job's own: a sweep job's keys, or your loop's steps (``flopsweep.meter``)."""
    timing, m, said = result.timing, result.metrics, []
    busy = None
    if timing is not None and timing.cores and timing.other_cores is not None:  # what ran beside it, itself aside
        if loaded(timing.other_cores, timing.cores, timing.threads):
            busy = f"other processes kept {timing.other_cores:.1f} of its {timing.cores} cores busy"
    elif timing is not None and timing.load_average is not None and timing.cores and \
            timing.load_average > timing.cores:  # a result from before other_cores: its load average
        busy = f"load average {timing.load_average:.1f} over {timing.cores} cores"
    if busy:
        said.append(f"the machine was loaded when this job timed its step ({busy}): its times are likely slower than "
                    "the model's; time it on a quieter machine")
    steadier = ("time more steps inside the meter" if timing is not None and timing.method == "loop" else
                "raise measure.repeats, set device.threads below the cores") + ", or use a quieter machine"
    for median, spread, what in ((M.TIME_STEP, M.TIME_STEP_SPREAD, "step time"),
                                 (M.TIME_TPOT, M.TIME_TPOT_SPREAD, "time per output token")):
        if m.get(median) and m.get(spread) is not None and m[spread] / m[median] >= SPREAD_WARNING:
            said.append(f"{what} varies: its spread (IQR) is {m[spread] / m[median]:.0%} of its median; for steadier "
                        f"figures {steadier}" if not said else f"its {what} varies by {m[spread] / m[median]:.0%} "
                        "of its median (IQR)")
            break
    return "; ".join(said) or None


def metric_lines(metrics: dict[str, Any], keys: Optional[list[str]] = None) -> list[str]:
    """One aligned line per metric: all of them, or those of ``keys`` that the job has a figure for."""
    shown = {k: metrics[k] for k in keys if metrics.get(k) is not None} if keys is not None else metrics
    width = max((len(k) for k in shown), default=0)
    return [f"{key:<{width}}  {format_metric(key, value)}" for key, value in shown.items()]


# the summary's columns, by what a sweep's jobs are: (header, metric, fallbacks where a job has no such, always shown)
_BASE = ["job", "model", "batch", "seq", "dtype", "device", "status"]
# est. peak: the larger of the simulated step's and the training peak's estimates, as the pre-check and batch=max
_PEAKS = [("est. peak", M.STEP_PEAK_BYTES, (M.TRAIN_PEAK_BYTES,), True),
          ("measured peak", M.MEASURED_PEAK_BYTES, (), False)]
TRAINING_COLUMNS = [("params", M.PARAMS, (), True), ("active", M.PARAMS_ACTIVE, (), False),
                    ("fwd FLOPs", M.FLOPS_FORWARD, (), True), ("step FLOPs", M.FLOPS_STEP, (), True), *_PEAKS,
                    ("step time", M.TIME_STEP, (M.TIME_TPOT,), False), ("predicted", M.TIME_STEP_PREDICTED, (), False),
                    ("tokens/s", M.TOKENS_PER_S, (M.OUTPUT_TOKENS_PER_S,), False),
                    ("samples/s", M.SAMPLES_PER_S, (), False), ("MFU", M.MFU, (), False)]
GENERATION_COLUMNS = [("params", M.PARAMS, (), True), ("active", M.PARAMS_ACTIVE, (), False),
                      ("prefill FLOPs", M.FLOPS_PREFILL, (), True),
                      ("FLOPs/token", M.FLOPS_DECODE_TOKEN_FIRST, (), True),
                      ("KV/token", M.KV_CACHE_BYTES_PER_TOKEN, (), True), *_PEAKS, ("TTFT", M.TIME_TTFT, (), False),
                      ("TPOT", M.TIME_TPOT, (), False), ("out tokens/s", M.OUTPUT_TOKENS_PER_S, (), False)]
PARALLEL_COLUMNS = [("GPUs", M.PARALLEL_GPUS, (), True), ("step FLOPs/GPU", M.FLOPS_STEP_PER_GPU, (), True),
                    ("memory/GPU", M.PARALLEL_MEMORY_PER_GPU, (), True),
                    ("predicted", M.TIME_STEP_PREDICTED, (), False),
                    ("tokens/s/GPU", M.TOKENS_PER_S_PER_GPU_PREDICTED, (), False), ("MFU", M.MFU_PREDICTED, (), False),
                    ("fits", M.PARALLEL_FITS, (), False)]  # on the part predicted for: its peak in its memory


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def summary_columns(results: list[Result]) -> list[tuple[str, str]]:
    """The summary's metric columns for ``results``, each ``(header, metric)``: a generation sweep's (prefill and
    per-token FLOPs, the KV cache, TTFT, TPOT) where every measured job is a generation, else training's (a mixed
    sweep's generations show their TPOT and output tokens/s there), a GPU's where every one is a parallel layout;
    a column no job has a figure for is left out, and ``active`` parameters only where a mixture of experts has fewer
    than all."""
    measured = [r for r in results if r.metrics]
    generation = bool(measured) and all(M.FLOPS_PREFILL in r.metrics for r in measured)
    parallel = bool(measured) and all(M.PARALLEL_GPUS in r.metrics for r in measured)
    columns = []
    kinds = GENERATION_COLUMNS if generation else PARALLEL_COLUMNS if parallel else TRAINING_COLUMNS
    for header, key, fallbacks, always in kinds:
        found = next((k for k in (key, *fallbacks) if any(r.metrics.get(k) is not None for r in measured)), None)
        if key == M.PARAMS_ACTIVE and not any(r.metrics.get(key) not in (None, r.metrics.get(M.PARAMS))
                                              for r in measured):
            continue
        if key == M.SAMPLES_PER_S and all(r.metrics.get(M.TOKENS_PER_S) is not None for r in measured
                                          if r.metrics.get(key) is not None):  # only where a job has no tokens/s
            continue
        if found is not None or always:
            columns.append((header, found or key))
    return columns


def estimated_peak(metrics: Mapping[str, Any]) -> Optional[float]:
    """A job's est. peak: the larger of its two memory estimates (the simulated step's, the training peak's), the one
    the memory checks use (run/fit.py's peak_bytes); None where it has neither (a DataFrame's NaN is none)."""
    found = [v for k in (M.STEP_PEAK_BYTES, M.TRAIN_PEAK_BYTES) if (v := metrics.get(k)) is not None and v == v]
    return max(found, default=None)


def summary_row(job: str, result: Result, columns: list[tuple[str, str]]) -> list[str]:
    cfg = result.config or {}
    batch = cfg.get("batch") or {}
    seq = result.metrics.get(M.SEQ_LEN) or batch.get("seq_len")  # as run, else as asked (a job cut short)
    cells = [job, result.model_name, str(batch.get("size", "-")), str(seq or "-"),
             (cfg.get("dtype") or {}).get("name", "-"), str((cfg.get("device") or {}).get("type", "-")),
             result.status]
    fallbacks = {key: fb for _, key, fb, _ in TRAINING_COLUMNS + GENERATION_COLUMNS + PARALLEL_COLUMNS}
    for _, key in columns:  # a job without the column's metric shows its fallback's (a generation's TPOT)
        if key == M.STEP_PEAK_BYTES:
            cells.append(format_metric(key, estimated_peak(result.metrics)))
            continue
        found = next((k for k in (key, *fallbacks.get(key, ())) if result.metrics.get(k) is not None), key)
        cells.append(format_metric(found, result.metrics.get(found)))
    return cells


_SHOWN = ("model", "model.name", "batch.size", "batch.seq_len", "dtype", "dtype.name", "device", "device.type")


def summary_table(results: list[tuple[str, Result]], varying: tuple[str, ...] = ()) -> str:
    """The sweep's table: each job's row; ``varying``, the config keys the sweep varies, each a column of its own
    where the base columns do not show it already (``optimizer``, ``train.rank``, ...)."""
    columns = summary_columns([r for _, r in results])
    swept = ["layout"] * any(map(is_layout_key, varying)) + [  # one layout column, as runs name them
        key for key in varying if key not in _SHOWN and not is_layout_key(key)]
    rows = [summary_row(job, r, columns) for job, r in results]
    rows = [row[:len(_BASE)] + [layout_name(r.config.get("parallel") or {}, " ") if key == "layout"
                                else _config_value(r.config, key) for key in swept] + row[len(_BASE):]
            for row, (_, r) in zip(rows, results)]
    named = [key.partition(".")[0] if key.count(".") == 1 and key.endswith((".name", ".mode", ".type", ".kind"))
             else key.removeprefix("parallel.") for key in swept]  # a group's option by the group: optimizer, train;
    # a layout's other keys beside its column: micro_batch_size, recompute
    return table(_BASE + named + [header for header, _ in columns], rows)


def _config_value(config: Mapping[str, Any], key: str) -> str:
    """A config value by its dotted key (``optimizer.name``), ``-`` where the job has none."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "-" if node is None else str(node)


def _share(part: Optional[float], whole: Optional[float]) -> str:
    return f"{part / whole:.1%}" if part is not None and whole else "-"


def profile_text(rows: list[dict[str, Any]], title: str, top: int = 3, timed_forward: Optional[float] = None) -> str:
    """The module profile as text: the model's totals, the top modules at each depth, then the whole tree;
    ``timed_forward``, the job's forward time without hooks, is said beside the profile's."""
    model = rows[0]
    flops, latency = model["forward_flops"], model["forward_latency_s"]
    lines = [f"Module profile: {title}",
             f"{model['type']}: {count(model['params'])} parameters, forward {human(flops, 'FLOPs')} "
             f"({human(model['macs'], 'MACs')}), backward {human(model['backward_flops'], 'FLOPs')}, forward latency "
             f"{seconds(latency) if latency is not None else 'not timed'}"
             + (f", {human(flops / latency, 'FLOP/s')}" if latency else ""),
             "FLOPs: matmul class, multiply-add = 2. Latency: "
             + (f"{hooks_line(latency, timed_forward)}." if latency else "not timed (meta, or measure.time=false)."),
             "",
             f"By depth: the top {top} modules by forward FLOPs at each depth, all of that depth, and the rest "
             "(work done directly in shallower modules)"]
    lines.append(table(["depth", "module", "type", "params", "fwd FLOPs", "FLOPs share", "fwd latency", "time share"],
                       [[str(r["depth"]), r["module"], r["type"], count(r["params"]), human(r["forward_flops"]),
                         _share(r["forward_flops"], flops), seconds(r["forward_latency_s"]),
                         _share(r["forward_latency_s"], latency)] for r in by_depth(rows, top)]))
    lines += ["", "Every module (inclusive: each with everything under it)"]
    lines.append(table(["module", "type", "params", "MACs", "fwd FLOPs", "bwd FLOPs", "fwd latency", "FLOP/s"],
                       [["  " * r["depth"] + r["module"], r["type"], count(r["params"]) + (" (tied)" if r.get(
                           "tied_to") else ""), human(r["macs"]), human(r["forward_flops"]), human(r["backward_flops"]),
                         seconds(r["forward_latency_s"]), human(r["forward_flops_per_s"])] for r in rows]))
    tied = [f"{r['module']}'s weight is {r['tied_to']} (counted there)" for r in rows if r.get("tied_to")]
    lines += [f"tied: {'; '.join(tied)}"] if tied else []  # beside the table: in its cell it made the column 38 wide
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def stats_text(result: Result) -> str:
    """A job folder's ``stats.txt``."""
    m = result.metrics
    lines = [f"status: {result.status}"]
    if result.error:
        lines.append(f"error: {result.error}")
    # the five lines of the transformer profiler script users migrate from, same labels (times are medians)
    lines += [
        f"Forward Flops: {_plain(m.get(M.FLOPS_FORWARD))}",
        f"Backward Flops: {_plain(m.get(M.FLOPS_BACKWARD))}",
        f"Model Size (Bytes): {_plain(m.get(M.WEIGHTS_BYTES))}",
        f"Average Forward Time (s): {_plain(m.get(M.TIME_FORWARD))}",
        f"Average Backward Time (s): {_plain(m.get(M.TIME_BACKWARD))}",
        *(["(n/a: a parallel layout is counted a GPU at a time, its step's FLOPs are flops/step_per_gpu below)"]
          if M.FLOPS_STEP_PER_GPU in m and M.FLOPS_FORWARD not in m else []),
        "",
    ]
    lines += metric_lines(m)
    at_peak = result.breakdown.get("memory_at_peak") or {}
    if at_peak:
        total = sum(at_peak.values())
        lines += ["", f"memory alive at the simulated step's peak ({size_bytes(total)}, on meta):"]
        lines += [f"  {category:<16} {size_bytes(n):>10}  {n / total:6.1%}" for category, n in at_peak.items()]
    modules = result.breakdown.get("modules") or []
    if modules:
        lines += ["", "FLOPs by module (inclusive; matmul-class, forward / backward):"]
        for row in modules:
            indent = "  " * row["depth"]
            lines.append(f"  {indent}{row['module']:<{40 - len(indent)}} {human(row['forward_flops']):>10} "
                         f"{human(row['backward_flops']):>10}")
    uncounted = result.breakdown.get("uncounted_ops") or {}
    if uncounted:
        lines += ["", "ops with arithmetic but no formula (not counted): " +
                  ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))]
    return "\n".join(lines) + "\n"
