"""The device a job runs on, resolved once (``device.type=auto`` decided, the GPU's index checked, its name read):
what every layer below the config asks instead of comparing strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

KINDS = ("cpu", "cuda", "meta")


@dataclass(frozen=True)
class Device:
    """A resolved device: its kind, its index (CUDA only) and its name (the GPU's, or the CPU's model; None on meta,
    which has no hardware). ``str()`` is PyTorch's spelling (``cuda:0``), as results record it."""

    kind: str
    index: Optional[int] = None
    name: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a device's kind is one of {', '.join(KINDS)}, not {self.kind!r}")
        if (self.index is not None) != (self.kind == "cuda"):
            raise ValueError(f"only a cuda device has an index: {self.kind} with index {self.index}")

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def is_meta(self) -> bool:
        """No memory and no clock: counted and sized, never run or timed."""
        return self.kind == "meta"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"


META = Device("meta")
