"""Where runs go: the ``tracking`` config node, the target it names (a store's URI, its artifact folder, the
experiment), and the checks that refuse a target that can never work. Nothing here opens a store."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

from flopsweep.core.errors import masked, require
from flopsweep.sinks.health import driver_missing


@dataclass
class TrackingConf:
    """The ``tracking`` config group: where a job's run is logged."""

    kind: str = "local"                  # local (SQLite store under dir/) | server (uri) | none
    uri: Optional[str] = None            # server only; else MLFLOW_TRACKING_URI
    experiment: str = "flopsweep"
    dir: str = "outputs"                 # local only: the store and artifacts, relative to the working directory


@dataclass(frozen=True)
class Target:
    """Where runs go: a tracking URI, the artifact root for new experiments, and the experiment name."""

    uri: str
    artifact_root: Optional[str]
    experiment: str

    def ui_command(self, experiment_id: Optional[str] = None, view: Optional[str] = None) -> str:
        """How to look at the runs: the command that serves a local store, and the page of the experiment in MLflow's
        classic runs view (MLflow 3 opens its GenAI view unless the address asks for this one), on a saved ``view``
        if given (a sweep's: :mod:`flopsweep.sinks.views`)."""
        shown = f"/runs?viewStateShareKey={view}&" if view else "?"
        page = f"/#/experiments/{experiment_id}{shown}workflowType=machine_learning" if experiment_id else ""
        if self.uri.startswith("sqlite:"):
            opened = f", then open http://127.0.0.1:5000{page}" if page else ""
            return f"{_mlflow_script()} ui --backend-store-uri {self.uri}{opened}"
        return f"open {masked(self.uri).rstrip('/')}{page} in a browser"


def masked_text(path: Path) -> Optional[str]:
    """The text of ``path`` with the passwords of the addresses in it masked (a config that names a store with its
    password), or None where it holds none (or is no text): what goes to a store never carries one."""
    data = path.read_bytes()
    if b"://" not in data:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    hidden = masked(text)
    return hidden if hidden != text else None


def unmasked(recorded: str, *candidates: Optional[str]) -> Optional[str]:
    """The URI that ``recorded`` (as :func:`~flopsweep.core.errors.masked` wrote it) stands for: itself where no
    password was masked, else the one of ``candidates`` (the environment, a job's config recorded before configs
    were masked) that masks as it and is not masked itself; None where none does."""
    try:
        if urlsplit(recorded).password != "***":
            return recorded
    except ValueError:
        return recorded
    return next((c for c in candidates if c and c != recorded and masked(c) == recorded), None)


def _mlflow_script() -> str:
    """The ``mlflow`` command beside this Python (``.venv/bin/mlflow``, relative where it is under the working
    directory): the one that works without the environment activated; plain ``mlflow`` where there is none."""
    import sys

    script = Path(sys.executable).parent / "mlflow"
    if not script.exists():
        return "mlflow"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own: where runs go when nothing else says
# the store addresses a command line gave with their passwords: kept in the process's environment (the sweep's
# workers inherit it) while Hydra, its launcher lines and its files see them masked
SECRETS_ENV = "FLOPSWEEP_STORE_ADDRESSES"
_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*\\?://\S+?(?=,[a-z][a-z0-9+.-]*\\?://|$)", re.IGNORECASE)


def hide_passwords(args: Sequence[str]) -> list[str]:
    """``args`` (a command line's overrides) with the password of every address in them masked; the addresses kept
    in :data:`SECRETS_ENV`, where :func:`target_of` finds an address again by its masked form."""
    kept = json.loads(os.environ.get(SECRETS_ENV) or "[]")
    hidden = []
    for arg in args:
        value = arg.split("=", 1)[1] if "=" in arg else arg
        if masked(arg) != arg:  # Hydra's escapes (http\://u\:p@h) are not the address's
            kept += [m.group(0).replace("\\", "") for m in _ADDRESS.finditer(value) if masked(m.group(0)) != m.group(0)]
        hidden.append(masked(arg))
    if kept:
        os.environ[SECRETS_ENV] = json.dumps(sorted(set(kept)))
    return hidden


def revealed(uri: str) -> str:
    """The address ``uri`` stands for where its password was masked (given on the command line, or by
    ``MLFLOW_TRACKING_URI``); a ConfigError where none is known."""
    real = unmasked(uri, *json.loads(os.environ.get(SECRETS_ENV) or "[]"), os.environ.get(URI_ENV))
    require(real is not None, "tracking.uri", uri, "has its password masked (***): give the address itself, or the "
            "password through MLFLOW_TRACKING_PASSWORD")
    return real


# the stores MLflow's client opens (a database through SQLAlchemy: postgresql+psycopg2, ...)
STORE_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def target_of(tracking: Any, project_dir: Path) -> Optional[Target]:
    """The tracking target of a ``tracking`` config node, or None for ``tracking=none``; a
    :class:`~flopsweep.core.errors.ConfigError` for one that can never work (checked before a job, so that it is not
    found out after the job was measured)."""
    require(tracking.kind in ("local", "server", "none"), "tracking.kind", tracking.kind,
            "must be local, server or none")
    if tracking.kind == "none":
        return None
    require(isinstance(tracking.experiment, str) and tracking.experiment.strip() != "", "tracking.experiment",
            tracking.experiment, "must be a name")
    if tracking.kind == "server" or tracking.uri:  # a store's address given is where the runs go (it was ignored
        uri = tracking.uri or os.environ.get(URI_ENV)  # without a word under the default tracking=local)
        require(bool(uri), "tracking.uri", None, "missing: set it or MLFLOW_TRACKING_URI for tracking=server")
        return Target(revealed(check_uri(str(uri), "tracking.uri")), None, tracking.experiment)
    folder = project_dir / tracking.dir
    require(not folder.exists() or folder.is_dir(), "tracking.dir", tracking.dir,
            "is not a folder: the store and its artifacts go in one")
    return target_at(None, folder, tracking.experiment, environment=False)


def check_uri(uri: str, key: str) -> str:
    """``uri``, a store MLflow opens with its driver installed, or a one-line error naming ``key``; a path for a URI
    (``outputs/mlflow.db``) is told the URI it means."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    meant = f" (did you mean sqlite:///{Path(uri).resolve()}?)" if not scheme and uri.endswith(".db") else ""
    require(scheme in STORE_SCHEMES, key, masked(uri),
            f"not a store MLflow opens: the scheme must be one of {', '.join(STORE_SCHEMES)}{meant}")
    missing = driver_missing(uri)
    require(missing is None, key, masked(uri), str(missing))
    return uri


def environment_unread(tracking: Any) -> Optional[str]:
    """What to say where ``MLFLOW_TRACKING_URI`` is set and the local store is used all the same (tracking=local
    does not read it: the variable another tool set is no reason to log elsewhere); None otherwise."""
    if tracking.kind != "local" or tracking.uri or not os.environ.get(URI_ENV):
        return None
    return (f"{URI_ENV} is set and not read: tracking=local logs to {tracking.dir}/mlflow.db; tracking=server logs "
            f"to {masked(os.environ[URI_ENV])}")


def target_at(uri: Optional[str], store_dir: Optional[str | Path], experiment: str, environment: bool = True
              ) -> Target:
    """``uri`` if given, else the local SQLite store under ``store_dir`` where given, else ``MLFLOW_TRACKING_URI``
    (when ``environment``), else the local store under ``outputs``, with its artifact folder beside it: where the
    command-line tools read and write (``--uri``, ``--store-dir``). A URI that can never work is a one-line
    :class:`~flopsweep.core.errors.ConfigError` naming it (``uri``, or the variable)."""
    if uri:
        return Target(check_uri(uri, "uri"), None, experiment)
    if store_dir is None and environment and os.environ.get(URI_ENV):
        return Target(check_uri(os.environ[URI_ENV], URI_ENV), None, experiment)
    store = Path(store_dir or "outputs").resolve()
    return Target(f"sqlite:///{store / 'mlflow.db'}", (store / "mlartifacts").as_uri(), experiment)


def target_of_uri(uri: str, experiment: str) -> Target:
    """The target a job recorded as ``uri``: a local store (``sqlite:///DIR/mlflow.db``, as :func:`target_at` names
    it) keeps its artifacts beside it, as the sweep made it, not in MLflow's default ./mlruns."""
    if uri.startswith("sqlite:///") and uri.endswith("/mlflow.db"):
        return target_at(None, Path(uri[len("sqlite:///"):]).parent, experiment, environment=False)
    return Target(uri, None, experiment)
