"""Whether a store can be used, found out in seconds and said once. MLflow's own client, given a store that is
damaged, locked by another process or silent, retries for minutes (a damaged SQLite file: ten attempts over five
minutes; a server that accepts and never answers: three timed-out requests a call). :func:`check` asks the store
itself first, in at most :data:`CHECK_SECONDS`; a store found unusable is remembered for the rest of the sweep (in
this process and, through the environment, in the sweep's workers), so that its jobs go on unlogged without trying
it again. ``flopsweep-sync`` logs them once it works."""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

from flopsweep.core.errors import masked, one_line

CHECK_SECONDS = 5.0
DOWN_ENV = "FLOPSWEEP_STORES_DOWN"  # {uri: reason} of the stores this sweep found unusable
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# the drivers SQLAlchemy opens each database with, to name those installed where the one asked for is not
_DRIVERS = {"postgresql": ("psycopg2", "psycopg", "pg8000"), "mysql": ("pymysql", "mysqldb", "mysqlconnector"),
            "mssql": ("pyodbc", "pymssql")}
_usable: set[tuple[str, bool]] = set()


class StoreUnusable(RuntimeError):
    """A store that cannot be used now; ``str(err)`` is one line naming it and why."""


def check(uri: str, write: bool = True) -> None:
    """Raise :class:`StoreUnusable` if the store at ``uri`` is known to be unusable in this sweep, or is found so
    now (damaged, locked, not answering: asked directly, in at most :data:`CHECK_SECONDS` plus the time SQLite
    takes to check the file); ``write``: it must take writes too, not only be read."""
    reason = down_reason(uri)
    if reason is None and (uri, write) not in _usable:
        reason = probe(uri, write)
        if reason is None:
            _usable.add((uri, write))
        elif write:
            mark_down(uri, reason)
    if reason is not None:
        raise StoreUnusable(f"the store {masked(uri)} cannot be used: {reason}")


def down_reason(uri: str) -> Optional[str]:
    """Why the store at ``uri`` was found unusable in this sweep, or None."""
    return _down().get(uri)


def mark_down(uri: str, reason: str) -> None:
    """Remember for the rest of the sweep that the store at ``uri`` cannot be used, and why."""
    _usable.discard((uri, True))
    _usable.discard((uri, False))
    os.environ[DOWN_ENV] = json.dumps({**_down(), uri: reason})


def forget() -> None:
    """A new sweep tries every store afresh."""
    _usable.clear()
    os.environ.pop(DOWN_ENV, None)


def _down() -> dict[str, str]:
    try:
        found = json.loads(os.environ.get(DOWN_ENV) or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def probe(uri: str, write: bool = True, seconds: float = CHECK_SECONDS) -> Optional[str]:
    """Why the store at ``uri`` cannot be used, asked of the store itself within ``seconds``; None if it answers (or
    is a kind this cannot ask: MLflow's own errors then say what is wrong)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme == "sqlite":
        return _probe_sqlite(Path(uri[len("sqlite:///"):]), write, seconds)
    if scheme in ("http", "https"):
        return _probe_server(uri, seconds)
    if scheme in DB_PORTS:
        missing = driver_missing(uri)
        if missing is not None:
            return missing
        parts = urlsplit(uri)
        if parts.hostname:
            return _probe_database(scheme, parts.hostname, parts.port or DB_PORTS[scheme], seconds)
    return None


def driver_missing(uri: str) -> Optional[str]:
    """Why SQLAlchemy cannot open the database at ``uri`` in this Python (its driver is not installed, or there is
    no such driver), naming the drivers of that database that are installed; None if it can, or ``uri`` is no
    database's. MLflow finds it out only as it opens the store, as a ModuleNotFoundError."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    database = scheme.partition("+")[0]
    why = _load_error(scheme) if database in _DRIVERS else None
    if why is None:
        return None
    here = [f"{database}+{name}://" for name in _DRIVERS[database] if _load_error(f"{database}+{name}") is None]
    instead = f"name an installed one: {', '.join(here)}" if here else f"install one ({', '.join(_DRIVERS[database])})"
    return f"SQLAlchemy has no driver for {scheme}:// in this Python ({why}); {instead}"


def _load_error(scheme: str) -> Optional[str]:
    """Why SQLAlchemy's dialect for ``scheme`` cannot load its driver's module, or None."""
    from sqlalchemy.engine import make_url  # the dialect's own import: the module that driver really needs

    try:
        make_url(f"{scheme}://").get_dialect().import_dbapi()
    except Exception as err:  # noqa: BLE001 - no such dialect, or its module missing: either way it cannot open it
        return one_line(err)
    return None


def _probe_sqlite(path: Path, write: bool, seconds: float) -> Optional[str]:
    if not path.exists():  # a new store, made on first use, where its folder is or can be made
        folder = next(folder for folder in path.parents if folder.exists())
        if not folder.is_dir():
            return f"{folder} is a file, where the store's folder goes"
        return None if os.access(folder, os.W_OK) else f"{folder} cannot be written"
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode={'rw' if write else 'ro'}", uri=True,
                                     timeout=seconds)
        try:
            found = connection.execute("PRAGMA quick_check").fetchone()
            if found is None or found[0] != "ok":
                return f"{path} is damaged (SQLite's check: {found[0] if found else 'no answer'}); " + _SET_ASIDE
            if write:
                connection.execute("BEGIN IMMEDIATE")  # waits up to `seconds` for another process's write lock
                connection.rollback()
        finally:
            connection.close()
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            return f"{path} is locked by another process (still after {seconds:.0f} s)"
        return f"{path}: {err}"
    except sqlite3.DatabaseError as err:
        return f"{path} is damaged ({err}); " + _SET_ASIDE
    return None


_SET_ASIDE = "move it aside: the next sweep makes a new store, and flopsweep-sync logs the job folders into it"


def _probe_server(uri: str, seconds: float) -> Optional[str]:
    parts = urlsplit(uri)  # a user and password in the address (as MLflow's client takes them): basic auth
    host = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(parts._replace(netloc=host).geturl().rstrip("/")
                                     + "/api/2.0/mlflow/experiments/search?max_results=1")
    if parts.username is not None:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=seconds) as answer:
            answer.read(1)
    except urllib.error.HTTPError as err:  # it answers: a refusal (401, 404) is MLflow's client's to explain
        if err.code >= 500:
            return f"the server answers {err.code} {err.reason}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
            return f"the server did not answer within {seconds:.0f} s"
        return f"the server cannot be reached ({reason})"
    return None


# a database server's first word, asked without its driver: PostgreSQL answers a request for SSL with one byte (S or
# N; E from a server too old to know it), MySQL greets every connection; SQL Server's port is only reached
_POSTGRES_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _probe_database(scheme: str, host: str, port: int, seconds: float) -> Optional[str]:
    deadline = time.monotonic() + seconds  # connecting and the first word together, as long as a check may take
    try:
        connection = socket.create_connection((host, port), timeout=seconds)
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err.strerror or err})"
    with connection:
        try:
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            if scheme == "postgresql":
                connection.sendall(_POSTGRES_SSL_REQUEST)
            elif scheme != "mysql":
                return None
            if not connection.recv(1):
                return f"{host}:{port} closed the connection without answering"
        except TimeoutError:
            return f"{host}:{port} accepts connections but did not answer within {seconds:.0f} s"
        except OSError as err:
            return f"{host}:{port} cannot be reached ({err.strerror or err})"
    return None
