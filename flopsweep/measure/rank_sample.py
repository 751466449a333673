"""A pipeline stage of many identical layers counted from two small samples of it.

A rank's count grows by the same amount with each identical layer it holds: its FLOPs, collectives, parameters,
saved activations and each memory peak (:class:`~flopsweep.measure.rank_memory.RankMemory`) by one layer's, its op
trace by one layer's ops, in the same place. So a stage of ``k`` layers is counted twice, with ``a`` and ``a + 1``
of its layers (3 and 4), and the rest follows: ``count(k) = count(a) + (k - a) * (count(a + 1) - count(a))``. Three
layers at least in the smaller sample: under ZeRO-3, FSDP's backward prefetches the next layer's gather, and the
backward's peak takes its steady place from the third layer on. Each sample costs a few layers however many the
stage holds, which is what makes a layout search of a 70B model a matter of minutes (docs/parallel.md, "What runs").

Layers count as identical when their modules, parameters, buffers and plain settings are (a layer's index aside):
a model whose layers differ (sliding-window layers between global ones, dense layers before MoE ones) is counted
whole, as is a trace the samples do not explain (:func:`grown` returns None).
"""

from __future__ import annotations

from array import array
from difflib import SequenceMatcher
from dataclasses import fields, is_dataclass, replace
from typing import Any, Optional, Sequence

from torch import nn

from flopsweep.measure.ops import OpSig, OpTrace

SMALL = 3  # layers of the first chunk in the smaller sample

_NUMERIC_SIG = ("matmul", "elementwise", "bytes", "tensors", "allocated")
_PLAIN = (bool, int, float, str, type(None))
_PER_LAYER = {"layer_idx", "layer_id", "layer_number", "training"}


def alike(layers: Sequence[nn.Module]) -> bool:
    """Whether ``layers`` are identical but for their index (see the module's docstring)."""
    first = _signature(layers[0]) if layers else None
    return all(_signature(layer) == first for layer in layers[1:])


def _signature(layer: nn.Module) -> tuple:
    out = []
    for name, module in layer.named_modules():
        settings = tuple(sorted((k, v) for k, v in vars(module).items()
                                if not k.startswith("_") and k not in _PER_LAYER and isinstance(v, _PLAIN)))
        tensors = tuple((n, tuple(t.shape), t.dtype, t.requires_grad)
                        for n, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
                        if t is not None)
        out.append((name, type(module).__qualname__, settings, tensors))
    return tuple(out)


def samples(chunks: list[list[int]]) -> Optional[tuple[list[list[int]], list[list[int]], int]]:
    """The two samples of a stage's ``chunks`` (lists of layer indices) and how many times the layer they differ by
    is added to the smaller to make the stage; None where sampling counts no fewer layers than the whole, or the
    stage interleaves chunks (``vpp > 1``: its backward's memory peaks would not keep their places)."""
    if len(chunks) > 1 or len(chunks[0]) <= SMALL + 1:
        return None
    return [chunks[0][:SMALL]], [chunks[0][:SMALL + 1]], len(chunks[0]) - SMALL


def grown(a: Any, b: Any, n: int) -> Any:
    """``a + n * (b - a)`` over a count's numbers: numbers, dictionaries (a key missing on one side is zero there),
    dataclasses field by field, op traces (:func:`grown_trace`); anything else must be equal on both sides. None
    where the two do not differ by a multiple of one layer."""
    value = _grown(a, b, n)
    return None if value is _DIFFER else value


_DIFFER = object()


def _grown(a: Any, b: Any, n: int) -> Any:
    if isinstance(a, OpTrace):
        trace = grown_trace(a, b, n)
        return _DIFFER if trace is None else trace
    if isinstance(a, bool) or not isinstance(a, (int, float, dict)) and not is_dataclass(a):
        return a if a == b else _DIFFER
    if isinstance(a, (int, float)):
        return a + n * (b - a)
    if isinstance(a, dict):
        out = {}
        for key in [*a, *(k for k in b if k not in a)]:
            x, y = a.get(key), b.get(key)
            x = _zero(y) if x is None else x
            y = _zero(x) if y is None else y
            value = _grown(x, y, n)
            if value is _DIFFER:
                return _DIFFER
            out[key] = value
        return out
    values = {}
    for f in fields(a):
        value = _grown(getattr(a, f.name), getattr(b, f.name), n)
        if value is _DIFFER:
            return _DIFFER
        values[f.name] = value
    return replace(a, **values)


def _zero(like: Any) -> Any:
    return type(like)() if is_dataclass(like) else type(like)(0)


def grown_trace(a: OpTrace, b: OpTrace, n: int) -> Optional[OpTrace]:
    """The trace of ``a`` with ``n`` more layers, each phase as :func:`_grown_ops` makes it."""
    out = OpTrace()
    index: dict[OpSig, int] = {}
    for phase in [*a.phases, *(p for p in b.phases if p not in a.phases)]:
        ops = _grown_ops(a.ops(phase), b.ops(phase), n)
        if ops is None:
            return None
        calls = out.phases[phase] = array("i")
        for sig in ops:
            if sig not in index:
                index[sig] = len(out.sigs)
                out.sigs.append(sig)
            calls.append(index[sig])
    phases = [*a.module_calls, *(p for p in b.module_calls if p not in a.module_calls)]
    out.module_calls = {p: grown(a.module_calls.get(p, 0), b.module_calls.get(p, 0), n) for p in phases}
    return out


def _grown_ops(a: list[OpSig], b: list[OpSig], n: int) -> Optional[list[OpSig]]:
    """A phase's ops with ``n`` more layers. Where ``b`` is ``a`` with one run of ops inserted (one layer's, found
    as what lies between their longest common start and the rest of ``a``), that run ``n`` times in its place. Else
    ``b`` aligned with ``a`` (:func:`_aligned`)."""
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    rest = len(a) - start
    if len(b) > len(a) and b[len(b) - rest:] == a[start:]:
        return [*a[:start], *b[start:len(b) - rest] * n, *a[start:]]
    return _aligned(a, b, n, exact=True)


def _aligned(a: list[OpSig], b: list[OpSig], n: int, exact: bool) -> Optional[list[OpSig]]:
    """``b`` aligned with ``a`` (the longest runs they share, as ``difflib`` finds them): what it inserts in several
    places (the parameters of two optimizer groups) repeated ``n`` times in each; ops it replaces by ones differing
    only in their numbers (an optimizer's ``_foreach`` op over one layer's tensors more) grown in them, found among
    insertions by aligning the two runs again on the ops' kinds alone."""
    keys = (lambda ops: ops) if exact else (lambda ops: [_kind(sig) for sig in ops])
    out: list[OpSig] = []
    for tag, i, j, k, m in SequenceMatcher(None, keys(a), keys(b), autojunk=False).get_opcodes():
        if tag == "insert":
            out += b[k:m] * n
            continue
        if tag == "delete" or tag == "replace" and not exact:
            return None
        if tag == "equal" and exact:
            out += a[i:j]
            continue
        part = [_grown_sig(x, y, n) for x, y in zip(a[i:j], b[k:m])] if j - i == m - k else [None]
        if None in part and exact:
            part = _aligned(a[i:j], b[k:m], n, exact=False) or [None]
        if None in part:
            return None
        out += part
    return out


def _kind(sig: OpSig) -> OpSig:
    return replace(sig, **{f: 0 for f in _NUMERIC_SIG})


def _grown_sig(a: OpSig, b: OpSig, n: int) -> Optional[OpSig]:
    if replace(a, **{f: getattr(b, f) for f in _NUMERIC_SIG}) != b:
        return None
    return replace(a, **{f: getattr(a, f) + n * (getattr(b, f) - getattr(a, f)) for f in _NUMERIC_SIG})
