"""Model families, one module each; ``family(name)`` imports one on demand."""

from __future__ import annotations

import importlib
from types import ModuleType

from flopsweep.errors import ConfigError

FAMILIES = ("decoder", "bert", "vit", "seq2seq", "resnet_bk", "generic", "custom")


def family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ConfigError("model.family", name, f"unknown family (known: {', '.join(FAMILIES)})")
    return importlib.import_module(f"flopsweep.models.{name}")
