"""GaLore AdamW, an optimizer PyTorch does not ship, written here to be measured like any other (its FLOPs counted
from the ops it runs, its state sized from the tensors it keeps)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose matrices take low-rank steps (Zhao et al. 2024, GaLore). A matrix's gradient ``G`` (m x n) is
    projected on its top ``rank`` singular vectors, on the shorter side: ``P^T G`` (r x n, P m x r) when m <= n,
    else ``G Q`` (m x r, Q n x r). Adam's moments live in that space; the step goes back through the projector,
    times ``scale``. The projector comes from an SVD of the gradient at the first step and every
    ``update_proj_gap`` steps after. Vectors, and matrices whose shorter side is not longer than ``rank``, take
    AdamW's step. Weight decay is decoupled (AdamW's)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, rank: int, update_proj_gap: int, scale: float):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "rank": rank,
                                  "update_proj_gap": update_proj_gap, "scale": scale})

    @property
    def periodic_ops(self) -> dict[str, int]:
        """The ops its first step runs that later steps run once in so many: the SVDs, every ``update_proj_gap``
        steps. A job's ``flops/optimizer_mean`` spreads their cost over that many steps; any optimizer may say
        the same of its own periodic work."""
        return {"aten._linalg_svd": self.param_groups[0]["update_proj_gap"]}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            rank = group["rank"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                steps = state.get("steps", 0)
                low_rank = p.dim() == 2 and min(p.shape) > rank
                left = low_rank and p.shape[0] <= p.shape[1]
                if low_rank:
                    if steps % group["update_proj_gap"] == 0:
                        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
                        state["projector"] = (u[:, :rank] if left else vh[:rank].T).to(grad.dtype)
                    projector = state["projector"]
                    grad = projector.T @ grad if left else grad @ projector
                if "exp_avg" not in state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
                state["steps"] = steps = steps + 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (exp_avg_sq / (1 - beta2 ** steps)).sqrt_().add_(group["eps"])
                update = exp_avg / (1 - beta1 ** steps) / denominator
                if low_rank:
                    update = (projector @ update if left else update @ projector.T) * group["scale"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
