"""Size and memory: parameter counts, bytes of weights, gradients, optimizer state and of the activations
saved for backward, and an estimate of the training peak."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

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


class SavedActivations:
    """While entered, records the bytes of the tensors autograd saves for backward, each storage once, weights
    excluded: what stays alive between forward and backward. Enter it around the forward pass being counted
    so that one pass gives both (on meta, the forward is most of a job's time)."""

    def __init__(self, model: nn.Module):
        self.weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
        self.seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in self.weights:
            self.seen[storage._cdata] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())

    def __enter__(self) -> "SavedActivations":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def saved_activation_bytes(model: nn.Module, inputs: dict[str, torch.Tensor],
                           autocast: Callable[[], ContextManager]) -> int:
    """The bytes :class:`SavedActivations` records for one forward pass of ``model`` on ``inputs``."""
    with SavedActivations(model) as saved, autocast():
        loss = model(**inputs)
    del loss
    return saved.bytes


def measure_size(model: nn.Module, inputs: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer],
                 autocast: Callable[[], ContextManager], *, int8: bool = False, training: bool = True,
                 activations: Optional[int] = None) -> SizeRecord:
    """``optimizer`` must have taken a step already (its state is created lazily) for its bytes to count.
    ``activations``: the bytes :class:`SavedActivations` recorded in a forward pass already run, if any."""
    params = unique_parameters(model)
    trainable = [p for p in params if p.requires_grad]
    weights = weight_bytes(model, int8)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    grads = sum(p.numel() * p.element_size() for p in trainable) if training else 0
    state = optimizer_state_bytes(optimizer) if training else 0
    if training and activations is None:
        activations = saved_activation_bytes(model, inputs, autocast)
    elif not training:
        activations = None
    # An upper-bound estimate: everything static plus every saved activation alive at once (at the start of
    # backward the activations are all alive and gradients begin to fill in); temporaries are not included.
    peak = weights + buffers + grads + state + activations if training else None
    return SizeRecord(params=sum(p.numel() for p in params), params_trainable=sum(p.numel() for p in trainable),
                      params_embedding=embedding_params(model), weights_bytes=weights, buffers_bytes=buffers,
                      grads_bytes=grads, optimizer_state_bytes=state, activations_bytes=activations,
                      train_peak_bytes=peak)
