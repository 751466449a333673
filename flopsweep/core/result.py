"""The one record a job produces, as written to ``result.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from flopsweep.core.files import write_whole

STATUSES = ("ok", "failed", "skipped", "oom", "lost")  # lost: a sweep job that died before writing result.json
FAILURES = ("failed", "oom", "lost")  # statuses that fail a sweep (its exit status, its parent run)


@dataclass
class Result:
    status: str
    error: Optional[str]
    config: dict[str, Any]
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    breakdown: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # conventions, device name, versions, timing method

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
        return cls(data["status"], data.get("error"), data.get("config") or {}, data.get("metrics") or {},
                   data.get("breakdown") or {}, data.get("info") or {})

    @classmethod
    def read_measured(cls, path: Path) -> "Result":
        """:meth:`read`, and a ValueError for a result that holds no measurement to log (status ok without metrics,
        a status none of :data:`STATUSES`): logged, it would be an empty finished run."""
        result = cls.read(path)
        if result.status not in STATUSES:
            raise ValueError(f"{path}: not a flopsweep result (status {result.status!r} is none of "
                             f"{', '.join(STATUSES)})")
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


def any_failed(results: list[tuple[str, Result]]) -> bool:
    return any(r.status in FAILURES for _, r in results)


def status_counts(results: list[tuple[str, Result]]) -> dict[str, int]:
    """How many results have each status, every status listed."""
    return {status: sum(r.status == status for _, r in results) for status in STATUSES}
