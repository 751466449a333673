"""A server folder's settings and files: the options ``start`` was given (remembered in DIR/server.json), where
everything lives, and the URLs it answers on."""

from __future__ import annotations

import argparse
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PROG = "flopsweep-server"
DEFAULT_DIR = Path("outputs") / "tracking-server"
ROLE = DATABASE = "mlflow"
INSTALL_HINT = ("install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@15; "
                "conda: conda install -c conda-forge postgresql) or pass --pg-bin DIR")


class ServerError(Exception):
    """One line for the user, naming what is wrong: ``--port 5000: cannot listen on 127.0.0.1:5000 ...``."""


@dataclass
class Settings:
    """What ``start`` was given, remembered in DIR/server.json so that a restart needs no options."""

    port: int = 5000
    host: str = "127.0.0.1"
    db_port: int = 5433
    artifacts: Optional[str] = None      # None: DIR/artifacts
    workers: int = 4
    pg_bin: Optional[str] = None
    pg_user: Optional[str] = None        # who runs PostgreSQL when started by root (it refuses root)
    mlflow_args: list[str] = field(default_factory=list)


class Layout:
    """The files of one server folder."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.pgdata = self.root / "postgres"
        self.pgpass = self.root / "pgpass"
        self.settings = self.root / "server.json"
        self.mlflow_pid = self.root / "mlflow.pid"
        self.mlflow_log = self.root / "mlflow.log"
        self.postgres_log = self.root / "postgres.log"

    def artifacts(self, settings: Settings) -> str:
        return settings.artifacts or str(self.root / "artifacts")

    def password(self) -> str:
        """The ``mlflow`` role's password, from the pgpass file ``init_cluster`` wrote (its last field)."""
        return self.pgpass.read_text().strip().rsplit(":", 1)[1]


def backend_uri(settings: Settings) -> str:
    """The store MLflow writes runs to; the password comes from PGPASSFILE."""
    return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{settings.db_port}/{DATABASE}"


def url_of(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{settings.port}"


def local_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def stored_settings(layout: Layout) -> Settings:
    """The options remembered from the last ``start`` in this folder, else the defaults."""
    stored = {}
    if layout.settings.exists():
        try:
            stored = json.loads(layout.settings.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ServerError(f"{layout.settings}: unreadable ({err}); delete it to start with the defaults") from None
    return Settings(**{k: v for k, v in stored.items() if k in Settings.__dataclass_fields__})


def load_settings(layout: Layout, args: argparse.Namespace) -> Settings:
    """The options given now, else those remembered from the last ``start``, else the defaults. Options for ``mlflow
    server`` given after ``--`` replace the remembered ones; ``--`` alone clears them (``args.mlflow_args``: None
    where no ``--`` was given)."""
    settings = stored_settings(layout)
    for key in Settings.__dataclass_fields__:
        value = getattr(args, key, None)
        if value is not None:
            setattr(settings, key, value)
    for key in ("artifacts", "pg_bin"):  # a folder given relative to here, not to DIR (the servers' cwd)
        value = getattr(settings, key)
        if value and "://" not in value:
            setattr(settings, key, str(Path(value).expanduser().resolve()))
    if not 0 < settings.port < 65536:
        raise ServerError(f"--port {settings.port}: must be between 1 and 65535")
    if not 0 < settings.db_port < 65536:
        raise ServerError(f"--db-port {settings.db_port}: must be between 1 and 65535")
    if settings.workers < 1:
        raise ServerError(f"--workers {settings.workers}: must be at least 1")
    return settings
