"""Model families, one module each, every one registered in :data:`FAMILIES` (``family(name)`` looks one up)."""

from __future__ import annotations

from flopsweep.models import (  # noqa: F401 - they register
    bert, custom, decoder, dit, generic, hf, resnet_bk, seq2seq, vit)
from flopsweep.models.base import FAMILIES, Family


def family(name: str) -> Family:
    """The family ``model.family`` names; a :class:`~flopsweep.core.errors.ConfigError` for one it does not."""
    return FAMILIES[name]
