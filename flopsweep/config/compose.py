"""Hydra's side of the config: the schema, the model families' typed bases and the sweep presets registered with
its ConfigStore, and a job's config composed as the ``flopsweep`` command would."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from flopsweep.core.result import model_label
from flopsweep.config.schema import CONF_DIR, SWEEPS_DIR, Schema
from flopsweep.models import FAMILIES


def new_folder(path: str) -> str:
    """``path``, or ``path-2``, ``path-3``, ...: the first that does not exist yet, made here. ``mkdir`` either makes
    a folder or finds it made, atomically: two sweeps (or runs) started in the same second, by two processes, never
    share a folder. It is the ``flopsweep.new_folder`` resolver of ``hydra.sweep.dir`` and ``hydra.run.dir``, cached
    as Hydra caches ``now``: every job of a sweep, and its workers, get the one folder the sweep made."""
    candidate, n = Path(path), 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return str(candidate)
        except FileExistsError:
            n += 1
            candidate = Path(f"{path}-{n}")


def model_folder(model: DictConfig) -> str:
    """A job folder's model part: the model as its run is named (``hf:Llama-3.2-1B``, ``custom:Net``), ``:`` as ``-``
    (a folder named ``..._hf`` for every HF config could not be found by its model). The ``flopsweep.model_folder``
    resolver of ``hydra.run.dir`` and ``hydra.sweep.subdir``; a field not given yet (``???``) is left out."""
    fields = OmegaConf.to_container(model, resolve=False) if isinstance(model, DictConfig) else {"name": str(model)}
    given = {k: v for k, v in fields.items() if k in ("name", "config", "_target_", "model_type") and v and v != "???"}
    if "name" not in given and fields.get("family") not in (None, "???"):  # a user's model file names its family
        given["name"] = fields["family"]  # alone (custom): named as its run is, custom-Net, not "?"
    return model_label(given).replace(":", "-").replace("/", "-")


OLD_SPELLING = "old spelling of"  # how the file of an option kept for old commands begins


def known_keys(parent: str, family: Optional[str] = None) -> list[str]:
    """The keys a node of the config takes, by its dotted path (``""``: the top, ``batch``, ``model``: the fields of
    ``family``, any family's where None), for the nearest one to a key mistyped on the command line; none for a node
    not known here."""
    import dataclasses
    import typing

    if parent == "model":  # as a preset spells them: a custom model's class is its _target_ (the field target)
        fields = {f.name for name, known in FAMILIES.items() if family in (None, name)
                  for f in dataclasses.fields(known.Config)}
        return sorted(fields - {"target"} | {"_target_"})
    node: object = Schema
    for part in filter(None, parent.split(".")):
        types = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        node = types.get(part)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def chosen_family(overrides: list[str]) -> Optional[str]:
    """The family of the model preset a command line chooses (its last ``model=NAME``, else the default preset), as
    its file in ``conf/model`` says; None where that is not known (a sweep over models, a preset of the user's)."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == "model"]
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml")).get("defaults", [])
    default = [d["model"] for d in defaults if isinstance(d, dict) and "model" in d]
    name = chosen[-1] if chosen else default[0] if default else None
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not name or not path.is_file():
        return None
    family = OmegaConf.load(path).get("family")
    return family if family in FAMILIES else None


LISTED_BY = "flopsweep --help lists them"  # where an error too long to list a group's options sends the user


def public_options() -> dict[str, list[tuple[str, str]]]:
    """Each config group's options a user picks (``group=option``), with the first line of what its file says of it:
    the shipped ``conf/`` groups and the sweep presets (``+sweep=NAME``); the families' typed templates (``_bert``,
    ``_decoder``, ...) are the presets' bases, and an old spelling's file (``train=generate``) is read, not offered."""
    def described(path: Path) -> str:  # its first sentence: the comment lines up to one that ends with a period
        said = []
        for line in path.read_text().splitlines()[:8]:
            text = line.lstrip("# ").strip()
            if not line.startswith("#") or line.startswith("#  ") or not text:  # code, an example, a blank
                break
            if not text.startswith("@package"):
                said.append(text)
                if text.endswith("."):
                    break
        return " ".join(said)

    groups = {folder.name: folder for folder in sorted(CONF_DIR.iterdir())
              if folder.is_dir() and folder.name != "hydra"}
    options = {name: [(p.stem, described(p)) for p in sorted(folder.glob("*.yaml"))
                      if not p.stem.startswith("_") and not described(p).startswith(OLD_SPELLING)]
               for name, folder in groups.items()}
    options["sweep"] = [(p.stem, described(p)) for p in sorted(SWEEPS_DIR.glob("*.yaml"))]
    return options


@functools.cache
def register_configs() -> None:
    """Register the schema and the sweep presets (``+sweep=NAME``) with Hydra's ConfigStore, and the resolvers the
    configs use: once a process (ConfigStore is one per process; a second registration only repeated the work,
    a third of each composition's time)."""
    from hydra.core.config_store import ConfigStore

    OmegaConf.register_new_resolver("flopsweep.new_folder", new_folder, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("flopsweep.model_folder", model_folder, replace=True)

    store = ConfigStore.instance()
    store.store(name="schema", node=Schema)
    # each family's dataclass is the typed base of its presets (``defaults: [_decoder, _self_]``), so every
    # field can be overridden from the command line and is type-checked when composed
    for name, family in FAMILIES.items():
        if name not in ("custom", "hf"):  # their keys are the user's model's arguments, or a Hugging Face config's
            store.store(group="model", name=f"_{name}", node=family.Config)
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose_config(*overrides: str) -> DictConfig:
    """The job config the ``flopsweep`` command would compose for these overrides (for tools and tests)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))
