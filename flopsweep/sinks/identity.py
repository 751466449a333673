"""Who a run is: its fingerprint (what identifies a measurement before it is made), its readable name, its config
flattened into MLflow params, and the tags that say where and with what code it ran; a sweep's run name and the
experiment's description."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional, Sequence

from flopsweep.core import __version__
from flopsweep.core.errors import masked
from flopsweep.core.hardware import cpu_model
from flopsweep.core.result import Result, model_label
from flopsweep.core.text import LAYOUT_KEYS, is_layout_key, layout_name

NOT_IDENTITY = ("tracking", "hydra", "skip_existing")  # where and how a run is logged, not what it measures


def fingerprint(config: dict[str, Any], device: Optional[str], device_name: Optional[str],
                source: Optional[str] = None) -> str:
    """Identifies a run before it is measured: the resolved config (less where it is logged), the code version,
    the device with its name (``cuda:0`` on an H100 is not ``cuda:0`` on an A100; None on meta), and the digest of
    the file that defines the model beyond its config, where one does (an edited ``config.json`` or custom model's
    module is a new configuration)."""
    identity = {"config": {k: v for k, v in config.items() if k not in NOT_IDENTITY}, "flopsweep": __version__,
                "git": git_commit(), "device": device,
                "device_name": device_name if device and device != "meta" else None}
    if source is not None:  # absent, not None, where there is none: the fingerprints of runs before it stay
        identity["source"] = source
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def fingerprint_of(result: Result) -> str:
    """The fingerprint a result records, or the one its config and device give (a result written without one)."""
    recorded = result.info.get("fingerprint")
    if recorded:
        return recorded
    return fingerprint(result.config, result.info.get("device"), result.device_name,
                       result.source_digest)


GROUP_NAMES = {"model": "name", "dtype": "name", "optimizer": "name", "train": "mode", "device": "type",
               "tracking": "kind"}  # a config group's option, by the field that names it
_SHORT = {"batch.size": "b", "batch.seq_len": "s", "batch.image_size": "i", "parallel.micro_batch_size": "mb"}
LABELLED = ("model.name", "model.config", "model.model_type", "model._target_")  # in the model's name already
TEMPLATES = ("hf", "custom")  # no preset: every field is the user's, and the name says what was built


def run_name(config: dict[str, Any], changed: Sequence[str] = ()) -> str:
    """Readable and deterministic: ``bert_base|b8|s128|bfloat16|cpu`` (then what differs from a plain training step:
    ``|generate``, ``|lora``, ``|sgd``, ``|compiled``, ``|dp16tp8pp8zero1``); ``changed``, the model's fields the
    command set beside its preset (dotted keys), after the model's name: ``gpt2_small(n_layer=2)|b8|...`` (not for
    ``model=hf`` or ``model=custom``, which are named by what they build)."""
    model, batch = config.get("model") or {}, config.get("batch") or {}
    flat = flatten(model, "model.") if model.get("name") not in TEMPLATES else {}
    fields = [f"{key.rsplit('.', 1)[-1]}={flat[key]}" for key in changed if key in flat and key not in LABELLED]
    label = model_label(model) + (f"({','.join(fields)})" if fields else "")
    parts = [label, f"{_SHORT['batch.size']}{batch.get('size', '?')}"]
    parts += [f"{_SHORT[f'batch.{key}']}{batch[key]}" for key in ("seq_len", "image_size") if batch.get(key)]
    parts += [str((config.get("dtype") or {}).get("name", "?")), str((config.get("device") or {}).get("type", "?"))]
    return "|".join(parts + _beyond_defaults(config))


def _beyond_defaults(config: dict[str, Any]) -> list[str]:
    """What tells a run apart from the plain training step of its model beyond batch, dtype and device: a workload
    other than train, a train mode other than full, an optimizer other than AdamW, a compiled step, a parallel
    layout (with its micro-batch, sequence parallelism and recomputation), a prediction with fused kernels."""
    parts = []
    if config.get("workload", "train") != "train":
        parts.append(str(config["workload"]))
    mode = (config.get("train") or {}).get("mode", "full")
    if mode != "full":
        parts.append(str(mode))
    optimizer = (config.get("optimizer") or {}).get("name", "adamw")
    if optimizer != "adamw" and config.get("workload", "train") == "train":
        parts.append(str(optimizer))
    if (config.get("measure") or {}).get("compile"):
        parts.append("compiled")
    layout = config.get("parallel") or {}
    if any(layout.get(key) for key in LAYOUT_KEYS):  # and what else makes two layouts' steps differ (they had one name)
        parts.append(layout_name(layout))
        parts += [f"mb{layout['micro_batch_size']}"] * ((layout.get("micro_batch_size") or 1) > 1)
        parts += ["seqpar"] * bool(layout.get("sequence_parallel"))
        parts += [f"recompute={layout['recompute']}"] * (layout.get("recompute") not in (None, "none"))
    if (config.get("predict") or {}).get("fused"):
        parts.append("fused")
    return parts


def short_name(config: dict[str, Any], keys: list[str]) -> str:
    """A run's name in a sweep: the values of the keys that tell the sweep's runs apart, in the sweep's order
    (``gpt3_13b|s2048`` where model and batch.seq_len vary; a layout's keys as one part, ``dp16tp2zero3``), so that
    what differs survives the runs table cutting names short; the full name is :func:`run_name`."""
    flat, parts, layout = flatten(config), [], layout_name(config.get("parallel") or {}) or "-"
    for key in keys:
        if is_layout_key(key):  # the layout whole, once, as the run's name spells it (zero3 alone said no dp)
            parts += [layout] * (layout not in parts)
        elif key == "model":
            parts.append(model_label(config.get("model") or {}))
        elif key == "train" and config.get("workload", "train") != "train":  # train=generate, the old spelling
            parts.append(str(config["workload"]))
        elif key in GROUP_NAMES:
            parts.append(str((config.get(key) or {}).get(GROUP_NAMES[key], "?")))
        elif key in _SHORT:
            parts.append(f"{_SHORT[key]}{flat.get(key, '?')}")
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}={flat.get(key, '?')}")
    return "|".join(parts) or run_name(config)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"name": "x"}}`` -> ``{"model.name": "x"}``, Hydra's own settings left out."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "hydra":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def common_tags() -> dict[str, str]:
    """The versions, host, CPU and commit every run is tagged with; MLflow's own source tags too (the UI's Source
    and Version columns)."""
    return {"flopsweep.version": __version__, "torch.version": _version_of("torch"),
            "python.version": platform.python_version(), "host": socket.gethostname(), "host.cpu": cpu_model(),
            "git.commit": git_commit(), "mlflow.source.git.commit": git_commit(), "mlflow.source.name": "flopsweep",
            "mlflow.source.type": "LOCAL"}


def _version_of(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sweep_name(sweep_dir: Path, overrides: list[str], experiment: str) -> str:
    """``gpt3_family 2026-12-03 17:45``: the sweep preset (else the experiment) and when it started, from its folder
    (``.../2026-12-03/17-45-00``, ``-2`` for a second one that second); the folder's name where it is not dated."""
    preset = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("sweep=")), experiment)
    day, clock = Path(sweep_dir).parent.name, Path(sweep_dir).name.split("-")
    if len(day) == 10 and day[4] == "-" and len(clock) >= 3 and all(part.isdigit() for part in clock):
        return f"{preset} {day} {clock[0]}:{clock[1]}" + (f" ({clock[3]})" if len(clock) > 3 else "")
    return f"{preset} {Path(sweep_dir).name}"


def experiment_description() -> str:
    """The experiment's description in the UI: what its runs are, and the command that made it."""
    import sys

    command = masked(" ".join(["flopsweep", *sys.argv[1:]]))[:500]
    return ("flopsweep measurements: one run per job (FLOPs, parameters, memory, timings: metrics flops/*, size/*, "
            "time/*, speed/*), one parent run per sweep with its job counts and summary.csv. Made by: " + command)
