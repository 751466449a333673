"""Bad input and failures in one line: the exception for a bad value (its message names the key), the checks that
raise it, and :func:`one_line`, the one way any error is shortened for a person."""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional


class ConfigError(ValueError):
    """A configuration value is invalid. ``str(err)`` is one line such as ``batch.size=-1: must be >= 1``."""

    def __init__(self, key: str, value: object, problem: str):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{key}={value!r}: {problem}" if value is not None else f"{key}: {problem}")


class MissingExtra(ConfigError):
    """A family that needs a library flopsweep installs as an optional extra (``hf``: transformers) where it is not
    installed: ``model.family=...: needs transformers: <the pip command>``."""

    def __init__(self, family: str, library: str, extra: str):
        super().__init__("model.family", family, f"needs {library}: {install_extra(extra)}")


def require(condition: bool, key: str, value: object, problem: str) -> None:
    if not condition:
        raise ConfigError(key, value, problem)


def _typed(path: "os.PathLike[str] | str") -> str:
    """``path`` as a user types it here: relative under the working folder (``.venv/bin/...``), whole elsewhere."""
    import os
    from pathlib import Path

    whole = Path(os.path.abspath(path))
    return os.path.relpath(whole) if whole.is_relative_to(Path.cwd()) else str(whole)


def pip(command: str) -> str:
    """A pip command for the environment flopsweep runs in (its interpreter's pip, not whichever ``pip`` is first on
    the PATH, as typed here: ``.venv/bin/python -m pip ...`` in the checkout): ``pip("uninstall torchvision")``."""
    import sys

    return f"{_typed(sys.executable)} -m pip {command}"


def install_extra(extra: str) -> str:
    """The pip command that adds flopsweep's optional ``extra`` (``hf``, ``diffusion``) to the environment it runs
    in: torch kept at the version installed (an unpinned one is resolved again: several GB of CUDA wheels), and
    flopsweep from where it is installed (the checkout, editable, as ``make`` installs it; else the package)."""
    import os
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        torch = f"'torch=={version('torch').split('+')[0]}' "
    except PackageNotFoundError:
        torch = ""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        where = "." if checkout == Path.cwd().resolve() else str(checkout)
        return pip(f"install {torch}-e '{where}[{extra}]'")
    return pip(f"install {torch}'flopsweep[{extra}]'")


def nearest(value: str, choices: Iterable[str], cutoff: float = 0.6) -> Optional[str]:
    """The choice nearest a mistyped ``value`` (``gpt2_smal``: ``gpt2_small``), for a "did you mean"; None where
    none is near enough."""
    import difflib

    near = difflib.get_close_matches(value, list(choices), n=1, cutoff=cutoff)
    return near[0] if near else None


LISTED = 30  # choices an error lists whole; more are named where they are listed (65 presets took 700 characters)


def not_one_of(value: str, choices: Iterable[str], listed_in: str, cutoff: float = 0.6, key: str = "",
               spellings: Optional[Mapping[str, str]] = None) -> str:
    """How an error goes on where ``value`` is none of ``choices``: the nearest as a "did you mean" (``key=`` before
    it where given, to paste; the list would bury it; ``spellings``, what people call a choice where the nearest
    spelling is another, gpu: cuda), else the choices where they are few, else how many and where they are listed
    (``listed_in``)."""
    choices = list(choices)
    cased = {choice.lower(): choice for choice in choices}
    said = value.lower()
    near = cased.get((spellings or {}).get(said, said)) or cased.get(nearest(said, list(cased), cutoff) or "")
    if near:
        return f"did you mean {key}{'=' if key else ''}{near}?"
    return f"one of {', '.join(choices)}" if len(choices) <= LISTED else f"{len(choices)} of them: {listed_in}"


def command(name: str) -> str:
    """A command of flopsweep's environment as a user can type it here: ``.venv/bin/flopsweep-sync`` where the
    environment is under the working folder, its full path elsewhere, the bare name where it is not a script there."""
    import sys
    from pathlib import Path

    path = Path(sys.executable).parent / name
    return _typed(path) if path.exists() else name


def is_number(value: object) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_int(value: object, key: str, minimum: int = 1) -> None:
    """An integer (not a bool) of at least ``minimum``."""
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, key, value,
            f"must be an integer >= {minimum}")


# a password in an address, as written (scheme://user:secret@) or as Hydra escapes it (scheme\://user\:secret@): up
# to the authority's last @ (a password may hold an @ or a : of its own, as written or as %40)
_SECRET = re.compile(r"([a-z][a-z0-9+.-]*\\?://[^\s/@:\\]*\\?:)[^\s/]*@", re.IGNORECASE)


def masked(text: str) -> str:
    """``text`` with the password of every address in it masked (``postgresql://me:***@db/mlflow``): what flopsweep
    prints, logs or tags never carries one (a store's address, in MLflow's own errors too)."""
    return _SECRET.sub(r"\1***@", text)


_SQL_TAIL = re.compile(r"\s*\[SQL: .*", flags=re.S)  # "[SQL: CREATE TABLE ...] [parameters: ...] (Background ...)"


def one_line(err: BaseException, limit: int = 300, kind: bool = True) -> str:
    """``err`` as one line of at most ``limit`` characters of its message, its white space folded, after its type
    (``ValueError: ...``) unless ``kind`` is false; the type alone where it has no message; passwords masked; the
    statement and the link a database error (SQLAlchemy's) appends left out."""
    text = masked(" ".join(_SQL_TAIL.sub("", str(err)).split()))[:limit]
    if not kind:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
