"""The FLOP formulas, one registry keyed by op (multiply-add = 2); :func:`formula` adds one, for any op.

Why one file (over 300 lines): it is the table of every op flopsweep counts and what each costs; read whole, it is
what one checks an op against (the cost table below, docs/conventions.md). Split by op kind, an op's cost and the
rule that decides between two of its entries would sit in different files.

Two kinds of cost are kept apart:

- **matmul-class** (``mm``, ``addmm``, ``bmm``, ``baddbmm``, convolutions, fused attention): the FLOPs that
  MFU and the closed-form estimates speak of; ``macs = matmul / 2``; also the SVD (GaLore's projections: dense
  linear algebra, by Golub and Van Loan's count);
- **elementwise**: everything else that does arithmetic (norms, softmax, activations, residual adds,
  the optimizer's per-element updates), at a fixed documented cost per element.

Ops that only move memory (views, copies, gathers, factories) cost nothing. An op with arithmetic that
has no entry here is reported as *uncounted* by the counter rather than guessed.

Elementwise costs per element (one FLOP per add, multiply, divide, compare or elementary function):

======================================  ====  ===================================================
op                                      cost  why
======================================  ====  ===================================================
any op tagged ``pointwise`` not below   1     add, mul, div, exp, rsqrt, where, clamp, ...
``addcmul``, ``addcdiv`` (and ``_``)    2     a multiply (or divide) and an add
``lerp`` (and ``lerp_``)                3     ``a + w * (b - a)``
``gelu`` (erf) / ``gelu`` (tanh)        5 / 8 ``x/2 * (1 + erf(x/sqrt 2))``; the tanh form has a cubic
``gelu_backward``                       8/12  the derivative has both the CDF and the density
``silu`` / ``silu_backward``            2 / 5 ``x * sigmoid(x)``
``softplus`` / ``softplus_backward``    5 / 5 ``log(1 + exp(b x)) / b``; its derivative ``sigmoid(b x)``, times the
                                              gradient (Mamba's time steps)
layer norm forward / backward           5/10  mean, centre, variance, normalise, affine (per element)
batch norm forward / backward           5/10  the same, over the batch instead of the features
max pool / its backward                 k-1/1 a max of k values per output / a gradient added per output
avg pool / its backward                 k/1   k - 1 adds and a divide per output / per input element
``histc``                               1     per input element: its bin counted
``index_put`` (accumulating)            1     per value added (placing values is free)
softmax / log-softmax forward           5     max, subtract, exp, sum, divide (or log)
softmax / log-softmax backward          4/3
sum, mean, amax, any and other reductions 1   per *input* element
embedding backward                      1     one add per gradient element scattered
fused attention                         5     per score: scale, max, exp, sum, divide (+1 with a mask)
fused attention backward                8     per score, besides its matmuls
======================================  ====  ===================================================

Fused attention (``scaled_dot_product_attention`` kernels) counts ``QK^T`` and ``PV``: ``4*B*H*Sq*Sk*d``
forward and twice that backward (``dQ, dK, dV, dP``), the convention of PaLM's ``12*L*H*Q*T`` and of
the decomposed (math) path; the extra ``QK^T`` that flash kernels recompute in backward is hardware work
and is not counted. A causal mask keeps the full ``Sq*Sk`` unless the counter is asked to halve it,
then only the unmasked pairs count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from flopsweep.measure import flex
from flopsweep.measure._torch import (FLEX_ATTENTION, FLEX_ATTENTION_BACKWARD, is_higher_order, is_op_packet,
                                       op_schema)

aten = torch.ops.aten


@dataclass(frozen=True)
class OpCost:
    """What one call of an op costs: matmul-class FLOPs and elementwise FLOPs (multiply-add = 2)."""

    matmul: int = 0
    elementwise: int = 0


@dataclass(frozen=True)
class CountOptions:
    causal_half: bool = False  # count only the unmasked half of causal attention
    said: Optional[Callable[[str], None]] = None  # told what a formula could only approximate (once a call)


Rule = Callable[[tuple, dict, Any, CountOptions], Optional[OpCost]]  # (args, kwargs, output, options) of one call


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., OpCost]
    named: bool  # fn takes the op's arguments by their schema names; else it is a Rule


FORMULAS: dict[Any, _Entry] = {}  # op (overload packet) -> its formula
_rules: dict[Any, Rule] = {}      # overload -> its rule, found once per overload (cost_of)


def _add(op: Any, entry: _Entry) -> None:
    if not (is_op_packet(op) or is_higher_order(op)):
        raise TypeError(f"{op!r} is not an op's packet: give torch.ops.<namespace>.<op> (torch.ops.aten.mm), whose "
                        "every overload a count looks up; a name or a single overload would never be matched")
    if op in FORMULAS:
        raise ValueError(f"a FLOP formula for {op} is registered already: one op, one formula")
    FORMULAS[op] = entry
    _rules.clear()  # an op counted before has no formula cached that this one should replace


def _tagged_pointwise(op: Any) -> bool:
    """Whether an op's overloads are PyTorch's pointwise ops (each counted per output element, without a formula)."""
    return not is_higher_order(op) and any(torch.Tag.pointwise in getattr(op, name).tags for name in op.overloads())


def formula(*ops: Any) -> Callable[[Callable[..., OpCost]], Callable[..., OpCost]]:
    """Register the FLOP formula of ``ops`` (``torch.ops.aten.mm``, or an op of your own library): a function that
    takes the op's arguments by the names its schema gives them, and ``result`` (what the op returned) and
    ``options`` (:class:`CountOptions`) by keyword, and returns an :class:`OpCost`. Arguments it does not name go to
    ``**_``. An op that has a formula already, or is counted without one (pointwise, free), is refused.

        @flopsweep.formula(torch.ops.mylib.scaled_add)
        def scaled_add(x, y, *, result, **_):
            return OpCost(elementwise=2 * result.numel())  # a multiply and an add per element
    """
    for op in ops:  # priced already without an entry in FORMULAS: a formula would replace that without a word
        if (is_op_packet(op) and op not in FORMULAS) and (op in FREE_OPS or _tagged_pointwise(op)):
            how = "free: it moves or makes data" if op in FREE_OPS else "pointwise: one FLOP an output element"
            raise ValueError(f"{op} is counted already ({how}): one op, one formula")
    return _formula(*ops)


def _tagged_pointwise(op: Any) -> bool:
    """Whether an op's overloads are PyTorch's pointwise ops (each counted per output element, without a formula)."""
    return any(torch.Tag.pointwise in getattr(op, name).tags for name in op.overloads())


def _formula(*ops: Any) -> Callable[[Callable[..., OpCost]], Callable[..., OpCost]]:
    """:func:`formula` without its check of ops priced without a formula: this module's own, some of them pointwise
    ops whose cost is not one FLOP an element."""
    def wrap(fn: Callable[..., OpCost]) -> Callable[..., OpCost]:
        for op in ops:
            _add(op, _Entry(fn, named=True))
        return fn
    return wrap


def _numel(shape) -> int:
    return math.prod(shape)


def _first_tensor(value: Any) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    return None


# -- matmul class ----------------------------------------------------------------------------------

@_formula(aten.mm)
def _mm(self, mat2, **_) -> OpCost:
    (m, k), n = self.shape, mat2.shape[-1]
    return OpCost(matmul=2 * m * k * n)


@_formula(aten.addmm)
def _addmm(self, mat1, mat2, **_) -> OpCost:
    (m, k), n = mat1.shape, mat2.shape[-1]
    return OpCost(matmul=2 * m * k * n, elementwise=m * n)


@_formula(aten.bmm)
def _bmm(self, mat2, **_) -> OpCost:
    b, m, k = self.shape
    return OpCost(matmul=2 * b * m * k * mat2.shape[-1])


@_formula(aten.baddbmm)
def _baddbmm(self, batch1, batch2, **_) -> OpCost:
    b, m, k = batch1.shape
    return OpCost(matmul=2 * b * m * k * batch2.shape[-1], elementwise=b * m * batch2.shape[-1])


@_formula(aten._scaled_mm, aten._scaled_mm_v2)
def _scaled_mm(self, mat2, bias=None, **_) -> OpCost:
    """A scaled low-precision matmul (FP8: torchao's float8 training, Transformer Engine-style recipes; MX formats):
    the product's 2 M K N, as PyTorch's counter has it; the scales are applied in the kernel's epilogue and not
    counted; a bias adds M N, as ``addmm``'s does."""
    (m, k), n = self.shape, mat2.shape[-1]
    return OpCost(matmul=2 * m * k * n, elementwise=m * n if bias is not None else 0)


@_formula(aten._grouped_mm, aten._scaled_grouped_mm)
def _grouped_mm(self, mat2, **_) -> OpCost:
    """Mixture-of-experts matmuls (transformers' experts; the scaled one: FP8 experts): each group of rows (``offs``)
    times its own matrix. The offsets only split the rows, so the count holds whatever the routing, and on meta."""
    a, b = self.shape, mat2.shape
    if len(a) == 2 and len(b) == 3:  # tokens [T, K] x experts [G, K, N] -> [T, N]
        return OpCost(matmul=2 * a[0] * a[1] * b[2])
    if len(a) == 3 and len(b) == 2:  # [G, M, K] x [K, N_total] -> [M, N_total]
        return OpCost(matmul=2 * a[1] * a[2] * b[1])
    if len(a) == 2:  # [M, K_total] x [K_total, N] -> [G, M, N]: the experts' weight gradients
        return OpCost(matmul=2 * a[0] * a[1] * b[1])
    return OpCost(matmul=2 * a[0] * a[1] * a[2] * b[2])  # batched: [G, M, K] x [G, K, N]


def _conv_flops(x_shape, w_shape, out_shape, transposed: bool) -> int:
    # A convolution's output element is a dot product of length C_in/groups * prod(kernel) = w_shape[1:];
    # a transposed one (weight C_in x C_out/groups x kernel) scatters each *input* element that many times.
    return 2 * _numel(w_shape[1:]) * _numel(x_shape if transposed else out_shape)


@_formula(aten.convolution, aten._convolution)
def _convolution(input, weight, bias, transposed, *, result, **_) -> OpCost:
    flops = _conv_flops(input.shape, weight.shape, result.shape, bool(transposed))
    return OpCost(matmul=flops, elementwise=result.numel() if bias is not None else 0)


@_formula(aten.convolution_backward)
def _convolution_backward(grad_output, input, weight, transposed, output_mask, **_) -> OpCost:
    one = _conv_flops(input.shape, weight.shape, grad_output.shape, bool(transposed))
    matmul = one * (int(output_mask[0]) + int(output_mask[1]))
    return OpCost(matmul=matmul, elementwise=grad_output.numel() if output_mask[2] else 0)


def _attention_pairs(sq: int, sk: int, causal: bool, opts: CountOptions) -> int:
    if causal and opts.causal_half:
        # is_causal aligns the mask top-left: query i sees keys 0..i, so sum_i min(i + 1, sk) pairs
        if sq <= sk:
            return sq * (sq + 1) // 2
        return sk * (sk + 1) // 2 + (sq - sk) * sk
    return sq * sk


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, masked: bool, backward: bool,
               opts: CountOptions) -> OpCost:
    *batch, sq, _ = q.shape
    return _attention_cost(_numel(batch) * _attention_pairs(sq, k.shape[-2], causal, opts), q, v, masked, backward)


def _attention_cost(pairs: int, q: torch.Tensor, v: torch.Tensor, masked: bool, backward: bool) -> OpCost:
    """What an attention kernel costs for the (query, key) pairs it computes over all its heads."""
    matmul = 2 * pairs * (q.shape[-1] + v.shape[-1])
    if backward:
        return OpCost(matmul=2 * matmul, elementwise=8 * pairs)
    return OpCost(matmul=matmul, elementwise=(6 if masked else 5) * pairs)


def _flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block: tuple, backward: bool,
          opts: CountOptions) -> OpCost:
    """FlexAttention's fused kernel: the pairs of the tiles its block mask computes (:mod:`flopsweep.measure.flex`),
    at fused attention's cost a pair; its ``score_mod`` and ``mask_mod`` inside the tiles are not counted."""
    return _attention_cost(flex.pairs(query, key, block, opts.said), query, value, False, backward)


def _flex_forward(args: tuple, kwargs: dict, out: Any, opts: CountOptions) -> OpCost:
    query, key, value, _score_mod, block = args[:5]
    return _flex(query, key, value, block, False, opts)


def _flex_backward(args: tuple, kwargs: dict, out: Any, opts: CountOptions) -> OpCost:
    query, key, value = args[:3]
    return _flex(query, key, value, args[9], True, opts)


_add(FLEX_ATTENTION, _Entry(_flex_forward, named=False))
_add(FLEX_ATTENTION_BACKWARD, _Entry(_flex_backward, named=False))


@_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_flash_cpu(query, key, value, is_causal=False, *, options, attn_mask=None, **_) -> OpCost:
    return _attention(query, key, value, is_causal, attn_mask is not None, False, options)


@_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_flash_cpu_backward(query, key, value, is_causal, *, options, attn_mask=None, **_) -> OpCost:
    return _attention(query, key, value, is_causal, attn_mask is not None, True, options)


@_formula(aten._scaled_dot_product_flash_attention)
def _sdpa_flash(query, key, value, is_causal=False, *, options, **_) -> OpCost:
    return _attention(query, key, value, is_causal, False, False, options)


@_formula(aten._scaled_dot_product_flash_attention_backward)
def _sdpa_flash_backward(query, key, value, is_causal, *, options, **_) -> OpCost:
    return _attention(query, key, value, is_causal, False, True, options)


@_formula(aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention)
def _sdpa_efficient(query, key, value, attn_bias, is_causal=False, *, options, **_) -> OpCost:
    return _attention(query, key, value, is_causal, attn_bias is not None, False, options)


@_formula(aten._scaled_dot_product_efficient_attention_backward, aten._scaled_dot_product_cudnn_attention_backward)
def _sdpa_efficient_backward(query, key, value, attn_bias, is_causal=False, *, options, **_) -> OpCost:
    return _attention(query, key, value, is_causal, attn_bias is not None, True, options)


@_formula(aten._linalg_svd)
def _svd(A, full_matrices=False, compute_uv=True, **_) -> OpCost:
    """Golub and Van Loan's count for the R-SVD of an M x k matrix (M >= k): ``6*M*k^2 + 11*k^3`` with the thin
    singular vectors, ``4*M*k^2 - 4*k^3/3`` for the values alone (Matrix Computations, table 5.4.1; an iterative
    algorithm, so a convention: LAPACK's own work differs by the iterations it needs). Per matrix of a batch."""
    *batch, m, n = A.shape
    big, k = max(m, n), min(m, n)
    per = 6 * big * k * k + 11 * k ** 3 if compute_uv else 4 * big * k * k - (4 * k ** 3) // 3
    return OpCost(matmul=math.prod(batch) * per)


# -- elementwise ----------------------------------------------------------------------------------

def per_output_element(cost: int) -> Rule:
    def rule(args, kwargs, out, opts) -> OpCost:
        tensor = _first_tensor(out)
        return OpCost(elementwise=cost * (tensor.numel() if tensor is not None else 0))
    return rule


def per_input_element(cost: int) -> Rule:
    def rule(args, kwargs, out, opts) -> OpCost:
        return OpCost(elementwise=cost * args[0].numel())
    return rule


def per_list_element(cost: int) -> Rule:
    """``_foreach_*`` ops: the cost per element over every tensor of the first list argument."""
    def rule(args, kwargs, out, opts) -> OpCost:
        return OpCost(elementwise=cost * sum(t.numel() for t in args[0]))
    return rule


def _gelu_cost(tanh: bool, backward: bool) -> int:
    return (12 if tanh else 8) if backward else (8 if tanh else 5)


@_formula(aten.gelu)
def _gelu(self, *, result, approximate="none", **_) -> OpCost:
    return OpCost(elementwise=_gelu_cost(approximate == "tanh", False) * result.numel())


@_formula(aten.gelu_backward)
def _gelu_backward(grad_output, self, *, result, approximate="none", **_) -> OpCost:
    return OpCost(elementwise=_gelu_cost(approximate == "tanh", True) * result.numel())


ELEMENTWISE_PER_OUTPUT = {  # in place too: torch's single-tensor optimizers update with lerp_, addcmul_, addcdiv_
    aten.addcmul: 2, aten.addcdiv: 2, aten.lerp: 3, aten.addcmul_: 2, aten.addcdiv_: 2, aten.lerp_: 3,
    aten.silu_: 2,
    aten.silu: 2, aten.silu_backward: 5, aten.softplus: 5, aten.softplus_backward: 5,
    aten.native_layer_norm: 5,
    aten._softmax: 5, aten._log_softmax: 5, aten._safe_softmax: 5,
    aten._softmax_backward_data: 4, aten._log_softmax_backward_data: 3,
    aten.native_dropout: 2, aten.native_dropout_backward: 1,
    aten.threshold_backward: 1, aten.tanh_backward: 2, aten.sigmoid_backward: 2,
    aten.hardtanh_backward: 1, aten.floor_divide: 1,
    aten.native_batch_norm: 5, aten._native_batch_norm_legit: 5, aten._native_batch_norm_legit_no_training: 5,
}
for _op, _cost in ELEMENTWISE_PER_OUTPUT.items():
    _add(_op, _Entry(per_output_element(_cost), named=False))


@_formula(aten.native_layer_norm_backward, aten.native_batch_norm_backward)
def _norm_backward(grad_out, **_) -> OpCost:
    return OpCost(elementwise=10 * grad_out.numel())


@_formula(aten.max_pool2d_with_indices)
def _max_pool(self, kernel_size, *, result, **_) -> OpCost:
    return OpCost(elementwise=(_window(kernel_size) - 1) * result[0].numel())  # a max of N values: N - 1 compares


def _window(kernel_size) -> int:
    """The values a 2-d pooling window covers: ``[k]`` means ``k x k``."""
    return math.prod(kernel_size) if len(kernel_size) > 1 else kernel_size[0] ** 2


@_formula(aten.avg_pool2d)
def _avg_pool(self, kernel_size, *, result, **_) -> OpCost:
    return OpCost(elementwise=_window(kernel_size) * result.numel())  # k - 1 adds and a divide per output


@_formula(aten.avg_pool2d_backward)
def _avg_pool_backward(grad_output, self, *, result, **_) -> OpCost:
    return OpCost(elementwise=result.numel())  # each input's share of its gradients, added


@_formula(aten.max_pool2d_with_indices_backward)
def _max_pool_backward(grad_output, **_) -> OpCost:
    return OpCost(elementwise=grad_output.numel())  # each gradient added to its input's


@_formula(aten.index_put)
def _index_put(self, indices, values, accumulate=False, **_) -> OpCost:
    return OpCost(elementwise=values.numel() if accumulate else 0)  # placing is free; accumulating adds


ELEMENTWISE_PER_INPUT = {
    aten.sum: 1, aten.mean: 1, aten.amax: 1, aten.amin: 1, aten.max: 1, aten.min: 1, aten.prod: 1,
    aten.var: 2, aten.std: 2, aten.var_mean: 2, aten.norm: 2, aten.linalg_vector_norm: 2, aten.logsumexp: 3,
    aten.embedding_dense_backward: 1, aten.cumsum: 1, aten.cumprod: 1, aten.any: 1, aten.all: 1,
    aten.nll_loss_forward: 0, aten.nll_loss_backward: 0,  # a gather and a scatter; the cost is in log_softmax
    aten.mse_loss: 3, aten.mse_loss_backward: 3, aten.histc: 1,
}
for _op, _cost in ELEMENTWISE_PER_INPUT.items():
    _add(_op, _Entry(per_input_element(_cost), named=False))

FOREACH_PER_ELEMENT = {
    "add": 1, "sub": 1, "mul": 1, "div": 1, "neg": 1, "sqrt": 1, "reciprocal": 1, "maximum": 1, "minimum": 1,
    "pow": 1, "abs": 1, "sign": 1, "clamp_min": 1, "clamp_max": 1, "exp": 1, "log": 1, "addcmul": 2,
    "addcdiv": 2, "lerp": 3, "norm": 2,
}
for _name, _cost in FOREACH_PER_ELEMENT.items():
    for _suffix in ("", "_"):
        _packet = getattr(aten, f"_foreach_{_name}{_suffix}", None)
        if _packet is not None:
            _add(_packet, _Entry(per_list_element(_cost), named=False))

_per_element_pointwise = per_output_element(1)

# Ops that move, view, allocate or index memory: no arithmetic.
FREE_OPS = frozenset(getattr(aten, name) for name in """
    view _unsafe_view reshape expand expand_as transpose t permute unsqueeze squeeze slice select split
    split_with_sizes chunk unbind narrow as_strided alias detach clone contiguous copy_ _to_copy to
    empty empty_like empty_strided new_empty new_empty_strided zeros zeros_like ones ones_like full full_like
    new_zeros new_ones new_full fill_ zero_ arange randint randn rand randn_like rand_like normal_ uniform_
    bernoulli_ lift_fresh lift_fresh_copy scalar_tensor cat stack index index_select gather embedding
    repeat repeat_interleave unfold flip roll tril triu _local_scalar_dense masked_fill_ index_put_
    scatter scatter_ scatter_add sort argsort topk one_hot resolve_conj resolve_neg view_as_real view_as_complex
    _reshape_alias unsafe_split _foreach_zero_ _foreach_copy_ set_ squeeze_ unsqueeze_ t_ transpose_
    nonzero _assert_async _assert_tensor_metadata diagonal diag_embed select_backward slice_backward
    index_select_backward detach_ _has_compatible_shallow_copy_type new_tensor item _fused_sdp_choice
    isfinite is_nonzero equal constant_pad_nd
""".split() if hasattr(aten, name))


def cost_of(func: Any, args: tuple, kwargs: dict, out: Any, opts: CountOptions) -> Optional[OpCost]:
    """The cost of one call, or None when the op does arithmetic that no formula covers."""
    rule = _rules.get(func)
    if rule is None:
        rule = _rules[func] = _rule_of(func)
    return rule(args, kwargs, out, opts)


_FREE = OpCost()


def _rule_of(func: Any) -> Rule:
    if is_higher_order(func):
        entry = FORMULAS.get(func)
        return entry.fn if entry is not None else lambda *_: None
    packet = func.overloadpacket
    if func.namespace in ("profiler", "prim") or (packet not in FORMULAS and packet in FREE_OPS):
        return lambda *_: _FREE
    entry = FORMULAS.get(packet)
    if entry is not None:
        if not entry.named:
            return entry.fn
        names = [argument.name for argument in op_schema(func).arguments]
        fn = entry.fn
        return lambda args, kwargs, out, opts: fn(**dict(zip(names, args)), **kwargs, result=out, options=opts)
    if torch.Tag.pointwise in func.tags:
        return _per_element_pointwise
    return lambda *_: None
