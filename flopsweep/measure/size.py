"""Size and memory: parameter counts, bytes of weights, gradients, optimizer state and of the activations
saved for backward, and an estimate of the training peak."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import nn

from flopsweep.models.base import embedding_params


@dataclass(frozen=True)
class SizeRecord:
    params: int
    params_trainable: int
    params_embedding: int
    weights_bytes: int
    buffers_bytes: int
    grads_bytes: int
    optimizer_state_bytes: int
    activations_bytes: Optional[int]   # None for inference builds (nothing is saved for backward)
    train_peak_bytes: Optional[int]

    @property
    def static_bytes(self) -> int:
        return self.weights_bytes + self.buffers_bytes + self.grads_bytes + self.optimizer_state_bytes


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def weight_bytes(model: nn.Module, int8: bool) -> int:
    """Bytes of the weights as stored. ``int8`` stores each matrix as int8 with one float32 scale per row
    (weight-only quantisation); vectors (biases, norms) stay float32."""
    total = 0
    for p in unique_parameters(model):
        if int8 and p.dim() >= 2:
            total += p.numel() + 4 * p.shape[0]
        else:
            total += p.numel() * p.element_size()
    return total


def optimizer_state_bytes(optimizer: Optional[torch.optim.Optimizer]) -> int:
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def saved_activation_bytes(model: nn.Module, inputs: dict[str, torch.Tensor],
                           autocast: Callable[[], ContextManager]) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass, each storage once, weights
    excluded: what stays alive between forward and backward."""
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    weights |= {b.untyped_storage()._cdata for b in model.buffers()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        loss = model(**inputs)
    del loss
    return sum(seen.values())


def measure_size(model: nn.Module, inputs: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer],
                 autocast: Callable[[], ContextManager], *, int8: bool = False, training: bool = True) -> SizeRecord:
    """``optimizer`` must have taken a step already (its state is created lazily) for its bytes to count."""
    params = unique_parameters(model)
    trainable = [p for p in params if p.requires_grad]
    weights = weight_bytes(model, int8)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    grads = sum(p.numel() * p.element_size() for p in trainable) if training else 0
    state = optimizer_state_bytes(optimizer) if training else 0
    activations = saved_activation_bytes(model, inputs, autocast) if training else None
    # An upper-bound estimate: everything static plus every saved activation alive at once (at the start of
    # backward the activations are all alive and gradients begin to fill in); temporaries are not included.
    peak = weights + buffers + grads + state + activations if training else None
    return SizeRecord(params=sum(p.numel() for p in params), params_trainable=sum(p.numel() for p in trainable),
                      params_embedding=embedding_params(model), weights_bytes=weights, buffers_bytes=buffers,
                      grads_bytes=grads, optimizer_state_bytes=state, activations_bytes=activations,
                      train_peak_bytes=peak)
