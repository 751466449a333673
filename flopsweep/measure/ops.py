"""What each counted op costs a device, beside its FLOPs: the bytes it reads and writes, its class and, for a matmul or
an attention kernel, its shape; and the step's ops in the order they ran, phase by phase (:class:`OpTrace`).

A kind of call (an op with its tensors' shapes and dtypes) is described once, as an :class:`OpSig`, when it is first
seen; a step's trace is a list of those descriptions' numbers per phase, so a 96-layer model costs the counter a tuple
and a dictionary look-up per op, and its trace a few hundred kinds. Everything comes from shapes and dtypes, so a
count on ``meta`` has the same trace as on the CPU.

Classes (what bounds an op's time, :mod:`flopsweep.measure.predict`):

- ``matmul``: mm, addmm, bmm, baddbmm, grouped and convolution matmuls (a convolution as its implicit GEMM: M = output
  positions x batch, K = input channels per group x kernel, N = output channels per group), the SVD;
- ``attention`` and ``attention_backward``: the fused scaled-dot-product kernels, and FlexAttention's (its shape the
  keys each query computes on average, over its block mask's tiles);
- ``memory``: every other op that touches its tensors' bytes (elementwise, reductions, copies, gathers, the optimizer's
  updates, fills);
- ``view``: ops that make a view or only allocate (``empty``): dispatched, no bytes moved.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from flopsweep.measure._torch import FLEX_ATTENTION, FLEX_ATTENTION_BACKWARD, is_higher_order, op_schema
from flopsweep.measure.formulas import OpCost

MATMUL, ATTENTION, ATTENTION_BACKWARD, MEMORY, VIEW = "matmul", "attention", "attention_backward", "memory", "view"


@dataclass(frozen=True)
class OpSig:
    """One kind of call: its op, class, FLOPs (matmul-class and elementwise), bytes read + written, the dtype it
    computes in, its shape where its class has one (matmul: (groups, M, K, N); attention: (batch x heads, Sq, Sk, d,
    causal)), and the tensors of a ``_foreach_`` op's first list (1 for any other op)."""

    op: str
    kind: str
    matmul: int
    elementwise: int
    bytes: int
    dtype: str
    dims: tuple = ()
    tensors: int = 1
    inplace: bool = False  # writes into its first argument: no new output to allocate
    allocated: int = 0     # bytes of the new outputs it makes
    aligned: bool = True   # a matmul whose operands' and output's rows all start at a multiple of 8 elements


@dataclass
class OpTrace:
    """The ops of a step in the order they ran: ``phases[name]`` holds indices into ``sigs``."""

    sigs: list[OpSig] = field(default_factory=list)
    phases: dict[str, array] = field(default_factory=dict)
    module_calls: dict[str, int] = field(default_factory=dict)  # nn.Module calls per phase (the host's Python)
    _index: dict[tuple, int] = field(default_factory=dict, repr=False)

    def add(self, phase: str, func: Any, args: tuple, kwargs: dict, out: Any, cost: Optional[OpCost]) -> None:
        key = (func, cost, _shapes(args), _shapes(kwargs.values()), _shapes((out,)),
               _flags(args, kwargs) if getattr(func, "overloadpacket", None) in ATTENTION_ALL else None)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.sigs)
            self.sigs.append(signature(func, args, kwargs, out, cost))
        calls = self.phases.get(phase)
        if calls is None:
            calls = self.phases[phase] = array("i")
        calls.append(index)

    def ops(self, phase: str) -> list[OpSig]:
        return [self.sigs[i] for i in self.phases.get(phase, ())]


def _shapes(values) -> tuple:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append((v.shape, v.dtype))
        elif isinstance(v, (list, tuple)):
            for x in v:
                if isinstance(x, torch.Tensor):
                    out.append((x.shape, x.dtype))
    return tuple(out)


def _flags(args: tuple, kwargs: dict) -> tuple:
    """An attention call's plain arguments (its mask flag above all): two calls of one shape may differ by them."""
    return tuple(a for a in args if isinstance(a, (bool, int, float))) + tuple(sorted(
        (k, v) for k, v in kwargs.items() if isinstance(v, (bool, int, float))))


def _tensors(values) -> list[torch.Tensor]:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(x for x in v if isinstance(x, torch.Tensor))
    return out


def _bytes(t: torch.Tensor) -> int:
    """The bytes a kernel touches reading or writing ``t``: its elements, or its storage where it is smaller (an
    expanded, broadcast view reads its few values once)."""
    whole = t.numel() * t.element_size()
    try:
        return min(whole, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):  # a tensor subclass without storage
        return whole


aten = torch.ops.aten
SCALED_MM_OPS = {aten._scaled_mm, aten._scaled_mm_v2}  # low-precision (FP8) matmuls: A [M, K] B [K, N], scaled
GROUPED_MM_OPS = {aten._grouped_mm, aten._scaled_grouped_mm}
GROUPED_MM_NAMES = frozenset(str(op) for op in GROUPED_MM_OPS)  # as a trace names them: HF's routed experts' matmuls
MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution, aten._convolution,
              aten.convolution_backward, aten._linalg_svd, *SCALED_MM_OPS, *GROUPED_MM_OPS}
ATTENTION_OPS = {aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
                 aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention}
ATTENTION_BACKWARD_OPS = {getattr(aten, f"{op.__name__}_backward") for op in ATTENTION_OPS}
ATTENTION_ALL = ATTENTION_OPS | ATTENTION_BACKWARD_OPS
FLEX_OPS = (FLEX_ATTENTION, FLEX_ATTENTION_BACKWARD)  # higher-order: one fused kernel each, on their block mask's tiles
VIEW_OPS = {aten._unsafe_view, aten._reshape_alias, aten.lift_fresh, aten.empty, aten.empty_like, aten.empty_strided,
            aten.new_empty, aten.new_empty_strided, aten._local_scalar_dense, aten.detach, aten.alias,
            aten._fused_sdp_choice}
# read only the rows they return
GATHER_OPS = {aten.embedding, aten.index_select, aten.gather, aten.index, aten.nll_loss_forward}


def op_name(func: Any) -> str:
    """``aten.mm``: an op's name without its overload; ``higher_order.flex_attention`` for a higher-order op."""
    return f"higher_order.{func.name()}" if is_higher_order(func) else str(func.overloadpacket)


def signature(func: Any, args: tuple, kwargs: dict, out: Any, cost: Optional[OpCost]) -> OpSig:
    matmul, elementwise = (cost.matmul, cost.elementwise) if cost is not None else (0, 0)
    ins, outs = _tensors(args) + _tensors(kwargs.values()), _tensors((out,))
    dtype = _dtype_name((ins or outs or [torch.empty(0)])[0].dtype)
    name = op_name(func)
    if func in FLEX_OPS:  # as the dense kernel over the keys each query computes on average (its tiles' density)
        kind = ATTENTION if func is FLEX_ATTENTION else ATTENTION_BACKWARD
        q, v = args[0], args[2]
        heads, sq = math.prod(q.shape[:-2]), q.shape[-2]
        keys = matmul / ((2 if kind == ATTENTION_BACKWARD else 1) * 2 * heads * sq * (q.shape[-1] + v.shape[-1]))
        return OpSig(name, kind, matmul, elementwise, sum(map(_bytes, ins + outs)), dtype,
                     (heads, sq, keys, q.shape[-1], 0))
    packet = func.overloadpacket
    if packet in MATMUL_OPS:
        return OpSig(name, MATMUL, matmul, elementwise, sum(map(_bytes, ins + outs)), dtype,
                     _matmul_dims(packet, args, out), aligned=all(_rows_aligned(t) for t in ins + outs))
    if packet in ATTENTION_OPS or packet in ATTENTION_BACKWARD_OPS:
        kind = ATTENTION if packet in ATTENTION_OPS else ATTENTION_BACKWARD
        q, k = (args[0], args[1]) if kind == ATTENTION else (args[1], args[2])  # a backward's first is grad_out
        causal = bool(kwargs.get("is_causal", _causal_arg(func, args)))
        dims = (math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2], q.shape[-1], int(causal))
        return OpSig(name, kind, matmul, elementwise, sum(map(_bytes, ins + outs)), dtype, dims)
    if packet in VIEW_OPS or func.namespace == "profiler" or _is_view(func):
        return OpSig(name, VIEW, matmul, elementwise, 0, dtype)
    if packet is aten.nll_loss_backward:  # a scatter of one value a row into the zeroed gradient (zeros_like, apart)
        moved = 2 * sum(_bytes(t) for t in ins if not t.is_floating_point())
    elif packet in GATHER_OPS:
        moved = 2 * sum(map(_bytes, outs)) + sum(_bytes(t) for t in ins if not t.is_floating_point())
    elif packet is aten.copy_:
        moved = _bytes(args[0]) + _bytes(args[1])  # written, read (a broadcast source read once)
    else:
        moved = sum(map(_bytes, ins + outs))
        if not outs and _mutates(func):  # an in-place op returning nothing (_foreach_*_): its first argument written
            moved += sum(map(_bytes, _tensors(args[:1])))
    tensors = len(args[0]) if name.startswith("aten._foreach_") and isinstance(args[0], (list, tuple)) else 1
    inplace = _mutates(func)
    return OpSig(name, MEMORY, matmul, elementwise, moved, dtype, (), tensors, inplace,
                 0 if inplace else sum(map(_bytes, outs)))


def _dtype_name(dtype: torch.dtype) -> str:
    """An op's dtype as the calibration names it: ``bfloat16``, ...; every 8-bit float (``float8_e4m3fn``,
    ``float8_e5m2``, their ``fnuz`` kin) is ``fp8``, the hardware table's and the profiles' name for their peak."""
    name = str(dtype).removeprefix("torch.")
    return "fp8" if name.startswith("float8_") else name


def _rows_aligned(t: torch.Tensor) -> bool:
    """Whether a matrix's leading dimension (its larger stride) is a multiple of 8 elements, as 16-bit tensor cores
    want; a vector or a scalar (a bias) always is."""
    if t.dim() < 2:
        return True
    return max(t.stride()[-2:]) % 8 == 0


def _mutates(func: Any) -> bool:
    arguments = op_schema(func).arguments
    return bool(arguments) and arguments[0].alias_info is not None and arguments[0].alias_info.is_write


def _causal_arg(func: Any, args: tuple) -> bool:
    names = [a.name for a in op_schema(func).arguments]
    return bool(args[names.index("is_causal")]) if "is_causal" in names and names.index("is_causal") < len(args) \
        else False


def _is_view(func: Any) -> bool:
    """Whether the op returns a view of an input without writing it (``view``, ``transpose``, ``expand``, ...)."""
    returns = op_schema(func).returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _matmul_dims(packet: Any, args: tuple, out: Any) -> tuple:
    """(groups, M, K, N) of one call, as a GEMM; a convolution as its implicit GEMM."""
    if packet is aten.mm or packet in SCALED_MM_OPS:
        (m, k), n = args[0].shape, args[1].shape[-1]
        return (1, m, k, n)
    if packet is aten.addmm:
        (m, k), n = args[1].shape, args[2].shape[-1]
        return (1, m, k, n)
    if packet in (aten.bmm, aten.baddbmm):
        a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
        return (a.shape[0], a.shape[1], a.shape[2], b.shape[-1])
    if packet in GROUPED_MM_OPS:
        a, b = args[0].shape, args[1].shape
        return (1, a[-2], a[-1], b[-1])
    if packet in (aten.convolution, aten._convolution, aten.convolution_backward):
        backward = packet is aten.convolution_backward
        y, w = (args[0], args[2]) if backward else (out, args[1])  # the output (its gradient), the weight
        groups = args[9] if backward else args[8]
        groups = groups if isinstance(groups, int) and groups > 0 else 1
        return (groups, y.shape[0] * math.prod(y.shape[2:]), math.prod(w.shape[1:]), w.shape[0] // groups)
    if packet is aten._linalg_svd:
        m, n = args[0].shape[-2:]
        return (math.prod(args[0].shape[:-2]), max(m, n), min(m, n), min(m, n))
    return ()
