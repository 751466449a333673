"""Make ``meta`` behave like the CPU where it matters to counting: attention kernels and scalar reads.

Attention: on meta, run it through the kernel the CPU would choose, so counts match across devices.

``F.scaled_dot_product_attention`` on meta always decomposes into bmm and softmax, while on CPU it
usually runs one fused kernel (``_scaled_dot_product_flash_attention_for_cpu``) whose cost comes from a
formula. This mode asks PyTorch which kernel the CPU would pick for the same shapes, dtypes and masks
(using tiny CPU tensors) and, when that is the fused one, calls it on the meta tensors directly (it has
meta and autograd support); otherwise the decomposition runs on both devices alike.

Grouped matmuls (mixture-of-experts layers): meta's kernel takes bfloat16 only, as CUDA's does; other dtypes are cast
to it and back around the call (copies cost nothing), so the matmul is counted as on the CPU.

Scalar reads: meta tensors have no values, so ``.item()`` on one (Adafactor's relative step size reads
parameter norms) returns 1.0. Such values only scale an update; they change no shape and no FLOP count.

Speed: a meta kernel is a pure function of its inputs' shapes, strides, dtypes and scalar arguments, but in
PyTorch 2.13 most run in Python (about 0.2 ms for an elementwise op, 2-4 ms for a layer norm or a GELU
backward), and a transformer runs the same op on the same shapes in every layer and every job of a sweep
over another axis. :class:`_KernelCache` remembers what each call returned and makes the same outputs again
(fresh tensors, as the kernel would) for a repeated call. Only functional ops are cached: nothing that
mutates, returns a view, or has a data-dependent output shape.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode

from flopsweep.measure._torch import EagerDispatchMode, fused_sdp_choice, is_higher_order, is_inplace, op_schema

_FLASH = SDPBackend.FLASH_ATTENTION.value
_GROUPED_MM = tuple(f for f in (getattr(F, "grouped_mm", None), getattr(torch, "_grouped_mm", None)) if f is not None)


def _tiny_cpu(t: torch.Tensor) -> torch.Tensor:
    shape = [1] * (t.dim() - 2) + [min(t.shape[-2], 2), t.shape[-1]]
    if t.dim() >= 3:
        shape[-3] = t.shape[-3]  # keep the head count: GQA checks compare it
    return torch.empty(shape, dtype=t.dtype, requires_grad=t.requires_grad)


def cpu_would_use_flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                        enable_gqa=False) -> bool:
    mask = None
    if attn_mask is not None:
        mask = torch.empty([1] * (attn_mask.dim() - 2) + [min(q.shape[-2], 2), min(k.shape[-2], 2)],
                           dtype=attn_mask.dtype, requires_grad=attn_mask.requires_grad)
    choice = fused_sdp_choice(_tiny_cpu(q), _tiny_cpu(k), _tiny_cpu(v), mask, dropout_p, is_causal,
                              scale=scale, enable_gqa=enable_gqa)  # the CPU's flash kernel takes fewer k/v heads
    return choice == _FLASH


class MetaLikeCPU(TorchFunctionMode):
    """While entered, meta tensors take the CPU's attention kernel and answer ``.item()``, and meta kernels
    are replayed from :class:`_KernelCache`."""

    def __enter__(self) -> "MetaLikeCPU":
        self._cache = _KernelCache()
        self._cache.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._cache.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.item and args[0].device.type == "meta":
            return 1.0
        if func in _GROUPED_MM and args and args[0].device.type == "meta" and args[0].dtype != torch.bfloat16:
            a, b = args[:2]  # meta's grouped matmul takes bfloat16 only (CUDA's rule); the CPU's takes any dtype
            return func(a.to(torch.bfloat16), b.to(torch.bfloat16), *args[2:], **kwargs).to(a.dtype)
        if func is F.scaled_dot_product_attention and args and args[0].device.type == "meta":
            q, k, v = args[:3]
            options = dict(zip(("attn_mask", "dropout_p", "is_causal"), args[3:]))
            options.update(kwargs)
            if cpu_would_use_flash(q, k, v, **options):
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, options.get("dropout_p", 0.0), options.get("is_causal", False),
                    attn_mask=options.get("attn_mask"), scale=options.get("scale"))[0]
        return func(*args, **kwargs)


_UNCACHEABLE = (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output, torch.Tag.inplace_view)
_CACHE_LIMIT = 100_000  # entries; a sweep of large models needs a few thousand
_outputs: dict[tuple, Any] = {}  # call key -> what the kernel returned (as metadata), shared by every job
_kinds: dict[Any, Optional[str]] = {}
_SELF = "self"  # an in-place op seen before: it returns its first argument, and changes no metadata


class _NotCacheable(Exception):
    pass


_META = torch.device("meta")
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _dense_meta(x: torch.Tensor) -> bool:
    return type(x) in _PLAIN and x.is_meta and x.layout == torch.strided


def _key(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        if not _dense_meta(x):
            raise _NotCacheable
        return x.dtype, x.shape, x.stride(), x.storage_offset()  # torch.Size hashes as the tuple it is
    if isinstance(x, (list, tuple)):
        return type(x), tuple(_key(v) for v in x)
    if x is None or isinstance(x, (bool, int, float, str, torch.dtype, torch.device, torch.layout,
                                   torch.memory_format)):
        return type(x), x
    raise _NotCacheable


def _spec(out: Any) -> Any:
    """The metadata that makes ``out`` again, or raises if it is not all dense meta tensors."""
    if isinstance(out, torch.Tensor):
        if not _dense_meta(out):
            raise _NotCacheable
        return tuple(out.shape), out.stride(), out.dtype
    if isinstance(out, (list, tuple)):
        return type(out), [_spec(v) for v in out]
    if out is None:
        return None
    raise _NotCacheable


def _make(spec: Any) -> Any:
    if spec is None:
        return None
    if isinstance(spec[0], type):
        kind, items = spec
        return kind(_make(v) for v in items)
    shape, stride, dtype = spec
    return torch.empty_strided(shape, stride, dtype=dtype, device=_META)


def _kind(func) -> Optional[str]:
    """"functional" (fresh outputs), "inplace" (mutates its first argument's values only, returns it or
    nothing) or None (not cached: views, metadata changes, out= variants, data-dependent shapes)."""
    if func in _kinds:
        return _kinds[func]
    schema = op_schema(func)
    kind = None
    if not any(tag in func.tags for tag in _UNCACHEABLE):
        if not schema.is_mutable and not any(r.alias_info for r in schema.returns):
            kind = "functional"
        elif is_inplace(func) and len(schema.returns) <= 1:
            kind = "inplace"
    _kinds[func] = kind
    return kind


class _KernelCache(EagerDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_higher_order(func):
            return self.higher_order(func, args, kwargs)
        kind, key = _kind(func), None
        if kind is not None:
            try:
                key = (func, _key(args), _key(tuple(sorted(kwargs.items()))) if kwargs else ())
            except _NotCacheable:
                key = None
            else:
                spec = _outputs.get(key)
                if spec is _SELF:
                    return args[0] if op_schema(func).returns else None
                if spec is not None:
                    return _make(spec)
        out = func(*args, **kwargs)
        if key is not None and len(_outputs) < _CACHE_LIMIT:
            try:
                _outputs[key] = _SELF if kind == "inplace" else _spec(out)
            except _NotCacheable:
                pass
        return out
