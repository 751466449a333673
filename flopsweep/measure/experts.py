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
