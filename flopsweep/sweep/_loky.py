"""Every private loky (joblib's process pool) and multiprocessing symbol flopsweep uses, in this one file: starting
workers from a fork server, pickling the sweep's state the way loky pickles tasks, and ending the pool and the fork
server at the end of a sweep. A joblib upgrade that moves them makes the sweep slower, not wrong: each use is
guarded."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def use_fork_server(preload: list[str]) -> None:
    """Have loky fork its workers from a server that imports ``preload`` once; start it now (it imports while the
    caller goes on)."""
    import multiprocessing
    from multiprocessing import forkserver

    from joblib.externals.loky.backend.context import set_start_method

    multiprocessing.set_forkserver_preload(preload)
    set_start_method("forkserver", force=True)
    forkserver.ensure_running()


def dumps(value: Any) -> bytes:
    """``value`` pickled as loky pickles a task (cloudpickle: functions and classes by value where needed)."""
    from joblib.externals.loky.backend.reduction import dumps as loky_dumps

    return loky_dumps(value)


def stop_pool_and_fork_server() -> None:
    """End joblib's reusable worker pool and the fork server at once, if this process has them."""
    if "joblib.externals.loky.reusable_executor" not in sys.modules:
        return  # no joblib pool in this process
    from multiprocessing import forkserver

    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            server._stop()  # reaps it, removes its socket and forgets it
        except OSError:  # ChildProcessError and ProcessLookupError included: gone already
            pass
