"""The local SQLite store's two needs: a lock for what only one process may do at a time (making the store's schema
and its experiments), and commits that append to a log rather than sync the disk twice."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Iterator

from flopsweep.core.files import locked


@contextlib.contextmanager
def local_store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``mlflow.db.lock`` beside the local SQLite store ``uri`` (none for a server's: it
    serializes what it is sent)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(f"{uri[len('sqlite:///'):]}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with locked(lock):
        yield


@functools.lru_cache(maxsize=None)
def fast_local_commits(db_path: str) -> None:
    """Open this process's connections to the local SQLite store in WAL mode with ``synchronous=NORMAL``: a
    commit is then an append to the log, not a journal and two disk syncs (most of what logging a job cost).
    The store stays consistent; a power cut can lose its last commits, never a result: the job folder is
    written first and ``flopsweep-sync`` logs again whatever the store lacks."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    wanted = os.path.realpath(db_path)

    @event.listens_for(Engine, "connect")
    def _on_connect(connection: Any, _record: Any) -> None:
        if not isinstance(connection, sqlite3.Connection):
            return
        files = [row[2] for row in connection.execute("PRAGMA database_list") if row[1] == "main"]
        if files and files[0] and os.path.realpath(files[0]) == wanted:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
