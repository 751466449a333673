"""Make ``meta`` behave like the CPU where it matters to counting: attention kernels and scalar reads.

Attention: on meta, run it through the kernel the CPU would choose, so counts match across devices.

``F.scaled_dot_product_attention`` on meta always decomposes into bmm and softmax, while on CPU it
usually runs one fused kernel (``_scaled_dot_product_flash_attention_for_cpu``) whose cost comes from a
formula. This mode asks PyTorch which kernel the CPU would pick for the same shapes, dtypes and masks
(using tiny CPU tensors) and, when that is the fused one, calls it on the meta tensors directly (it has
meta and autograd support); otherwise the decomposition runs on both devices alike.

Scalar reads: meta tensors have no values, so ``.item()`` on one (Adafactor's relative step size reads
parameter norms) returns 1.0. Such values only scale an update; they change no shape and no FLOP count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode

_FLASH = SDPBackend.FLASH_ATTENTION.value


def _tiny_cpu(t: torch.Tensor) -> torch.Tensor:
    shape = [1] * (t.dim() - 2) + [min(t.shape[-2], 2), t.shape[-1]]
    if t.dim() >= 3:
        shape[-3] = t.shape[-3]  # keep the head count: GQA checks compare it
    return torch.empty(shape, dtype=t.dtype, requires_grad=t.requires_grad)


def cpu_would_use_flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                        enable_gqa=False) -> bool:
    if enable_gqa:
        return False
    mask = None
    if attn_mask is not None:
        mask = torch.empty([1] * (attn_mask.dim() - 2) + [min(q.shape[-2], 2), min(k.shape[-2], 2)],
                           dtype=attn_mask.dtype, requires_grad=attn_mask.requires_grad)
    choice = torch._fused_sdp_choice(_tiny_cpu(q), _tiny_cpu(k), _tiny_cpu(v), mask, dropout_p, is_causal,
                                     scale=scale)
    return choice == _FLASH


class MetaLikeCPU(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.item and args[0].device.type == "meta":
            return 1.0
        if func is F.scaled_dot_product_attention and args and args[0].device.type == "meta":
            q, k, v = args[:3]
            options = dict(zip(("attn_mask", "dropout_p", "is_causal"), args[3:]))
            options.update(kwargs)
            if cpu_would_use_flash(q, k, v, **options):
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, options.get("dropout_p", 0.0), options.get("is_causal", False),
                    attn_mask=options.get("attn_mask"), scale=options.get("scale"))[0]
        return func(*args, **kwargs)
