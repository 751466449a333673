"""Size and memory: parameter counts, bytes of weights, gradients, optimizer state and of the activations
saved for backward, an estimate of the training peak, and the peak of a simulated step (temporaries included)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from flopsweep.measure.dispatch import EagerDispatchMode
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


class LiveBytes(EagerDispatchMode):
    """While entered, the bytes of the tensor storages alive, and the most at once (``peak``): every storage an op
    creates, and those passed to :meth:`track` (what was alive before). A storage counts once, however many
    views share it, and leaves when it is freed (a weak reference to it). On meta this is the step's memory
    without any memory: what a device's allocator would have to hold, less its rounding and fragmentation."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def track(self, *tensors: Any) -> None:
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse and other layouts without one storage
                continue
            key = id(storage)
            if key in self._refs:
                continue
            size = storage.nbytes()
            self._refs[key] = weakref.ref(storage, lambda _, key=key, size=size: self._free(key, size))
            self.live += size
            self.peak = max(self.peak, self.live)

    def _free(self, key: int, size: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*tree_leaves(out))
        return out


def simulate_step(model: nn.Module, inputs: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer],
                  autocast: Callable[[], ContextManager], *, training: bool = True) -> tuple[int, Optional[int]]:
    """Run one step (forward with the loss, backward, optimizer step; a forward pass without gradients for an
    inference build) and return the most bytes alive at once during it, counting what was alive before (weights,
    buffers, gradients, optimizer state, the batch), and the bytes of the activations saved for backward (None
    for inference). For the peak of a later step, call it with the optimizer's state created and the gradients
    cleared (``zero_grad(set_to_none=True)``), as they are between steps; they are cleared again after."""
    live = LiveBytes()
    state = [v for s in (optimizer.state.values() if optimizer is not None else ()) for v in s.values()]
    live.track(*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters()), *inputs.values(),
               *state)
    activations = None
    with live:
        if training:
            with SavedActivations(model) as saved, autocast():
                loss = model(**inputs)
            loss.backward()
            del loss
            if optimizer is not None:
                optimizer.step()
            activations = saved.bytes
        else:
            with torch.no_grad(), autocast():
                model(**inputs)
    model.zero_grad(set_to_none=True)
    return live.peak, activations
