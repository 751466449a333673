"""Every private PyTorch symbol flopsweep uses, in this one file, behind a version check: a PyTorch upgrade that
moves one of them breaks here, not in nine places.

The dispatch-mode base class and pytree helper (``torch.utils._python_dispatch``, ``torch.utils._pytree``), the
autograd sequence numbers that tie a backward node to the forward call that made it, a storage's identity, an op's
schema, the fused-attention choice the CPU would make, the autograd engine's end-of-backward callback, the module
a job's first optimizer imports lazily, FlexAttention's higher-order ops and the checks of its front end that a count
lifts, and what counting ranks on a fake process group reaches into (DTensor's shape propagation, functional
collectives, device meshes, memory trackers).

Why one file (over 300 lines): the project keeps each library's private symbols in one file, so that what a PyTorch
release moves is found in one place, behind the one version check above it.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["EagerDispatchMode", "FLEX_ATTENTION", "FLEX_ATTENTION_BACKWARD", "is_higher_order", "noop_mask",
           "no_modes", "tree_leaves", "sequence_nr", "node_sequence_nr", "storage_id", "local_storage", "is_op_packet",
           "op_schema", "is_inplace", "fused_sdp_choice", "at_backward_end", "LAZY_MODULES"]

TESTED = ((2, 13), (2, 14))  # torch releases these were written against: from the first, below the second


def _check_version() -> None:
    release = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if not TESTED[0] <= release < TESTED[1]:
        warnings.warn(f"flopsweep uses private PyTorch interfaces checked on torch {TESTED[0][0]}.{TESTED[0][1]}; "
                      f"this is torch {torch.__version__}: counts may fail where they moved "
                      "(flopsweep/measure/_torch.py lists them)", RuntimeWarning, stacklevel=2)


_check_version()

LAZY_MODULES = ("torch._dynamo",)  # imported by a job's first optimizer, or init on meta: a worker preloads them


class EagerDispatchMode(TorchDispatchMode):
    """A dispatch mode that sees every op of an eager step. PyTorch wraps each mode's ``__torch_dispatch__`` in
    ``torch._disable_dynamo`` so that ``torch.compile`` does not trace into it: three Python calls around every op,
    for every mode (8% of counting ResNet-BK's 660k ops). flopsweep's modes run eager steps only, so they opt out,
    through the class hook PyTorch documents for that (``_should_skip_dynamo``).

    Higher-order ops reach the mode too (``supports_higher_order_operators``): ``flex_attention`` and its backward,
    each seen as the one fused kernel it is on a GPU (its unfused reference runs unseen under the mode, on any device:
    :func:`_eager_everywhere`, while a mode is entered, lets it run on ``meta`` and in a CPU training step).
    Another higher-order op is refused in one line (:meth:`higher_order`): its inner ops would go unseen."""

    supports_higher_order_operators = True
    _entered = 0  # modes entered now, on any thread's stack: the flex_attention front end is let through meanwhile

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __enter__(self) -> Any:
        if EagerDispatchMode._entered == 0:
            _eager_everywhere(True)
        EagerDispatchMode._entered += 1
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        EagerDispatchMode._entered -= 1
        if EagerDispatchMode._entered == 0:
            _eager_everywhere(False)

    def run(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run what the mode sees: an op, or a higher-order op whole (:meth:`higher_order`)."""
        return self.higher_order(func, args, kwargs) if is_higher_order(func) else func(*args, **kwargs)

    @staticmethod
    def higher_order(func: Any, args: tuple, kwargs: dict) -> Any:
        """Run a higher-order op this mode sees whole (its inputs and outputs, not its inner ops)."""
        if func not in FLEX_ATTENTION_OPS:
            raise NotImplementedError(f"the higher-order op {func.name()} is not counted: flopsweep counts "
                                      "flex_attention's, and would miss the ops inside this one")
        return func(*args, **kwargs)


FLEX_ATTENTION_OPS = (torch.ops.higher_order.flex_attention, torch.ops.higher_order.flex_attention_backward)
FLEX_ATTENTION, FLEX_ATTENTION_BACKWARD = FLEX_ATTENTION_OPS


def is_higher_order(func: Any) -> bool:
    return isinstance(func, torch._ops.HigherOrderOperator)


_eager_state: dict[str, Any] = {}


def _eager_everywhere(on: bool) -> None:
    """While a mode is entered (``on``), run what the model compiles eagerly (``torch.compiler.set_stance``'s
    ``force_eager``: a count sees eager ops, and Hugging Face compiles ``flex_attention`` and its block masks), and let
    ``flex_attention``'s front end run its reference kernel on ``meta`` and in a CPU training step (it refuses both,
    where its compiled kernels do not run); ``on=False`` puts both back as they were."""
    import torch.nn.attention.flex_attention as flex

    if on:
        stance = torch.compiler.set_stance("force_eager")
        _eager_state.update(stance=stance, validate=flex._validate_device,
                            debug=flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG)
        flex._validate_device = lambda *_: None
        flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
    elif _eager_state:
        flex._validate_device = _eager_state.pop("validate")
        flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = _eager_state.pop("debug")
        _eager_state.pop("stance").__exit__(None, None, None)


def no_modes() -> Any:
    """A context in which no dispatch mode sees the ops run (a counter's own arithmetic on a block mask)."""
    from torch.utils._python_dispatch import _disable_current_modes
    return _disable_current_modes()


def noop_mask() -> Any:
    """The mask a ``BlockMask`` made without one has (every pair kept)."""
    from torch.nn.attention.flex_attention import noop_mask as noop
    return noop


def sequence_nr() -> int:
    """The sequence number the next autograd node made in this thread will get."""
    return torch._C._autograd._get_sequence_nr()


def node_sequence_nr() -> Optional[int]:
    """The sequence number of the autograd node running now (in backward), or None outside backward."""
    node = torch._C._current_autograd_node()
    return None if node is None else node._sequence_nr()


def storage_id(t: torch.Tensor) -> int:
    """What identifies ``t``'s storage while it lives (views of one storage share it); a DTensor's, its local
    shard's."""
    return local_storage(t)._cdata


def local_storage(t: torch.Tensor) -> Any:
    """``t``'s storage; a DTensor's, its local shard's, read without dispatching an op (``to_local()`` makes a view,
    which a counter would see)."""
    return getattr(t, "_local_tensor", t).untyped_storage()


def is_op_packet(op: Any) -> bool:
    """Whether ``op`` is an op's packet (``torch.ops.aten.mm``: every overload of it), as a counter looks ops up."""
    return isinstance(op, torch._ops.OpOverloadPacket)


def op_schema(func: Any) -> Any:
    """An aten overload's schema (``torch._C.FunctionSchema``: its arguments, returns and aliasing)."""
    return func._schema


_INPLACE = getattr(torch.Tag, "inplace", None)  # torch 2.11 (on our GPU machines) lacks the tag


def is_inplace(func: Any) -> bool:
    """Whether PyTorch tags the overload in-place (it mutates its first argument and returns it or nothing); False
    on a torch without the tag, where the meta kernel cache then just does not cache in-place ops."""
    return _INPLACE is not None and _INPLACE in func.tags


def fused_sdp_choice(*args: Any, **kwargs: Any) -> int:
    """The attention backend PyTorch would choose for these inputs (an ``SDPBackend`` value)."""
    return torch._fused_sdp_choice(*args, **kwargs)


def at_backward_end(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the backward pass running now ends (from inside a backward hook)."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)


# Ranks counted on a fake process group (measure/ranks.py). Imported when first asked for: torch.distributed's
# tensor and testing modules take a second to import, and most jobs never count ranks.

def fake_store() -> Any:
    """The store a fake process group starts from (``init_process_group("fake", store=...)``); importing its module
    registers the ``fake`` backend."""
    from torch.testing._internal.distributed.fake_pg import FakeStore
    return FakeStore()


def all_gather_autograd(t: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
    """``t`` all-gathered over ``group`` along ``dim``, its backward a reduce-scatter of the gradient (context
    parallelism's keys and values)."""
    from torch.distributed._functional_collectives import all_gather_single_autograd
    return all_gather_single_autograd(t, dim, group)


def all_to_all_autograd(t: torch.Tensor, group: Any) -> torch.Tensor:
    """``t``'s rows split evenly over ``group`` and exchanged (each rank gets its share of every rank's rows), its
    backward the same exchange of the gradient (expert parallelism's dispatch and combine)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd
    return all_to_all_single_autograd(t, None, None, group)


def flatten_mesh(mesh: Any, name: str) -> Any:
    """A device mesh of several dimensions as one (``DeviceMesh._flatten``), derived from the same root."""
    return mesh._flatten(name)


def mesh_of_group(group: Any, ranks: list[int], name: str) -> Any:
    """A one-dimensional device mesh over ``group`` (its ``ranks``), named ``name``."""
    from torch.distributed.device_mesh import DeviceMesh
    return DeviceMesh.from_group(group, "cpu", mesh=torch.tensor(ranks), mesh_dim_names=(name,))


def function_mode_active(mode: Any) -> bool:
    """Whether ``mode`` (a ``TorchFunctionMode``) is on this thread's stack: the autograd engine reruns a checkpointed
    call without the modes its forward ran under."""
    from torch.overrides import _get_current_function_mode_stack
    return mode in _get_current_function_mode_stack()


def process_group_of(obj: Any) -> Any:
    """The ``ProcessGroup`` a c10d op received as a script object (``c10d._allgather_base_``'s ``process_group``)."""
    from torch._C._distributed_c10d import ProcessGroup
    return ProcessGroup.unbox(obj)


class _Propagating:
    """Entered by DTensor each time it computes an op's output shape from global shapes (the op run on fake tensors
    of the global shape): a counter must not count those runs, only the local op that follows."""

    depth = 0

    def __enter__(self) -> None:
        _Propagating.depth += 1

    def __exit__(self, *exc: Any) -> None:
        _Propagating.depth -= 1


class DTensorPropagation:
    """While entered, :meth:`running` says whether DTensor is propagating shapes (see :class:`_Propagating`); it
    uses the hook PyTorch gives for locking that step (``ShardingPropagator._fake_mode_lock``, a no-op by default)."""

    def __enter__(self) -> "DTensorPropagation":
        from torch.distributed.tensor._sharding_prop import ShardingPropagator
        self._owner, self._before = ShardingPropagator, ShardingPropagator._fake_mode_lock
        ShardingPropagator._fake_mode_lock = _Propagating()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._owner._fake_mode_lock = self._before

    @staticmethod
    def running() -> bool:
        return _Propagating.depth > 0


def fake_tensor_mode() -> Any:
    """A fake tensor mode that takes real tensors too (a model's buffers made before it): tensors with shapes and
    no data, on the device they name."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode(allow_non_fake_inputs=True)


def memory_tracker(model: Any, optimizer: Any, fsdp: bool) -> Any:
    """PyTorch's memory tracker for one step of ``model``: ``FSDPMemTracker`` where ``model`` is FSDP's root (it
    tells sharded from gathered parameters and the collectives' buffers), else ``MemTracker``; either one blind to
    DTensor's shape propagation (see :class:`_Propagating`), whose global-shape tensors no rank holds. It keeps the
    process's peak only, not each module's (which it would otherwise update for every module at every op: a cost
    that grows with the square of the layers), and :func:`peak_since` restarts the peak."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    class Local(FSDPMemTracker if fsdp else MemTracker):  # type: ignore[misc, valid-type]
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if _Propagating.depth:
                return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

        def _update_peak_stats(self, peak_state: Any) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    if fsdp:
        return Local(model, optimizer)
    tracker = Local()
    tracker.track_external(model, optimizer)
    return tracker


def peak_since(tracker: Any) -> dict[str, int]:
    """A memory tracker's peak since it was entered or last asked (:func:`memory_snapshot`), the peak then restarted
    from the memory held now."""
    peak = memory_snapshot(tracker)
    tracker._peak_mem_snap = tracker.get_tracker_snapshot("current")
    tracker._peak_mem = {dev: snap["Total"] for dev, snap in tracker._peak_mem_snap.items()}
    return peak


def memory_snapshot(tracker: Any, which: str = "peak") -> dict[str, int]:
    """A memory tracker's bytes by its categories (``Sharded Param``, ``Activation``, ...; ``Total``), all devices."""
    out: dict[str, int] = {}
    for categories in tracker.get_tracker_snapshot(which).values():
        for key, value in categories.items():
            name = str(getattr(key, "value", key))
            out[name] = out.get(name, 0) + value
    return out


def decomposes(func: Any) -> bool:
    """Whether an op is a composite that runs as other ops (``aten.flatten``, ``aten.where.ScalarOther``): below
    autograd (inside DTensor's dispatch) such an op reaches a dispatch mode before its pieces do."""
    return func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd)


def reset_compiler() -> None:
    """Forget every graph ``torch.compile`` made in this process (so that a job compiles its own model anew, not a
    dynamic-shape graph an earlier job of another batch left)."""
    import torch._dynamo

    torch._dynamo.reset()
