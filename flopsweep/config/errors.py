"""A command line that does not compose, said in one line: Hydra's and OmegaConf's errors (a mistyped option or key
with the one meant, a value of the wrong type, a sweep without ``-m``), and a ``--flag`` that is none of Hydra's
(flopsweep takes overrides). The config's keys and options are read only when an error needs them (they import the
families, and so torch)."""

from __future__ import annotations

import re
from typing import Optional, Sequence

from omegaconf.errors import OmegaConfBaseException

from flopsweep.core.errors import nearest, not_one_of
from flopsweep.core.hardware import DTYPE_SPELLINGS


def _group_key(group: str) -> str:
    """How an option of ``group`` is given: ``model=NAME``; a preset sweep is added to the defaults, ``+sweep=NAME``
    (``sweep=NAME`` fails)."""
    return "+sweep" if group == "sweep" else group


def _dotted(name: str) -> Optional[str]:
    """The key a top-level ``name`` that is none stands for: a group's key with ``_`` for its dot (``batch_size``:
    ``batch.size``) or a group's key alone (``seq_len``: ``batch.seq_len``; not a model's field); None if neither."""
    from flopsweep.config.compose import known_keys

    group, _, field = name.partition("_")
    if field in known_keys(group):
        return f"{group}.{field}"
    return next((f"{group}.{name}" for group in known_keys("") if group != "model" and name in known_keys(group)),
                None)


_HYDRA_FLAGS = {"--hydra-help", "--version", "--cfg", "--resolve", "--package", "--run", "--multirun",
                "--shell-completion", "--config-path", "--config-name", "--config-dir", "--experimental-rerun",
                "--info"}


def not_a_flag(args: list[str]) -> Optional[str]:
    """The line for a ``--name`` that is none of Hydra's flags (``--model gpt2_small``, ``--batch 4``): flopsweep
    takes overrides, key=value, and the one meant where it is plain; None where every flag is Hydra's."""
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if not arg.startswith("--") or name in _HYDRA_FLAGS:
            continue
        from flopsweep.config.compose import known_keys, public_options  # (the families, torch: only for a flag)

        key = name[2:].replace("-", "_")
        value = value or (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else "")
        options = dict(public_options().get(key, []))
        dotted = _dotted(key) or (f"{key}.size" if "size" in known_keys(key) else None)  # --batch: batch.size
        meant = f"did you mean {_group_key(key)}={value}?" if value in options else \
            f"did you mean {dotted}={value}?" if dotted and value else "model=gpt2_small, batch.size=8"
        return f"{name}: not a flag of flopsweep, which takes overrides, key=value ({meant})"
    return None


def hydra_error_line(err: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line of a Hydra or OmegaConf error: its lines joined, OmegaConf's key and type lines left out (the key is
    in the message), the options of a group that has no such option listed after it (less the internal ``_``
    ones; not the search path), and the OmegaConf error that caused it. ``overrides``: the command line's (an
    unknown model field is said against the fields of the family it chooses)."""
    from flopsweep.config.compose import LISTED_BY, chosen_family, known_keys, public_options

    def lines_of(text: str) -> tuple[list[str], list[str]]:
        kept, options, listing = [], [], False
        for line in (raw.strip() for raw in text.splitlines()):
            if line.startswith("Config search path"):
                break
            if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
                continue
            if line.startswith("Available options in"):
                listing = True
            elif listing:
                options += [line] if not line.startswith("_") else []
            else:
                kept.append(line)
        return kept, options

    kept, options = lines_of(str(err))
    message = " ".join(kept).replace("In 'config': ", "")
    cause = " ".join(lines_of(str(err.__cause__))[0]) if isinstance(err.__cause__, OmegaConfBaseException) else ""
    enum = re.match(r"Error merging override ([\w.]+)=(\S*)$", message)
    choices = re.match(r"Invalid value '[^']*', expected one of \[([^\]]*)\]", cause)
    if enum and choices:  # a closed set's key (workload=infer): as the schema's other refusals read
        key, value, names = enum.group(1), enum.group(2), [n.strip() for n in choices.group(1).split(",")]
        near = nearest(value, names)
        return f"{key}={value!r}: must be one of {', '.join(names)}" + (f" (did you mean {near}?)" if near else "")
    typed = re.match(r"Value '.*' (?:of type '\w+' could not be converted to (Integer|Float)|is not a valid (bool))",
                     cause)
    if enum and typed:  # batch.seq_len=abc: as the schema's other refusals read, not OmegaConf's merge message
        kind = {"Integer": "an integer", "Float": "a number", "bool": "true or false"}[typed.group(1) or typed.group(2)]
        return f"{enum.group(1)}={enum.group(2)!r}: must be {kind}"
    ambiguous = re.match(r"Ambiguous value for argument '([^']+)'", message)
    if ambiguous:  # model=a,b without -m: Hydra's three numbered choices; a sweep is what is meant
        return (f"{ambiguous.group(1)}: values with commas run one job each only in a sweep: flopsweep -m "
                f"{ambiguous.group(1)} ... (or key=[a,b] for a list, key='a,b' for a string)")
    unknown = re.match(r"Could not override '([^']+)'\. To append to your config use \+", message)
    if unknown:  # Hydra's advice is to append the key with +: a typo is meant far more often
        key = unknown.group(1)
        parent, _, name = key.rpartition(".")
        family = chosen_family(list(overrides)) if parent == "model" else None
        keys = [k for k in known_keys(parent, family) if k != name]  # not itself: refused here
        near = nearest(name, keys, cutoff=0.7)
        meant = f"{parent}.{near}" if parent and near else near or (_dotted(name) if not parent else None)
        said = [f"did you mean {meant}?"] if meant else [f"{parent or 'the config'}'s keys: {', '.join(keys)}"] \
            if parent != "model" and keys else []
        if key.startswith("model.") and family in (None, "hf", "custom"):  # a Hugging Face config's or a custom
            said.append(f"+{key}=... adds one")  # model's fields are read where added (+model.hidden_act=...)
        return f"{key}: no such key" + (f" ({' '.join(said)})" if said else "")
    wanted = re.match(r"Could not find '([^'/]+)/([^']+)'", message)
    if wanted and options:  # a group's option that is none (model=gpt2_smal): the nearest, not 65 presets
        group, value = wanted.groups()
        key = _group_key(group)
        said = {"gpu": "cuda", **DTYPE_SPELLINGS}  # device=gpu meant cuda, not the nearest spelling (cpu)
        return f"{key}={value}: no such option ({not_one_of(value, options, LISTED_BY, key=key, spellings=said)})"
    override = getattr(err, "override", None)  # a line Hydra's grammar cannot parse
    if override and "missing EQUAL" in message:  # a bare word: what it names, as an override
        named = [f"{_group_key(group)}={override}" for group, options in public_options().items()
                 if override in dict(options)]
        return f"{override}: an override is key=value" + (f" (did you mean {named[0]}?)" if named else
                                                            " (model=gpt2_small, batch.size=8)")
    if override:
        message = f"{override}: {message}"
    if options:
        message += f" (options: {', '.join(options)})"
    return message + (f": {cause}" if cause and cause not in message else "")
