"""Calibrate the part this process runs on: matmuls over a grid of shapes and dtypes, attention (SDPA) over shapes,
elementwise kernels over sizes (memory bandwidth), and the cost of launching an op (eager from Python, from the
autograd engine, a view, a kernel in a CUDA graph). The result is a :class:`Calibration` of raw points; its curves
are fitted when read. Took 20 to 35 s on a 2-core CPU, a minute on an H100."""

from __future__ import annotations

import datetime
import itertools
import statistics
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from flopsweep.core.hardware import accelerator as lookup_accelerator
from flopsweep.core.progress import throttled
from flopsweep.measure.calibration import Calibration
from flopsweep.measure.timing import device_name

# (dims for M, K and N; the most FLOPs of one point), by device kind and dtype; points above the cap are left to the
# fitted curve, which saturates
MATMUL_GRID = {
    "cpu": {"float32": ((16, 64, 256, 1024, 4096), 2 ** 34), "bfloat16": ((16, 256, 4096), 2 ** 31)},
    "cuda": {"bfloat16": ((16, 64, 256, 1024, 4096, 16384), 2 ** 43),
             "float16": ((16, 256, 1024, 4096, 16384), 2 ** 43),
             "float32": ((16, 256, 1024, 4096, 16384), 2 ** 40)},
}
# (batch x heads, sequence lengths, head dims, the most FLOPs of one point's forward)
UNALIGNED_DTYPES = ("bfloat16", "float16")
ATTENTION_GRID = {"cpu": ((8, 32, 128), (64, 256, 1024), (64,), 2 ** 34),
                  "cuda": ((16, 128, 512), (128, 512, 2048, 8192), (64, 128), 2 ** 42)}
MEMORY_SIZES = {"cpu": [2 ** p for p in range(10, 27, 2)], "cuda": [2 ** p for p in range(10, 31, 2)]}  # per tensor


class _Timer:
    """Seconds of one call of ``fn`` on the device: a warm-up call, then repeats until ``budget`` seconds (at least 3,
    at most 200); the median of 3 such batches. On a GPU the call is captured in a CUDA graph and replayed between
    events, so that the device's time is measured, not the host's launches (counted apart); eager where it does not
    capture."""

    def __init__(self, device: str, budget: float):
        self.cuda = device.startswith("cuda")
        self.budget = budget

    def __call__(self, fn: Callable[[], object], capture: bool = True) -> float:
        if self.cuda and capture:  # never an op that draws random numbers: a failed capture leaves the RNG broken
            fn = _captured(fn) or fn
        fn()
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        once = max(time.perf_counter() - start, 1e-7)
        reps = int(min(200, max(3, self.budget / 3 / once)))
        batches = []
        for _ in range(3):
            batches.append(self._batch(fn, reps) / reps)
        return statistics.median(batches)

    def _batch(self, fn: Callable[[], object], reps: int) -> float:
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1000.0
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def calibrate(device: str = "cpu", *, quick: bool = False,
              tick: Optional[Callable[[str], None]] = None) -> Calibration:
    """Measure this machine's ``device``; ``quick`` takes a coarse grid (seconds, for tests)."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    timer = _Timer(device, 0.01 if quick else 0.05)
    say = tick or (lambda _: None)
    name = device_name(device)
    cal = Calibration(part=name, device=kind, torch=torch.__version__,
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      threads=torch.get_num_threads() if kind == "cpu" else None)
    cal.graph_timed = kind == "cuda"
    accelerator = lookup_accelerator(name) if kind == "cuda" else None
    if accelerator is not None:
        cal.peak = {d: accelerator.peak(d) for d in accelerator.peak_tflops if accelerator.peak(d)}
        cal.sources["peak"] = accelerator.source
    say("launch costs")
    _launches(cal, device, timer)
    say("memory bandwidth")
    sizes = MEMORY_SIZES[kind][::2] if quick else MEMORY_SIZES[kind]
    cal.memory, cal.memory_inplace = _memory(device, sizes, timer)
    say("norms, activations, pooling, reductions")
    cal.memory_factors = _op_factors(device, cal, timer, shrink=16 if quick else 1)
    for dtype, (dims, cap) in list(MATMUL_GRID[kind].items())[:1 if quick else None]:
        say(f"matmuls, {dtype}")
        grid = dims[::2] if quick else dims
        cal.matmul[dtype] = _matmuls(device, getattr(torch, dtype), grid, cap // (64 if quick else 1), timer,
                                     paced(say, f"matmuls, {dtype}"))
        if kind == "cuda" and dtype in UNALIGNED_DTYPES:  # tensor cores want dimensions a multiple of 8
            cal.matmul_unaligned[dtype] = _matmuls(device, getattr(torch, dtype), grid[2:], cap, timer,
                                                   paced(say, f"odd-width matmuls, {dtype}"), odd=True)
        say(f"attention, {dtype}")
        cal.attention[dtype] = _attention(device, getattr(torch, dtype), ATTENTION_GRID[kind], quick, timer,
                                          paced(say, f"attention, {dtype}"))
    cal.sources["measured"] = f"flopsweep-calibrate on {name} ({kind}), torch {torch.__version__}"
    return cal


def _captured(fn: Callable[[], object]) -> Optional[Callable[[], object]]:
    """``fn`` as a CUDA graph's replay (warmed up on a side stream first, as capture needs), or None."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay
    except RuntimeError:
        torch.cuda.synchronize()
        return None


def _launches(cal: Calibration, device: str, timer: _Timer) -> None:
    """Host-side costs per op: measured over many calls of tiny tensors, so that the device never is the bound."""
    x = torch.ones(1, device=device)
    host = _Timer("cpu", timer.budget)  # wall time of issuing, the device left to catch up after each batch
    cal.launch_s = host(lambda: torch.add(x, x))
    cal.view_s = host(lambda: x.view(-1))
    module = torch.nn.Identity()
    cal.module_s = host(lambda: module(x))
    leaf = torch.ones(1, device=device, requires_grad=True)
    y = leaf
    for _ in range(64):  # a chain of 64 nodes, each one kernel in backward
        y = y * 1.0
    cal.launch_backward_s = host(lambda: torch.autograd.grad(y, leaf, retain_graph=True)) / 64
    if device.startswith("cuda"):
        cal.graph_launch_s = _graph_launch(device)
        torch.cuda.synchronize()


def _graph_launch(device: str, n: int = 200) -> Optional[float]:
    """Seconds a tiny kernel takes on the device when replayed in a CUDA graph."""
    try:
        x = torch.ones(1, device=device)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(3):
                x.add_(1)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                x.add_(1)
        return _Timer(device, 0.05)(graph.replay) / n
    except RuntimeError:  # no graphs on this part or driver
        return None


def _memory(device: str, sizes: list[int], timer: _Timer) -> tuple[list[list[float]], list[list[float]]]:
    """An add over each size: making a new output each call, as a model's ops make theirs (on a CPU a large one is
    new pages from the kernel), and in place, as an optimizer's updates run."""
    memory, inplace = [], []
    for size in sizes:
        n = max(1, size // 4)
        a, b = torch.ones(n, device=device), torch.ones(n, device=device)
        memory.append([3 * 4 * n, timer(lambda: torch.add(a, b))])
        inplace.append([3 * 4 * n, timer(lambda: a.add_(b))])
        del a, b
    return memory, inplace


# memory-class ops that run slower than an add of their bytes: each timed forward, and backward through autograd, on
# an input of 16 MiB (channels-first images for the CNN ops), as (trace op names, the input's shape, the function,
# its forward's and backward's bytes in inputs: read + written, as measure/ops.py counts them)
OP_CASES = {
    "layer_norm": (("aten.native_layer_norm", "aten.native_layer_norm_backward"), (4096, 1024),
                   lambda x: F.layer_norm(x, x.shape[-1:]), 2, 3, 1),
    "batch_norm": (("aten.native_batch_norm", "aten.native_batch_norm_backward"), (16, 64, 64, 64),
                   lambda x: F.batch_norm(x, None, None, training=True), 2, 3, 1),
    "max_pool": (("aten.max_pool2d_with_indices", "aten.max_pool2d_with_indices_backward"), (16, 64, 64, 64),
                 lambda x: F.max_pool2d(x, 3, 2, 1), 1 + 3 / 4, 1 + 3 / 4, 3 / 4),  # out, int64 indices: a quarter
    "relu": (("aten.relu", "aten.threshold_backward"), (4096, 1024), F.relu, 2, 3, 1),
    "gelu": (("aten.gelu", "aten.gelu_backward"), (4096, 1024), F.gelu, 2, 3, 1),
    "silu": (("aten.silu", "aten.silu_backward"), (4096, 1024), F.silu, 2, 3, 1),
    "softmax": (("aten._softmax", "aten._softmax_backward_data"), (4096, 1024), lambda x: x.softmax(-1), 2, 3, 1),
    "log_softmax": (("aten._log_softmax", "aten._log_softmax_backward_data"), (4096, 1024),
                    lambda x: x.log_softmax(-1), 2, 3, 1),
    "sum": (("aten.sum", None), (4096, 1024), lambda x: x.sum(0), 1, 0, 0),
}


def _op_factors(device: str, cal: Calibration, timer: _Timer, shrink: int = 1) -> dict[str, float]:
    """How many times a memory-bound body of the same bytes (calibration.memory_time) each op of :data:`OP_CASES`
    takes (at least a half), by trace name; a backward makes its input's gradient."""
    factors = {}
    for (forward_op, backward_op), shape, fn, forward_bytes, backward_bytes, allocated in OP_CASES.values():
        x = torch.randn(shape[0] // shrink, *shape[1:], device=device, requires_grad=True)
        nbytes = x.numel() * 4
        forward = timer(lambda: fn(x))
        reference = cal.memory_time(forward_bytes * nbytes, allocated * nbytes)
        factors[forward_op] = max(0.5, (forward - cal.in_points) / reference)
        if backward_op is not None:
            out = fn(x)
            grad = torch.ones_like(out)
            backward = timer(lambda: torch.autograd.grad(out, x, grad, retain_graph=True))  # no RNG: capturable
            body = backward - (cal.launch_backward_s if not cal.graph_timed else 0.0)
            factors[backward_op] = max(0.5, body / cal.memory_time(backward_bytes * nbytes, nbytes))
        del x
    factors["aten.mean"] = factors["aten.sum"]
    return factors


def paced(say: Callable[[str], None], what: str, every: float = 5.0) -> Callable[[int, int], None]:
    """``tick(done, total)`` that says how far ``what`` is, every ``every`` seconds at most (a phase of a CPU's
    calibration ran 20 s without a word)."""
    line = throttled(say, every)
    return lambda done, total: line(f"{what}: {done} of {total} shapes")


def _matmuls(device: str, dtype: torch.dtype, dims: tuple[int, ...], cap: int, timer: _Timer,
             tick: Callable[[int, int], None], odd: bool = False) -> list[list[float]]:
    """The grid's GEMMs; ``odd``: N one more (an odd width, as GPT-2's 50257-word head)."""
    rows = []
    shapes = [(m, k, n + int(odd)) for m, k, n in itertools.product(dims, repeat=3) if 2 * m * k * (n + odd) <= cap]
    for done, (m, k, n) in enumerate(shapes, 1):
        tick(done, len(shapes))
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        rows.append([m, k, n, timer(lambda: torch.mm(a, b))])
        del a, b
    return rows


def _attention(device: str, dtype: torch.dtype, grid: tuple, quick: bool, timer: _Timer,
               tick: Callable[[int, int], None]) -> list[list[float]]:
    heads, lengths, dims, cap = grid
    if quick:
        heads, lengths, dims = heads[:2], lengths[:2], dims[:1]
    rows = []
    shapes = [shape for shape in itertools.product(heads, lengths, dims, (0, 1))
              if 4 * shape[0] * shape[1] ** 2 * shape[2] <= cap]
    for done, (bh, s, d, causal) in enumerate(shapes, 1):
        tick(done, len(shapes))
        q, k, v = (torch.randn(1, bh, s, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        forward = timer(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)), capture=False)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
        grad = torch.ones_like(out)

        def both() -> None:
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)), (q, k, v), grad)

        rows.append([bh, s, s, d, causal, forward, max(timer(both, capture=False) - forward, forward / 10)])
        del q, k, v, out, grad
    return rows
