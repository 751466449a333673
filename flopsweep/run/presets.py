"""Model presets measured for a projection: one counted on ``meta`` as a job would be, and the size of every
decoder-only preset (built on meta, not counted: its parameters and shapes are all a closed form needs)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from flopsweep.build.model import build
from flopsweep.config.compose import LISTED_BY, compose_config, public_options
from flopsweep.config.resolve import CannotGenerate, job_config, resolve
from flopsweep.config.schema import CONF_DIR
from flopsweep.core.errors import ConfigError, MissingExtra, not_one_of, one_line, require
from flopsweep.core.files import user_cache, write_whole
from flopsweep.core.result import Result
from flopsweep.core.shape import ModelShape
from flopsweep.measure.size import active_parameters
from flopsweep.run.job import run_job


def check_preset(model: str) -> None:
    """``model`` names a preset, or the one line that says so, with the nearest one (Hydra's list starts with the
    families' templates and is cut at 200 characters)."""
    presets = [name for name, _ in public_options()["model"]]
    if model not in presets:
        raise ConfigError("model", model, f"is not a preset ({not_one_of(model, presets, LISTED_BY)})")


def measure_preset(model: str, seq_len: Optional[int], batch: int = 1, inference: bool = False,
                   extra: Sequence[str] = ()) -> Result:
    """The preset ``model`` counted and sized on meta at ``batch`` and ``seq_len`` (None: the preset's), one
    training step (or, with ``inference``, one forward pass; ``extra`` overrides: a generation)."""
    from hydra.errors import HydraException

    overrides = [f"model={model}", "device=meta", f"batch.size={batch}", "tracking=none", *extra]
    if inference:
        overrides.append("workload=inference")
    if seq_len:
        overrides.append(f"batch.seq_len={seq_len}")
    check_preset(model)
    try:
        cfg = compose_config(*overrides)
    except HydraException as err:
        raise ConfigError("model", model, one_line(err, 200, kind=False)) from None
    try:
        spec = resolve(cfg)
    except CannotGenerate as err:  # said of the model asked for, not of a key the user never typed (workload=generate)
        raise ConfigError("model", model, err.problem) from None
    result = run_job(spec, job_config(cfg, spec))  # the config as built, as the flopsweep command records it
    require(result.status == "ok", "model", model, f"could not be counted: {result.error}")
    return result


@dataclass(frozen=True)
class PresetSize:
    """A language-model preset at its default sequence length: its name, the parameters a token uses (a mixture of
    experts: its top-k experts; each parameter once), its config as resolved and its family's shape of it."""

    name: str
    params: int
    seq_len: int
    model: dict[str, Any]
    shape: ModelShape


def language_model_presets(each: Callable[[int, int, int], None] = lambda done, total, found: None
                           ) -> tuple[list[PresetSize], list[str]]:
    """Every decoder-only preset in ``conf/model``, ours and the Hugging Face causal LMs, built on meta (nothing is
    counted), and the Hugging Face presets left out where transformers is not installed; ``each(done, total,
    found)`` before each preset file is read (``found`` language models so far), for whoever says how far it is.
    Kept in the cache (:func:`cache_path`) for the code, configs and libraries that read them: 15 s to build, once."""
    path = cache_path()
    try:
        kept = json.loads(path.read_text())  # a whole read only: none left unbuilt
        return [PresetSize(**{**s, "shape": ModelShape.from_dict(s["shape"])}) for s in kept["sizes"]], []
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: read them again
        pass
    sizes, unbuilt = _read_presets(each)
    if unbuilt:  # a partial read (transformers missing or broken here) is not kept: the next may read them all
        return sizes, unbuilt
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # whole, or not at all: two budgets at once write apart first
        write_whole(path, json.dumps({"sizes": [dataclasses.asdict(s) for s in sizes]}))
    except OSError:  # a cache that cannot be written costs the next budget its 15 s, nothing else
        pass
    return sizes, unbuilt


def cache_path() -> Path:
    """``$FLOPSWEEP_CACHE_DIR`` (else ``$XDG_CACHE_HOME/flopsweep``, ``~/.cache/...``)``/presets-<digest>.json``: the
    digest of this package's code, its configs and the versions of torch and transformers (none where absent)."""
    import hashlib
    from importlib import metadata

    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for file in sorted([*package.rglob("*.py"), *CONF_DIR.rglob("*.yaml")]):
        digest.update(file.read_bytes())
    for library in ("torch", "transformers"):
        try:
            digest.update(metadata.version(library).encode())
        except metadata.PackageNotFoundError:
            digest.update(b"none")
    explicit = os.environ.get("FLOPSWEEP_CACHE_DIR")
    return (Path(explicit) if explicit else user_cache()) / f"presets-{digest.hexdigest()[:16]}.json"


def _read_presets(each: Callable[[int, int, int], None]) -> tuple[list[PresetSize], list[str]]:
    sizes: list[PresetSize] = []
    unbuilt: list[str] = []
    files = sorted((CONF_DIR / "model").glob("*.yaml"))
    for done, file in enumerate(files):
        each(done, len(files), len(sizes))
        cfg = compose_config(f"model={file.stem}", "device=meta", "tracking=none")
        if cfg.model.get("family") not in ("decoder", "hf"):
            continue
        try:
            spec = resolve(cfg)
        except MissingExtra:  # a Hugging Face preset that cannot be built here: said, not dropped
            unbuilt.append(file.stem)
            continue
        except ConfigError:  # a template (model=hf), not a preset: it names no model until given one
            continue
        if spec.family.generator is None or spec.family.generator(spec.model) is None:  # not a causal LM
            continue
        params = active_parameters(build(spec).model)
        sizes.append(PresetSize(file.stem, params, spec.batch.seq_len, dataclasses.asdict(spec.model),
                                spec.family.shape(spec.model)))
    return sizes, unbuilt
