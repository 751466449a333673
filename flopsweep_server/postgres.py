"""PostgreSQL for the server: finding its tools, the unprivileged account it runs as under root, creating the
cluster (a random password, 127.0.0.1 only), starting and stopping it, and the ``mlflow`` database."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flopsweep_server.processes import alive, last_line, log_tail, require_free
from flopsweep_server.settings import DATABASE, INSTALL_HINT, PROG, ROLE, Layout, ServerError, Settings


def find_pg_bin(explicit: Optional[str]) -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: ``--pg-bin``, else PATH, else Debian's and Ubuntu's
    /usr/lib/postgresql/<version>/bin (where their packages put them, off PATH)."""
    if explicit:
        folder = Path(explicit).expanduser()
        missing = [tool for tool in ("initdb", "pg_ctl") if not (folder / tool).is_file()]
        if missing:
            raise ServerError(f"--pg-bin {explicit}: no {' or '.join(missing)} there; {INSTALL_HINT}")
        return folder
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    if candidates:
        return Path(candidates[-1]).parent
    raise ServerError(f"initdb: not found on PATH nor in /usr/lib/postgresql/*/bin; {INSTALL_HINT}")


def require_psycopg2() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise ServerError("psycopg2: not installed (MLflow needs it to talk to PostgreSQL): "
                          "pip install 'flopsweep[server]'") from None


@dataclass(frozen=True)
class Account:
    """The unprivileged account PostgreSQL runs as when this command runs as root."""

    name: str
    uid: int
    gid: int


def pg_account(name: Optional[str]) -> Optional[Account]:
    """None when not root (PostgreSQL runs as the caller); else ``--pg-user``, by default ``postgres``."""
    if os.geteuid() != 0:
        return None
    wanted = name or "postgres"
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        hint = "" if name else " (there is no 'postgres' account here)"
        raise ServerError(f"--pg-user {wanted}: no such account{hint}; PostgreSQL will not run as root: name an "
                          f"unprivileged account with --pg-user, or run {PROG} as that account") from None
    if entry.pw_uid == 0:
        raise ServerError(f"--pg-user {wanted}: is root; PostgreSQL will not run as root: name an unprivileged account")
    return Account(wanted, entry.pw_uid, entry.pw_gid)


def _blocked_for(path: Path, account: Account) -> Optional[Path]:
    """The first folder on the way to ``path`` that ``account`` may not enter, or None."""
    import grp

    groups = {account.gid} | {g.gr_gid for g in grp.getgrall() if account.name in g.gr_mem}
    for folder in [*reversed(path.parents), path]:
        if not folder.exists():
            break
        st = folder.stat()
        bit = 0o100 if st.st_uid == account.uid else 0o010 if st.st_gid in groups else 0o001
        if not st.st_mode & bit:
            return folder
    return None


def _pg(command: list[str], account: Optional[Account], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool, as ``account`` when there is one."""
    if account is not None:
        kwargs.update(user=account.uid, group=account.gid, extra_groups=[])
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)


def _give(path: Path, account: Optional[Account]) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def init_cluster(layout: Layout, pg_bin: Path, account: Optional[Account]) -> None:
    """initdb a cluster whose superuser is the ``mlflow`` role with a new random password (scram-sha-256), that
    listens on 127.0.0.1 only and has no Unix socket (no socket folder to own, no local trust)."""
    if account is not None:
        blocked = _blocked_for(layout.root, account)
        if blocked is not None:
            raise ServerError(f"--dir {layout.root}: the PostgreSQL account {account.name!r} cannot enter {blocked}; "
                              f"choose a folder it can reach (e.g. under /srv or /var/lib) or open that folder "
                              f"(chmod o+x {blocked})")
    password = secrets.token_hex(24)
    layout.pgdata.mkdir(mode=0o700)
    _give(layout.pgdata, account)
    pwfile = layout.root / ".initdb-password"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _give(pwfile, account)
    try:
        proc = _pg([str(pg_bin / "initdb"), "-D", str(layout.pgdata), "-U", ROLE, f"--pwfile={pwfile}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"],
                   account, layout.root, timeout=300)
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(layout.pgdata, ignore_errors=True)  # a half-made cluster would block the next start
        raise ServerError(f"initdb: failed: {last_line(proc.stderr or proc.stdout)}")
    with open(layout.pgdata / "postgresql.conf", "a") as conf:
        conf.write("\n# flopsweep-server: local connections only, over TCP; the port is given at start\n"
                   "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 200\n")
    layout.pgpass.write_text(f"127.0.0.1:*:*:{ROLE}:{password}\n")
    layout.pgpass.chmod(0o600)


def postgres_port(layout: Layout) -> Optional[int]:
    """The port of this cluster's running postmaster, or None when it is not running."""
    pidfile = layout.pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return port if alive(pid) else None


def start_postgres(layout: Layout, settings: Settings, pg_bin: Path, account: Optional[Account]) -> bool:
    """Start the cluster on ``settings.db_port`` unless it runs already. Returns whether it was started."""
    running = postgres_port(layout)
    if running is not None:
        if running != settings.db_port:
            raise ServerError(f"--db-port {settings.db_port}: this cluster already runs on port {running}; "
                              f"stop it first ({PROG} stop --dir {layout.root})")
        return False
    require_free("--db-port", "127.0.0.1", settings.db_port)
    if not layout.postgres_log.exists():
        layout.postgres_log.touch()
    _give(layout.postgres_log, account)
    proc = _pg([str(pg_bin / "pg_ctl"), "-D", str(layout.pgdata), "-l", str(layout.postgres_log), "-w", "-t", "120",
                "-o", f"-p {settings.db_port}", "start"], account, layout.root, timeout=180)
    if proc.returncode != 0:
        tail = log_tail(layout.postgres_log).strip()
        raise ServerError(f"pg_ctl start: failed: {last_line(tail or proc.stderr or proc.stdout)} "
                          f"(see {layout.postgres_log})")
    return True


def stop_postgres(layout: Layout, pg_bin: Path, account: Optional[Account]) -> bool:
    if postgres_port(layout) is None:
        return False
    proc = _pg([str(pg_bin / "pg_ctl"), "-D", str(layout.pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
               account, layout.root, timeout=120)
    if proc.returncode != 0:
        raise ServerError(f"pg_ctl stop: failed: {last_line(proc.stderr or proc.stdout)}")
    return True


def ensure_database(layout: Layout, settings: Settings) -> None:
    """Create the ``mlflow`` database if the cluster lacks it (MLflow creates its tables itself)."""
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=settings.db_port, user=ROLE, password=layout.password(),
                                  dbname="postgres", connect_timeout=10)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()
