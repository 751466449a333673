"""The one record a job produces, as written to ``result.json``: its :class:`Status`, the config it ran, its metrics
and breakdown, and ``info``, whose parts that several layers read are types here (:class:`Tracking`,
:class:`TimingInfo`, :class:`JobTimes`), kept in the JSON as the dicts they always were."""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from flopsweep.core.files import write_whole


class Status(str, Enum):
    """A job's outcome; compares equal to its name as a string (``result.status == "ok"``), as the JSON holds it."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    OOM = "oom"
    LOST = "lost"        # a sweep job that died before writing result.json
    INTERRUPTED = "interrupted"  # stopped by a signal (Ctrl-C, Slurm's warning), with what it measured before

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def failed(self) -> bool:
        """Whether it fails a sweep (its exit status, its parent run)."""
        return self in (Status.FAILED, Status.OOM, Status.LOST, Status.INTERRUPTED)


STATUSES = tuple(s.value for s in Status)


def _of(cls: type, data: Any) -> Any:
    """A record of ``cls`` from its dict in ``info`` (keys it does not know left out: a newer writer's), or None
    where there is none or it lacks a field the record needs (a file edited by hand)."""
    if not isinstance(data, dict) or any(f.name not in data for f in fields(cls)
                                         if f.default is MISSING and f.default_factory is MISSING):
        return None
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def _dict(record: Any) -> dict[str, Any]:
    """A record as its dict in ``info``: its fields without a default, and those that differ from theirs."""
    return {f.name: getattr(record, f.name) for f in fields(record)
            if f.default is MISSING or getattr(record, f.name) != f.default}


RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run's id (its artifacts lie in <run id>/artifacts)


@dataclass(frozen=True)
class Tracking:
    """Where a job's run was logged (``uri``, always without its password; ``experiment``, ``run_id``), or why not
    (``error``; ``known``: the sweep had found the store unusable and said so once); a skipped job's: ``existing``,
    the store's finished run of it, or ``elsewhere``, the resume that holds its claim."""

    logged: bool
    uri: Optional[str] = None
    experiment: Optional[str] = None
    run_id: Optional[str] = None
    error: Optional[str] = None
    known: bool = False
    existing: bool = False
    elsewhere: Optional[str] = None
    synced: bool = False    # logged by flopsweep-sync, after the job


def loaded(other_cores: float, cores: int, threads: Optional[int] = None) -> bool:
    """Whether other processes kept more than half of ``cores`` busy while something was measured (a timing's,
    :class:`TimingInfo`; a calibration's, ``flopsweep-calibrate``), or a core or more where its ``threads`` needed
    every core left (PyTorch's threads wait for the slowest: a step of 2 threads beside one busy core of 2 ran 50x
    slow). Its own threads are not other work."""
    return other_cores > cores / 2 or (threads is not None and other_cores >= 0.9 and other_cores + threads > cores)


@dataclass(frozen=True)
class TimingInfo:
    """How a job's step was timed: ``method`` (``full``, ``per_block``, ``loop``), repeats after ``warmup``, CPU
    threads, the device's name, and the extremes of the steps' times."""

    method: Optional[str] = None
    repeats: Optional[int] = None
    threads: Optional[int] = None
    device_name: Optional[str] = None
    warmup: Optional[int] = None
    step_min_s: Optional[float] = None
    step_max_s: Optional[float] = None
    blocks: Optional[dict[str, Any]] = None
    load_average: Optional[float] = None  # the machine's over the minute before the timing, and its cores
    cores: Optional[int] = None
    other_cores: Optional[float] = None   # the cores other processes kept busy while it timed (what it warns of)


@dataclass(frozen=True)
class PredictedBy:
    """The profile a job's step was predicted with: its part and digest (the ``flopsweep.calibration`` tag)."""

    part: Optional[str] = None
    digest: Optional[str] = None


@dataclass(frozen=True)
class JobTimes:
    """When a sweep's job started and ended (seconds since the epoch): its run's real duration."""

    start: float
    end: float


class _InfoRecord:
    """A part of ``Result.info`` read as a record of ``cls`` (:func:`_of`: None where there is none) and, unless not
    ``settable``, set from one (:func:`_dict`)."""

    def __init__(self, cls: type, key: str, settable: bool = True):
        self.cls, self.key, self.settable = cls, key, settable

    def __get__(self, result: Optional["Result"], owner: type) -> Any:
        return self if result is None else _of(self.cls, result.info.get(self.key))

    def __set__(self, result: "Result", record: Any) -> None:
        if not self.settable:
            raise AttributeError(f"info.{self.key} is written where it is made, not as a record")
        result.info[self.key] = _dict(record)


@dataclass
class Result:
    """A job's status, error, config, metrics, breakdown and info, as ``result.json`` holds them."""

    status: Status
    error: Optional[str]
    config: dict[str, Any]
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    breakdown: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # conventions, device name, versions, timing method

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"not a flopsweep result (status {self.status!r} is none of {', '.join(STATUSES)})")
        self.status = Status(self.status)

    # the parts of ``info`` that several layers read, as records; set from records, kept as the dicts they were
    tracking = _InfoRecord(Tracking, "tracking")    # where its run was logged or why not; None before it was tried
    timing = _InfoRecord(TimingInfo, "timing")      # how its step was timed; None for a job that timed nothing
    job_times = _InfoRecord(JobTimes, "job")        # a sweep job's start and end
    predicted_by = _InfoRecord(PredictedBy, "prediction", settable=False)

    @property
    def bottleneck(self) -> Optional[str]:
        """A parallel layout's bottleneck, in words; None for a job that is not one."""
        return (self.info.get("parallel") or {}).get("bottleneck")

    @property
    def layout(self) -> dict[str, Any]:
        """A parallel job's layout (``dp``, ``tp``, ...); empty for a job that is not one."""
        return (self.info.get("parallel") or {}).get("layout") or {}

    @property
    def source_digest(self) -> Optional[str]:
        """The digest of the file that defines its model (a Hugging Face config, a custom model's module)."""
        return (self.info.get("model_source") or {}).get("sha256")

    @property
    def device_name(self) -> Optional[str]:
        """The GPU's or CPU's name its step was timed on; None where it was not timed."""
        timing = self.timing
        return timing.device_name if timing is not None else None

    @property
    def system_metrics(self) -> list[tuple[int, dict[str, float]]]:
        """What the machine did while its step was timed: ``(unix time in ms, {MLflow system metric: value})``
        samples; none for a job that timed nothing."""
        return [(int(t), dict(values)) for t, values in self.info.get("system_metrics") or []]

    @property
    def model_name(self) -> str:
        """What its model is, by name (:func:`model_label`)."""
        return model_label(self.config.get("model") or {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def write(self, path: Path) -> None:
        write_whole(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> "Result":
        """Raises OSError where there is no file and ValueError where it is not a result (cut off, edited)."""
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ValueError(f"{path}: not a flopsweep result (no status)")
        try:
            return cls(data["status"], data.get("error"), data.get("config") or {}, data.get("metrics") or {},
                       data.get("breakdown") or {}, data.get("info") or {})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def read_measured(cls, path: Path) -> "Result":
        """:meth:`read`, and a ValueError for a result that holds no measurement to log (status ok without metrics):
        logged, it would be an empty finished run."""
        result = cls.read(path)
        if result.status == "ok" and not result.metrics:
            raise ValueError(f"{path}: holds no measurement (status ok, no metrics)")
        return result

    @classmethod
    def read_or_none(cls, path: Path) -> Optional["Result"]:
        """The result at ``path``, or None where there is none or it is not one (a job killed mid-write)."""
        try:
            return cls.read(path)
        except (OSError, ValueError):
            return None


def model_label(model: dict[str, Any]) -> str:
    """A model's name as people tell it: a preset's or family's name; a Hugging Face config by its file (the folder
    of a ``config.json``) or its ``model_type`` (``hf:Llama-3.1-8B``, ``hf:llama``); your own model by its class
    (``custom:Net``)."""
    name = str(model.get("name", "?"))
    if name == "hf":
        source = model.get("config")
        if source:
            path = Path(str(source))
            if path.name == "config.json":
                return f"hf:{path.parent.name}"
            return f"hf:{path.stem if path.suffix == '.json' else path.name}"  # a folder: Llama-3.2-1B whole
        return f"hf:{model['model_type']}" if model.get("model_type") else name
    if name == "custom" and model.get("_target_"):
        return f"custom:{str(model['_target_']).rsplit('.', 1)[-1]}"
    return name


def any_failed(results: list[tuple[str, Result]]) -> bool:
    return any(r.status.failed for _, r in results)


def status_counts(results: list[tuple[str, Result]]) -> dict[str, int]:
    """How many results have each status, every status listed."""
    return {status: sum(r.status == status for _, r in results) for status in STATUSES}
