"""``flopsweep-server``: a shared MLflow tracking server on PostgreSQL, its artifacts in a store of their own.

    flopsweep-server start  [--dir DIR] [--port 5000] [--host 127.0.0.1] [--db-port 5433] [--artifacts URI]
                            [--workers 4] [--pg-bin DIR] [--pg-user NAME] [-- MLFLOW-SERVER-OPTIONS...]
    flopsweep-server status [--dir DIR]
    flopsweep-server stop   [--dir DIR]
    flopsweep-server run    [the options of start]    # start, stay in the foreground; Ctrl-C stops both

``start`` creates what DIR lacks, once: a PostgreSQL cluster in DIR/postgres (initdb; it listens on 127.0.0.1
only and asks for a password, which is kept in DIR/pgpass and reaches MLflow through ``PGPASSFILE``, never a
command line), and its ``mlflow`` database. It then starts PostgreSQL and ``mlflow server`` in the background and
returns once the server answers. Runs go to PostgreSQL; artifacts to DIR/artifacts, or to ``--artifacts`` (any
destination ``mlflow server --artifacts-destination`` takes: a mounted folder, s3://...), proxied by the server,
so that clients need access to the server only. Options given to ``start`` are remembered in DIR/server.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
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


def _local_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


# -- PostgreSQL ---------------------------------------------------------------------------------------------------

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


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


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
        raise ServerError(f"initdb: failed: {_last_line(proc.stderr or proc.stdout)}")
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
    return port if _alive(pid) else None


def start_postgres(layout: Layout, settings: Settings, pg_bin: Path, account: Optional[Account]) -> bool:
    """Start the cluster on ``settings.db_port`` unless it runs already. Returns whether it was started."""
    running = postgres_port(layout)
    if running is not None:
        if running != settings.db_port:
            raise ServerError(f"--db-port {settings.db_port}: this cluster already runs on port {running}; "
                              f"stop it first ({PROG} stop --dir {layout.root})")
        return False
    _require_free("--db-port", "127.0.0.1", settings.db_port)
    if not layout.postgres_log.exists():
        layout.postgres_log.touch()
    _give(layout.postgres_log, account)
    proc = _pg([str(pg_bin / "pg_ctl"), "-D", str(layout.pgdata), "-l", str(layout.postgres_log), "-w", "-t", "120",
                "-o", f"-p {settings.db_port}", "start"], account, layout.root, timeout=180)
    if proc.returncode != 0:
        tail = _log_tail(layout.postgres_log).strip()
        raise ServerError(f"pg_ctl start: failed: {_last_line(tail or proc.stderr or proc.stdout)} "
                          f"(see {layout.postgres_log})")
    return True


def stop_postgres(layout: Layout, pg_bin: Path, account: Optional[Account]) -> bool:
    if postgres_port(layout) is None:
        return False
    proc = _pg([str(pg_bin / "pg_ctl"), "-D", str(layout.pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
               account, layout.root, timeout=120)
    if proc.returncode != 0:
        raise ServerError(f"pg_ctl stop: failed: {_last_line(proc.stderr or proc.stdout)}")
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


# -- the MLflow server --------------------------------------------------------------------------------------------

def mlflow_command(layout: Layout, settings: Settings) -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]
    return [*head, "server", "--backend-store-uri", backend_uri(settings),
            "--serve-artifacts", "--artifacts-destination", layout.artifacts(settings),
            "--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers),
            *settings.mlflow_args]


def mlflow_group(layout: Layout) -> Optional[int]:
    """The process group of this folder's running MLflow server (the CLI and its uvicorn workers), or None."""
    try:
        pgid = int(layout.mlflow_pid.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pgid if _group_alive(pgid) else None


def healthy(settings: Settings, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"{_local_url(settings)}/health", timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def start_mlflow(layout: Layout, settings: Settings, wait_s: float = 300) -> subprocess.Popen:
    _require_free("--port", settings.host, settings.port)
    artifacts = layout.artifacts(settings)
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PGPASSFILE=str(layout.pgpass))
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow 3's job runner (GenAI scorers, prompt optimisation: nothing a sweep uses) is 8 more processes (its
    # runner and 7 consumers, each importing MLflow);
    # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment turns it back on
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(layout.mlflow_log, "a") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {PROG} start\n")
        log.flush()
        proc = subprocess.Popen(mlflow_command(layout, settings), cwd=layout.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    layout.mlflow_pid.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s  # the first start creates MLflow's tables: tens of seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            layout.mlflow_pid.unlink(missing_ok=True)
            raise ServerError(f"mlflow server: exited with status {proc.returncode}: "
                              f"{_last_line(_log_tail(layout.mlflow_log))} (see {layout.mlflow_log})")
        if healthy(settings):
            return proc
        time.sleep(0.25)
    stop_mlflow(layout)
    raise ServerError(f"mlflow server: did not answer on {_local_url(settings)} in {wait_s:.0f} s "
                      f"(see {layout.mlflow_log})")


def stop_mlflow(layout: Layout, timeout: float = 20) -> bool:
    """SIGTERM the server's process group, SIGKILL it after ``timeout`` s. Returns whether one was running."""
    pgid = mlflow_group(layout)
    if pgid is None:
        layout.mlflow_pid.unlink(missing_ok=True)
        return False
    _signal_group(pgid, signal.SIGTERM)
    if not _group_ended(pgid, timeout):
        _signal_group(pgid, signal.SIGKILL)
        _group_ended(pgid, 10)
    layout.mlflow_pid.unlink(missing_ok=True)
    return True


def _group_ended(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for every process of the group to end; whether they did."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies, which their parent or init reaps, do not count)."""
    if Path("/proc/self/stat").exists():
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


def _require_free(option: str, host: str, port: int) -> None:
    """Fail in one line when something already listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ServerError(f"{option} {port}: cannot listen on {host}:{port} ({err.strerror}): another program "
                              f"uses it; choose another with {option}") from None


# -- commands -----------------------------------------------------------------------------------------------------

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
    """The options given now, else those remembered from the last ``start``, else the defaults."""
    settings = stored_settings(layout)
    for key in Settings.__dataclass_fields__:
        value = getattr(args, key, None)
        if value is not None and value != []:
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


def start(layout: Layout, settings: Settings, foreground: bool = False) -> Optional[subprocess.Popen]:
    pg_bin = find_pg_bin(settings.pg_bin)
    require_psycopg2()
    account = pg_account(settings.pg_user)
    if mlflow_group(layout) is not None:
        if foreground:
            raise ServerError(f"--dir {layout.root}: its server already runs in the background; "
                              f"stop it first ({PROG} stop --dir {layout.root})")
        try:  # as it was started, whatever this command's options say
            running = stored_settings(layout)
        except ServerError:
            running = settings
        print(f"{PROG}: already running: {url_of(running)}  (folder {layout.root}; stop it to change its options)")
        return None
    _require_free("--port", settings.host, settings.port)  # before anything slow: a busy port fails at once
    if postgres_port(layout) is None:
        _require_free("--db-port", "127.0.0.1", settings.db_port)
    layout.root.mkdir(parents=True, exist_ok=True)
    if not (layout.pgdata / "PG_VERSION").exists():
        if layout.pgdata.exists() and any(layout.pgdata.iterdir()):
            raise ServerError(f"--dir {layout.root}: {layout.pgdata} is not empty and holds no PostgreSQL cluster")
        if layout.pgdata.exists():
            layout.pgdata.rmdir()
        print(f"{PROG}: creating a PostgreSQL cluster in {layout.pgdata}")
        init_cluster(layout, pg_bin, account)
    if not layout.pgpass.exists():
        raise ServerError(f"--dir {layout.root}: {layout.pgpass} is missing: the database password is lost")
    layout.settings.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    started_pg = start_postgres(layout, settings, pg_bin, account)
    try:
        ensure_database(layout, settings)
        proc = start_mlflow(layout, settings)
    except BaseException as err:  # leave nothing running behind a failed or interrupted start
        stop_mlflow(layout)  # none ran before this start (checked above): any there is this start's
        if started_pg:
            stop_postgres(layout, pg_bin, account)
        if isinstance(err, Exception) and not isinstance(err, ServerError):
            raise ServerError(f"postgresql://127.0.0.1:{settings.db_port}: {' '.join(str(err).split())[:300]}") \
                from None
        raise
    print(f"{PROG}: MLflow on PostgreSQL at {url_of(settings)}  (runs: {backend_uri(settings)}, "
          f"artifacts: {layout.artifacts(settings)}, folder: {layout.root})")
    print(f"  point sweeps at it:  flopsweep -m ... tracking=server tracking.uri={url_of(settings)}"
          f"   (or export MLFLOW_TRACKING_URI={url_of(settings)})")
    if not foreground:
        print(f"  stop it:             {PROG} stop --dir {layout.root}")
    return proc


def stop(layout: Layout, settings: Settings) -> None:
    stopped_mlflow = stop_mlflow(layout)
    stopped_pg = False
    if (layout.pgdata / "PG_VERSION").exists():
        stopped_pg = stop_postgres(layout, find_pg_bin(settings.pg_bin), pg_account(settings.pg_user))
    what = [name for name, done in (("mlflow server", stopped_mlflow), ("PostgreSQL", stopped_pg)) if done]
    print(f"{PROG}: stopped {' and '.join(what)}" if what else f"{PROG}: nothing was running in {layout.root}")


def status(layout: Layout, settings: Settings) -> int:
    mlflow_up = mlflow_group(layout) is not None and healthy(settings)
    pg = postgres_port(layout)
    print(f"mlflow server: {'answering at ' + url_of(settings) if mlflow_up else 'not running'}")
    print(f"PostgreSQL:    {f'running on 127.0.0.1:{pg}' if pg else 'not running'}  (folder {layout.root})")
    return 0 if mlflow_up and pg else 3


def run_foreground(layout: Layout, settings: Settings) -> int:
    """Start both, wait; SIGINT (Ctrl-C), SIGTERM or SIGHUP stops both. Exits 1 if the MLflow server dies by
    itself."""
    stopping = []

    def on_signal(signum: int, _frame) -> None:
        stopping.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, on_signal)
    proc = start(layout, settings, foreground=True)
    print(f"{PROG}: running; Ctrl-C stops the mlflow server and PostgreSQL")
    while not stopping and proc.poll() is None:
        time.sleep(0.5)
    code = 0 if stopping else 1
    if not stopping:
        print(f"{PROG}: error: mlflow server exited with status {proc.returncode} (see {layout.mlflow_log})",
              file=sys.stderr)
    stop(layout, settings)
    return code


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description="A shared MLflow tracking server on PostgreSQL, its "
                                  "artifacts in a store of their own (docs/tracking_server.md).")
    commands = top.add_subparsers(dest="command", required=True, metavar="{start,stop,status,run}")
    for name, text in (("start", "create what is missing, start PostgreSQL and mlflow server in the background"),
                       ("run", "start, stay in the foreground; Ctrl-C stops both"),
                       ("stop", "stop the mlflow server and PostgreSQL"),
                       ("status", "say what runs (exit status 0 when both do)")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--dir", type=Path, default=None,
                         help=f"the server's folder: database, artifacts, logs (default: {DEFAULT_DIR}, "
                              f"or FLOPSWEEP_SERVER_DIR)")
        if name in ("start", "run"):
            sub.add_argument("--port", type=int, help="the MLflow server's port (default 5000)")
            sub.add_argument("--host", help="the interface it listens on (default 127.0.0.1; 0.0.0.0 for a team, "
                                            "with -- --allowed-hosts NAME:PORT)")
            sub.add_argument("--db-port", type=int, help="PostgreSQL's port on 127.0.0.1 (default 5433)")
            sub.add_argument("--artifacts", help="the artifact store (default DIR/artifacts; a folder or s3://...)")
            sub.add_argument("--workers", type=int, help="the MLflow server's worker processes (default 4)")
        if name != "status":
            sub.add_argument("--pg-bin", help="the folder of initdb and pg_ctl (default: PATH, "
                                              "then /usr/lib/postgresql/*/bin)")
            sub.add_argument("--pg-user", help="the account PostgreSQL runs as when started by root "
                                               "(default postgres)")
    return top


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # what follows goes to ``mlflow server`` as it is
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser().parse_args(argv)
    if extra and args.command not in ("start", "run"):
        print(f"{PROG}: error: options after -- go to mlflow server: only with start or run", file=sys.stderr)
        return 2
    args.mlflow_args = extra
    layout = Layout(args.dir or Path(os.environ.get("FLOPSWEEP_SERVER_DIR") or DEFAULT_DIR))
    try:
        if layout.root.exists() and not layout.root.is_dir():
            raise ServerError(f"--dir {layout.root}: not a folder")
        settings = load_settings(layout, args)
        if args.command == "start":
            start(layout, settings)
            return 0
        if args.command == "run":
            return run_foreground(layout, settings)
        if args.command == "stop":
            stop(layout, settings)
            return 0
        return status(layout, settings)
    except ServerError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    from flopsweep.console import exit_command

    exit_command(main())


if __name__ == "__main__":
    entry()
