"""Expert parallelism on one rank (``parallel.ep``): a mixture of experts' routed experts split over the ``ep`` ranks
of an expert-parallel group, each holding ``E / ep`` whole experts, the tokens routed to them exchanged by all-to-all
(Megatron-LM's and torchtitan's all-to-all dispatch).

A layer's router runs on the rank's own tokens as before. Each token goes once to each of its ``k`` experts: its
``T k`` rows (and their routing weights) are sent to the ranks that hold those experts and as many come back, the
rank's experts run on the rows they receive, the outputs go back by a second all-to-all and each token sums its
``k`` of them; backward exchanges the gradients the same two ways. On fake tensors the routing has no values: it is
taken as uniform, every rank receiving ``T k`` rows, as a balanced router (an auxiliary loss, Megatron-LM's
``aux_loss`` balancing) keeps it on average; no rows are dropped (no capacity factor).

The experts' weights are replicated over the ``dp x cp / ep`` ranks that hold the same experts (their
expert-data-parallel group, ``edp``): FSDP shards them, and their gradients are reduced, over that group, the other
weights over all ``dp x cp``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from flopsweep.core.errors import ConfigError
from flopsweep.measure._torch import all_to_all_autograd

EXPERT_DATA_DIM = "edp"  # the ranks holding the same experts: dp x cp / ep of them


class ExpertsShard(nn.Module):
    """The ``E / ep`` experts of ``experts`` (a Hugging Face experts module, its stacked weights cut to them) that one
    rank of the expert-parallel ``group`` holds, called as the module was: ``(hidden_states [T, H], top_k_index
    [T, k], top_k_weights [T, k]) -> [T, H]``."""

    def __init__(self, experts: nn.Module, ep: int, group: Any):
        super().__init__()
        total = experts.num_experts
        for name, p in list(experts.named_parameters(recurse=False)):
            if p.dim() >= 1 and p.shape[0] == total:
                setattr(experts, name, nn.Parameter(p.new_empty((total // ep, *p.shape[1:])),
                                                    requires_grad=p.requires_grad))
        experts.num_experts = total // ep
        self.experts, self.group = experts, group

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        tokens, k = top_k_index.shape
        rows = hidden_states.repeat_interleave(k, dim=0)  # a token once for each of its experts
        received = all_to_all_autograd(rows, self.group)
        weights = all_to_all_autograd(top_k_weights.reshape(-1, 1), self.group)
        local = torch.zeros((tokens * k, 1), dtype=top_k_index.dtype, device=top_k_index.device)  # ids: no values
        out = self.experts(received, local, weights)
        return all_to_all_autograd(out, self.group).view(tokens, k, -1).sum(dim=1)


def expert_parameters(part: nn.Module) -> set[int]:
    """The ids of the routed experts' weights of a stage whose experts are :class:`ExpertsShard`-s."""
    return {id(p) for m in part.modules() if isinstance(m, ExpertsShard) for p in m.parameters()}


def tensor_parallel_moe(block: nn.Module, tp_mesh: Any, sequence_parallel: bool) -> None:
    """A mixture-of-experts block split over the ``tp`` ranks of ``tp_mesh`` in place, as Megatron-LM's expert tensor
    parallelism (its size that of tp) and torchtitan's MoE plan run it: the block takes the whole sequence (gathered
    from its shards under sequence parallelism), the router runs whole on every rank, each expert's gate and up
    rows and down columns are split tp ways (so are a shared expert's), and the block's output, a partial sum on each
    rank, is all-reduced (reduce-scattered back to the shards under sequence parallelism). In backward the input's
    gradient, partial on each rank, is all-reduced (reduce-scattered), and so is the routing weights' (their products
    with partial outputs), and so is Qwen2-MoE's one-wide shared-expert gate's output's (it scales the shared expert's
    partial output: its weight's gradient is then whole on every rank)."""
    tp = tp_mesh.size()
    experts = block.get_submodule("experts")
    for name, p in list(experts.named_parameters(recurse=False)):
        if p.dim() < (3 if "down" in name else 2):  # a down bias [E, H] stays whole, as a row-parallel bias does
            continue
        dim = p.dim() - 1 if "down" in name else 1  # [E, H, F]: its columns; [E, 2F, H] and biases [E, 2F]: rows
        if p.shape[dim] % (tp if "down" in name else 2 * tp):
            raise ConfigError("parallel.tp", tp, f"must divide the experts' width ({p.shape[dim]} in {name})")
        shape = list(p.shape)
        shape[dim] //= tp
        setattr(experts, name, nn.Parameter(p.new_empty(shape), requires_grad=p.requires_grad))
    for shared in (m for n, m in block.named_children() if n.startswith("shared_expert") and _has_mlp(m)):
        for name, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            setattr(shared, name, _split_linear(getattr(shared, name), tp, dim))
    layout = Shard(1) if sequence_parallel else Replicate()

    def whole_input(module: nn.Module, args: tuple) -> tuple:
        x = args[0] if isinstance(args[0], DTensor) else DTensor.from_local(args[0], tp_mesh, [layout])
        return (x.redistribute(tp_mesh, [Replicate()]).to_local(grad_placements=[Partial()]), *args[1:])

    def summed_output(module: nn.Module, args: tuple, out: Any) -> Any:
        first = out[0] if isinstance(out, tuple) else out
        summed = DTensor.from_local(first, tp_mesh, [Partial()]).redistribute(tp_mesh, [layout]).to_local()
        return (summed, *out[1:]) if isinstance(out, tuple) else summed

    def summed_weights(module: nn.Module, args: tuple) -> tuple:
        hidden, index, weights = args[:3]
        weights = DTensor.from_local(weights, tp_mesh, [Replicate()]).to_local(grad_placements=[Partial()])
        return (hidden, index, weights, *args[3:])

    def summed_gate(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return DTensor.from_local(out, tp_mesh, [Replicate()]).to_local(grad_placements=[Partial()])

    block.register_forward_pre_hook(whole_input)
    block.register_forward_hook(summed_output)
    experts.register_forward_pre_hook(summed_weights)
    gate = getattr(block, "shared_expert_gate", None)
    if isinstance(gate, nn.Linear):
        gate.register_forward_hook(summed_gate)


def _has_mlp(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj"))


def _split_linear(linear: nn.Linear, tp: int, dim: int) -> nn.Linear:
    """The ``nn.Linear`` of one tensor-parallel rank's share: its output features (``dim`` 0) or input ones (1)
    divided by ``tp`` (the values are fake: only the shapes count)."""
    out, inp = linear.out_features, linear.in_features
    if (out, inp)[dim] % tp:
        raise ConfigError("parallel.tp", tp, f"must divide a shared expert's width ({(out, inp)[dim]})")
    weight = linear.weight
    return nn.Linear(inp // tp if dim else inp, out if dim else out // tp, bias=linear.bias is not None and not dim,
                     device=weight.device, dtype=weight.dtype)
