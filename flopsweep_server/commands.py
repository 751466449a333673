"""The ``flopsweep-server`` command: start (creating what the folder lacks), run in the foreground, stop, status."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from flopsweep_server.mlflow_server import healthy, mlflow_group, start_mlflow, stop_mlflow
from flopsweep_server.postgres import (ensure_database, find_pg_bin, init_cluster, pg_account, postgres_port,
                                       require_psycopg2, start_postgres, stop_postgres)
from flopsweep_server.processes import require_free
from flopsweep_server.settings import (DEFAULT_DIR, PROG, Layout, ServerError, Settings, backend_uri, load_settings,
                                       stored_settings, url_of)


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
        asked = [key for key, value in asdict(settings).items() if value != getattr(running, key)]
        if asked:  # options it would not take: said, not taken for done
            raise ServerError(f"{', '.join(_flag(key) for key in asked)}: the server in {layout.root} already runs "
                              f"(at {url_of(running)}) with other options; stop it first ({PROG} stop --dir "
                              f"{layout.root})")
        print(f"{PROG}: already running: {url_of(running)}  (folder {layout.root}; stop it to change its options)")
        return None
    require_free("--port", settings.host, settings.port)  # before anything slow: a busy port fails at once
    if postgres_port(layout) is None:
        require_free("--db-port", "127.0.0.1", settings.db_port)
    made = next((folder for folder in [*reversed(layout.root.parents), layout.root] if not folder.exists()), None)
    layout.root.mkdir(parents=True, exist_ok=True)
    if not (layout.pgdata / "PG_VERSION").exists():
        if layout.pgdata.exists() and any(layout.pgdata.iterdir()):
            raise ServerError(f"--dir {layout.root}: {layout.pgdata} is not empty and holds no PostgreSQL cluster")
        if layout.pgdata.exists():
            layout.pgdata.rmdir()
        print(f"{PROG}: creating a PostgreSQL cluster in {layout.pgdata}")
        try:
            init_cluster(layout, pg_bin, account)
        except BaseException:
            if made is not None:  # a first start that failed leaves no folder behind (the next is a first start too)
                shutil.rmtree(made, ignore_errors=True)
            raise
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


def _flag(setting: str) -> str:
    """How a setting is given on the command line: ``--db-port``, or ``--`` for mlflow server's own options."""
    return "--" if setting == "mlflow_args" else f"--{setting.replace('_', '-')}"


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: Optional[list[str]] = None  # no --: the options start remembered
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
    sys.exit(main())


if __name__ == "__main__":
    entry()
