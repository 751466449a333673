"""What the tests share, in one module: running the commands (in a new interpreter for the process contract, or in
this one for everything else), composing configs, independent FLOP checks, and the pretend GPU of the fault tests."""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import io
import json
import math
import os
import socket
import subprocess
import sys
import traceback
import weakref
from pathlib import Path
from typing import Callable, Optional, Sequence

from hydra.core.plugins import Plugins

# Hydra's first plugin scan executes its core plugins' modules again (a new BasicSweeper class, whose methods name
# it): the flopsweep command scans before our sweeper subclasses it, so the tests, which import the sweeper's
# modules at collection, scan first too
Plugins.instance()

import torch  # noqa: E402
import torch.nn.functional as F_  # noqa: E402
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from flopsweep.config import compose as _compose  # noqa: E402
from flopsweep.config.compose import register_configs  # noqa: E402
from flopsweep.config.schema import CONF_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
FLOPSWEEP = [sys.executable, "-m", "flopsweep"]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # ``tests.helpers.PretendGPU`` as a ``_target_``, whatever the working directory

register_configs()


@functools.cache
def _composed(overrides: tuple[str, ...]):
    return _compose.compose_config(*overrides)


def compose_config(*overrides: str):
    """The job config the ``flopsweep`` command composes for these overrides (``flopsweep.config.compose``), composed
    once a test process for each set of overrides and copied for each caller (a test may change its copy): Hydra
    takes some 0.13 s to compose, a copy 3 ms, and the fast lane asks some 800 times."""
    return copy.deepcopy(_composed(overrides))


__all__ = ["REPO", "TESTS", "FLOPSWEEP", "compose_config", "run_cli", "run_app", "run_main", "model_presets",
           "MatmulFlops", "SdpaCalls", "params", "free_port", "read_results", "F", "BUILT_ON", "ALIVE", "PretendGPU",
           "custom_model", "pretend_gpu", "sgd_peak", "child_env", "local_store"]


# --- running the commands ------------------------------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a command, without a HYDRA_FULL_ERROR the user may have set, with the repo on
    PYTHONPATH (for ``tests.helpers`` targets) and ``extra`` added."""
    env = {**os.environ, **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return env


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """The ``flopsweep`` command in a new interpreter: for the process contract (exit status, what reaches stderr,
    signals, imports)."""
    return subprocess.run([*FLOPSWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env or child_env())


def run_main(main: Callable[[Sequence[str]], int], *args: str, cwd: Path,
             env: Optional[dict[str, Optional[str]]] = None) -> subprocess.CompletedProcess:
    """A command's ``main(argv)`` run in this process, in ``cwd``, with ``env`` added to (or, for None values,
    removed from) the environment; what it printed and its exit status as :func:`run_cli` gives them. An exception
    that escapes is exit status 1 with its traceback on stderr, as the interpreter would make it. The working
    directory, environment, torch's thread count and Hydra's global state are put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    _keep_our_sweepers_base()
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    os.environ.pop("HYDRA_FULL_ERROR", None)
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:  # noqa: BLE001 - what the interpreter would print and exit 1 for
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        GlobalHydra.instance().clear()
        gc.unfreeze()  # a sweep freezes what it imported after its first job; a test process goes on
    return subprocess.CompletedProcess(["flopsweep", *args], code, out.getvalue(), err.getvalue())


def _keep_our_sweepers_base() -> None:
    """A joblib sweep run in this process (``n_jobs=1``) restores Hydra's state the way a worker does, and that
    scans Hydra's plugins again, executing its basic sweeper's module anew: the module's ``BasicSweeper``, which its
    methods name, is then a class our sweeper does not derive from. A process runs one sweep; a test process runs
    many, so the name is pointed back at the class our sweeper derives from."""
    import hydra._internal.core_plugins.basic_sweeper as basic

    from flopsweep.sweep.sweeper import RecoveringSweeper

    basic.BasicSweeper = next(c for c in RecoveringSweeper.__mro__ if c.__name__ == "BasicSweeper")


def run_app(*args: str, cwd: Path, env: Optional[dict[str, Optional[str]]] = None,
            store: bool = True) -> subprocess.CompletedProcess:
    """The ``flopsweep`` command run in this process (:func:`flopsweep.cli.flopsweep.main`): result, status and MLflow
    contracts without a new interpreter each time. A command that logs to the default local store finds it made
    (:func:`local_store`) unless ``store`` is false."""
    from flopsweep.cli.flopsweep import main

    tracking = [a for a in args if a.startswith(("tracking=", "tracking.dir=", "tracking.uri="))]
    default = tracking in ([], ["tracking=local"]) and "MLFLOW_TRACKING_URI" not in {**os.environ, **(env or {})}
    if store and default:
        local_store(Path(cwd) / "outputs")
    return run_main(main, *args, cwd=cwd, env=env)


_TEMPLATE: list[Path] = []


def local_store(folder: Path) -> Path:
    """``folder/mlflow.db``, an empty local MLflow store as flopsweep makes one (MLflow's schema, WAL journal), copied
    from one made once per test process: making MLflow's schema costs most of a second of CPU
    (``benchmarks/bench_store_creation.py``), paid by each test that logs otherwise. Store creation itself is tested
    through the commands run in a new interpreter (:func:`run_cli`), which make their own. An existing store is left
    as it is."""
    import shutil
    import sqlite3
    import tempfile

    path = folder / "mlflow.db"
    if path.exists():
        return path
    if not _TEMPLATE:
        from flopsweep.sinks.store import mlflow_client

        template = Path(tempfile.mkdtemp(prefix="flopsweep-store-")) / "mlflow.db"
        mlflow_client(f"sqlite:///{template}").search_experiments()  # MLflow makes its schema on first use
        with contextlib.closing(sqlite3.connect(template)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _TEMPLATE.append(template)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[0], path)
    return path


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@contextlib.contextmanager
def other_work(processes: int):
    """``processes`` other processes spinning a core each while the block runs: a machine loaded for real."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_results(work: Path) -> dict[Path, dict]:
    """A sweep's ``result.json`` by job folder; one caught half written is left out."""
    found = {}
    for path in (work / "outputs" / "sweeps").glob("*/*/*/result.json"):
        try:
            found[path.parent] = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            pass
    return found


# --- independent checks on the formula registry -----------------------------------------------------------------

aten = torch.ops.aten


class MatmulFlops(TorchDispatchMode):
    """Matmul-class FLOPs (multiply-add = 2) of the aten ops that reach the dispatcher: 2*M*K*N for the matrix
    products, C_in/groups*kh*kw multiply-adds per convolution output, and QK^T plus AV (4*B*H*Sq*Sk*hd) for the
    CPU's fused attention kernel; any other attention kernel fails the test rather than go uncounted. A few matmul
    rules written again, for the family tests."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.fused_attention_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten.mm, aten.bmm):
            a, b = args[0], args[1]
        elif packet in (aten.addmm, aten.baddbmm):
            a, b = args[1], args[2]
        elif packet is aten.convolution:
            self.flops += 2 * out.numel() * math.prod(args[1].shape[1:])
            return out
        elif packet is aten._scaled_dot_product_flash_attention_for_cpu:
            q, k = args[0], args[1]
            batch, heads, q_len, head_dim = q.shape
            self.flops += 4 * batch * heads * q_len * k.shape[-2] * head_dim
            self.fused_attention_calls += 1
            return out
        else:
            assert "scaled_dot_product" not in packet.__name__, f"attention kernel not counted: {func}"
            return out
        self.flops += 2 * a.shape[:-1].numel() * a.shape[-1] * b.shape[-1]
        return out


class SdpaCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F_.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def preset(name: str, *overrides: str, size: int = 1):
    """A preset's resolved model config and batch shape, composed for meta with ``batch.size=size``."""
    from flopsweep.config.resolve import resolve

    spec = resolve(compose_config(f"model={name}", "device=meta", f"batch.size={size}", *overrides))
    return spec.model, spec.batch


def built(family, cfg, device: str) -> torch.nn.Module:
    """A family module's ``Model(cfg)``, made on ``device``."""
    with torch.device(device):
        return family.Model(cfg)


def assert_closed_form_is_the_count(family, cfg, batch) -> None:
    """A family's closed form (``analytic_forward_flops``) equals its forward's matmul FLOPs counted on meta, every
    attention of its ``n_layer`` layers through ``F.scaled_dot_product_attention``."""
    cfg.validate(batch)
    model = built(family, cfg, "meta")
    with SdpaCalls() as sdpa, MatmulFlops() as counted:
        model(**family.example_inputs(cfg, batch, "meta"))
    assert sdpa.calls == cfg.n_layer
    assert counted.flops == family.analytic_forward_flops(cfg, batch)


# --- a pretend GPU, for the fault tests ---------------------------------------------------------------------------

F = 64  # PretendGPU's width: weights F*F + F floats, a batch of B samples is B*F floats

BUILT_ON: list[str] = []              # the device type of every PretendGPU built, in order
ALIVE: list[weakref.ref] = []         # every PretendGPU built, weakly


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, capacity):
        ctx.capacity = capacity
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if grad.device.type != "meta":
            _allocate(grad.numel() * grad.element_size(), ctx.capacity)
        return grad, None


def _allocate(need: int, capacity: int) -> None:
    if need > capacity:
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {need / 2**20:.2f} MiB. GPU 0 has a total capacity of "
            f"{capacity / 2**20:.2f} MiB of which 0 bytes is free (a pretend GPU)")


class PretendGPU(nn.Module):
    """``nn.Linear(features, features)`` on a pretend GPU of ``capacity_mib``. Off meta (meta allocates nothing) the
    allocation at ``at`` raises ``torch.OutOfMemoryError`` if it needs more than the capacity: ``build`` the
    weights, ``forward`` the output of every forward pass, ``backward`` the gradient flowing back, ``time`` the
    output of a forward pass after the first (the counted step fits, a timed one does not)."""

    def __init__(self, features: int = F, capacity_mib: float = 1024.0, at: str = "forward"):
        super().__init__()
        self.linear = nn.Linear(features, features)
        self.capacity, self.at, self.forwards = int(capacity_mib * 2**20), at, 0
        BUILT_ON.append(self.linear.weight.device.type)
        ALIVE.append(weakref.ref(self))
        if at == "build" and self.linear.weight.device.type != "meta":
            _allocate(sum(p.numel() * p.element_size() for p in self.parameters()), self.capacity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":
            self.forwards += 1
            if self.at == "forward" or (self.at == "time" and self.forwards > 1):
                _allocate(x.numel() * x.element_size(), self.capacity)
        if self.at == "backward":
            x = _FailingBackward.apply(x.requires_grad_(True), self.capacity)
        return self.linear(x)


def custom_model(target: str, inputs: str, loss: str = "output", **kwargs) -> list[str]:
    """The overrides that make ``model=custom`` build ``target(**kwargs)`` on ``inputs``; ``loss=output``: the mean
    of what it returns."""
    return ["model=custom", f"model._target_={target}", f"model.inputs={inputs}", f"model.loss={loss}",
            *[f"+model.{k}={v}" for k, v in kwargs.items()], "tracking=none"]


class LabelledNet(nn.Module):
    """A model as Hugging Face writes them: its inputs by keyword, labels among them, its loss in a dict."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.proj = nn.Linear(features, classes)

    def forward(self, labels: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F_.cross_entropy(self.proj(x), labels), "logits": self.proj(x)}


class LogitsOnly(nn.Module):
    """A model that returns its logits in a dict, no loss: ``model.loss=mse`` takes them."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ids": torch.zeros(x.shape[0], dtype=torch.long, device=x.device), "logits": self.proj(x)}


def pretend_gpu(features: int = F, **kwargs) -> list[str]:
    return custom_model("tests.helpers.PretendGPU", f"[{{name:x,shape:[batch,{features}]}}]", features=features,
                        **kwargs)


def sgd_peak(batch: int, f: int = F) -> int:
    """The most bytes alive in one step of PretendGPU with plain SGD, by hand (float32): the weights (f*f + f) and
    the batch x (B*f) are there before; forward makes the output (B*f) and the loss (1), freed as backward runs;
    backward makes the loss's gradient (1) and the output's (B*f, alive while the weight's (f*f) and the bias's
    (f) gradients are made); SGD updates in place. The sum of the static sizes and the saved activations
    (size/train_peak_bytes: 2(f*f + f) + B*f, x being what addmm saves) is smaller."""
    return 4 * (2 * (f * f + f) + 2 * batch * f + 2)


class SwallowsTheInterrupt(nn.Module):
    """A model whose forward is cut by a signal (SIGTERM, or ``signal_name``) and turns the interrupt into an error of
    its own, as library code with a ``finally`` that reads an unset name does."""

    def __init__(self, signal_name: str = "SIGTERM"):
        super().__init__()
        self.signal_name = signal_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import signal
        import time

        try:
            os.kill(os.getpid(), signal.Signals[self.signal_name])
            time.sleep(5)
        except KeyboardInterrupt:
            raise RuntimeError("the library's own error") from None
        return x.sum()


class InterruptedWhenTimed(nn.Module):
    """A model whose second forward on the CPU (the first the timing runs, after the counted one) is cut by SIGINT,
    as Ctrl-C in a terminal cuts a long timing."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import signal
        import time

        if x.device.type == "cpu":
            self.calls += 1
            if self.calls == 2:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
        return self.linear(x).sum()


def shell_commands(body: str) -> list[str]:
    """A shell block's commands as a paste runs them: continued lines joined, trailing comments cut."""
    lines = (line.split("  #")[0].strip() for line in body.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class Slow(nn.Module):
    """A model whose forward takes ``seconds`` (a sleep a signal can cut): a job that is still running when a test
    interrupts, preempts or times it out."""

    def __init__(self, seconds: float, started: str = ""):
        super().__init__()
        self.seconds = seconds
        self.started = started  # a folder where the forward, as it starts, leaves a file named by its batch size
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        if self.started:
            (Path(self.started) / str(x.shape[0])).touch()
        time.sleep(self.seconds)
        return self.linear(x)


class BugInForward(nn.Module):
    """A model with a bug of its own in its forward, a line below its linear layer."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        raise RuntimeError(f"my own bug ({tuple(y.shape)})")


class InterruptedInACallback(nn.Module):
    """A model whose forward gets a SIGINT while Python runs a weak-reference callback (as measure/size.py's are when a
    tensor is freed): Python can only print an interrupt raised there ("Exception ignored in ...")."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import signal
        import weakref

        def freed(_: object) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100_000):  # the signal's handler runs here, inside the callback
                pass

        class Freed:
            pass

        gone = Freed()
        kept = weakref.ref(gone, freed)
        del gone
        assert kept() is None
        for _ in range(2_000_000):  # where an interrupt delivered again can be raised
            pass
        return self.linear(x).sum()
