"""Size and memory: parameter counts, bytes of weights, gradients, optimizer state and of the activations
saved for backward, an estimate of the training peak, and the peak of a simulated step (temporaries included)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from flopsweep.measure._torch import EagerDispatchMode, storage_id, tree_leaves


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
    step: Optional["StepMemory"] = None  # a simulated step's peak and what was alive at it, where one ran
    params_active: Optional[int] = None  # the parameters a token uses (mixture of experts: the top-k experts only)

    @property
    def static_bytes(self) -> int:
        return self.weights_bytes + self.buffers_bytes + self.grads_bytes + self.optimizer_state_bytes


def active_parameters(model: nn.Module) -> int:
    """The parameters one token uses: every parameter once, less the routed experts a token does not reach. A
    mixture-of-experts layer is found as transformers (5.x) builds one: an ``experts`` module that holds
    ``num_experts`` experts' weights, beside a router (or in a block) whose ``top_k`` experts a token takes; a token
    uses ``top_k / num_experts`` of those weights. Shared experts, routers and everything else count whole."""
    total = sum(p.numel() for p in unique_parameters(model))
    for block in model.modules():
        experts = getattr(block, "experts", None)
        routed = getattr(experts, "num_experts", None)
        top_k = getattr(block, "top_k", None) or next((getattr(child, "top_k") for child in block.children()
                                                        if isinstance(getattr(child, "top_k", None), int)), None)
        if isinstance(experts, nn.Module) and isinstance(routed, int) and isinstance(top_k, int) and routed > top_k:
            weights = sum(p.numel() for p in experts.parameters())
            total -= weights - weights * top_k // routed
    return total


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def embedding_params(model: nn.Module) -> int:
    """Parameters of token and position embeddings (``nn.Embedding`` modules and ``*pos_embedding`` tensors),
    each shared tensor once: the part Kaplan et al. leave out of N."""
    seen: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            seen[id(module.weight)] = module.weight.numel()
    for name, param in model.named_parameters():
        if name.endswith("pos_embedding"):
            seen[id(param)] = param.numel()
    return sum(seen.values())


def weight_bytes(model: nn.Module, int8: bool) -> int:
    """Bytes of the weights as stored (:func:`stored_bytes`)."""
    return sum(stored_bytes(p, int8) for p in unique_parameters(model))


def stored_sizes(model: nn.Module, int8: bool) -> dict[int, int]:
    """Storage id -> bytes of a model's buffers and parameters, the parameters as stored with ``int8``
    (:func:`int8_size`), else their storages' bytes."""
    return {**{storage_id(t): t.untyped_storage().nbytes() for t in (*model.parameters(), *model.buffers())},
            **({storage_id(p): int8_size(p) for p in model.parameters()} if int8 else {})}


def int8_size(p: torch.Tensor) -> int:
    """Bytes of a weight stored as int8 (:func:`stored_bytes`): its storage's where the step holds it so."""
    return stored_bytes(p, True)


def stored_bytes(p: torch.Tensor, int8: bool) -> int:
    """Bytes of a weight as stored. ``int8`` stores each matrix as int8 with one float32 scale per row (weight-only
    quantisation); vectors (biases, norms) stay float32."""
    return p.numel() + 4 * p.shape[0] if int8 and p.dim() >= 2 else p.numel() * p.element_size()


def optimizer_state_bytes(optimizer: Optional[torch.optim.Optimizer]) -> int:
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


class SavedActivations:
    """While entered, records the bytes of the tensors autograd saves for backward, each storage once, weights
    excluded: what stays alive between forward and backward. Enter it around the forward pass being counted
    so that one pass gives both (on meta, the forward is most of a job's time). ``on_save`` is called with each
    tensor saved."""

    def __init__(self, model: nn.Module, on_save: Optional[Callable[[torch.Tensor], None]] = None):
        self.weights = {storage_id(t) for t in (*model.parameters(), *model.buffers())}
        self.seen: dict[int, int] = {}
        self.on_save = on_save
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_id(t)
        if key not in self.weights:
            self.seen[key] = t.untyped_storage().nbytes()
            if self.on_save is not None:
                self.on_save(t)
        # detached (same storage): a tensor that autograd saves for its own backward (tanh's output) would hold
        # itself through its grad_fn, a cycle in C++ that gc cannot see, so a forward that fails (out of memory)
        # would keep every activation alive; backward gets the same values either way
        return t.detach()

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
                      train_peak_bytes=peak, params_active=active_parameters(model))


TEMPORARY = "temporary"
# what a simulated step's memory is made of, at its peak (StepMemory.at_peak), in this order
CATEGORIES = ("weights", "buffers", "gradients", "optimizer_state", "batch", "activations", "kv_cache", TEMPORARY)


class LiveBytes(EagerDispatchMode):
    """While entered, the bytes of the tensor storages alive, and the most at once (``peak``): every storage an op
    creates, and those passed to :meth:`track` (what was alive before). A storage counts once, however many
    views share it, and leaves when it is freed (a weak reference to it). On meta this is the step's memory
    without any memory: what a device's allocator would have to hold, less its rounding and fragmentation.

    Each storage has a category (:data:`CATEGORIES`): given by :meth:`track`, else ``temporary`` until
    :meth:`label` names it (the activations as autograd saves them, the gradients after backward, the optimizer's
    state after its step). :meth:`at_peak` gives what was alive at the peak, by category."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, tuple[weakref.ref, list]] = {}
        self._log: list[list] = []  # per storage: [bytes, category, clock when created, clock when freed or None]
        self._clock = 0
        self._peak_clock = 0

    def track(self, *tensors: Any, category: str = TEMPORARY, size: Optional[Callable[[torch.Tensor], int]] = None
              ) -> None:
        """Count ``tensors`` alive from now, in ``category``: each storage's bytes, or ``size(tensor)`` (the bytes a
        weight takes as stored, where the step computes with it in another dtype: :func:`int8_size`)."""
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
            nbytes = storage.nbytes() if size is None else size(t)
            entry = [nbytes, category, self._clock, None]
            self._log.append(entry)
            self._refs[key] = (weakref.ref(storage, lambda _, key=key: self._free(key)), entry)
            self.live += nbytes
            if self.live > self.peak:
                self.peak, self._peak_clock = self.live, self._clock
            self._clock += 1

    def label(self, tensors: Any, category: str) -> None:
        """Name the category of these tensors' storages, where they were created in the step (``temporary``)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                found = self._refs.get(id(t.untyped_storage()))
                if found is not None and found[1][1] == TEMPORARY:
                    found[1][1] = category

    def at_peak(self) -> dict[str, int]:
        """The bytes alive at the peak, by category (every one of :data:`CATEGORIES`; they add up to ``peak``)."""
        out = dict.fromkeys(CATEGORIES, 0)
        for size, category, born, died in self._log:
            if born <= self._peak_clock and (died is None or died > self._peak_clock):
                out[category] += size
        return out

    def _free(self, key: int) -> None:
        found = self._refs.pop(key, None)
        if found is not None:
            self.live -= found[1][0]
            found[1][3] = self._clock
            self._clock += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*tree_leaves(out))
        return out


@dataclass(frozen=True)
class StepMemory:
    """A simulated step: the most bytes alive at once, the activations saved for backward (None for inference),
    and what was alive at the peak by category."""

    peak_bytes: int
    activations_bytes: Optional[int]
    at_peak: dict[str, int]


def simulate_step(model: nn.Module, inputs: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer],
                  autocast: Callable[[], ContextManager], *, training: bool = True, int8: bool = False) -> StepMemory:
    """Run one step (forward with the loss, backward, optimizer step; a forward pass without gradients for an
    inference build) and return the most bytes alive at once during it, counting what was alive before (weights,
    buffers, gradients, optimizer state, the batch), the bytes of the activations saved for backward, and what was
    alive at the peak. For the peak of a later step, call it with the optimizer's state created and the gradients
    cleared (``zero_grad(set_to_none=True)``), as they are between steps; they are cleared again after. ``int8``: the
    weights are stored so (:func:`int8_size`), the step computing with them as built."""
    live = LiveBytes()
    def state() -> list[Any]:
        return [v for s in (optimizer.state.values() if optimizer is not None else ()) for v in s.values()]

    def grads() -> list[Optional[torch.Tensor]]:
        return [p.grad for p in model.parameters()]

    live.track(*model.parameters(), category="weights", size=int8_size if int8 else None)
    for category, tensors in (("buffers", model.buffers()), ("gradients", grads()), ("batch", inputs.values()),
                              ("optimizer_state", state())):
        live.track(*tensors, category=category)
    activations = None
    with live:
        if training:
            with SavedActivations(model, on_save=lambda t: live.label([t], "activations")) as saved, autocast():
                loss = model(**inputs)
            loss.backward()
            del loss
            live.label(grads(), "gradients")
            if optimizer is not None:
                optimizer.step()
                live.label(state(), "optimizer_state")
            activations = saved.bytes
        else:
            with torch.no_grad(), autocast():
                model(**inputs)
    model.zero_grad(set_to_none=True)
    return StepMemory(live.peak, activations, live.at_peak())
