"""Compute-optimal training for a budget: the parameters and tokens a budget of training FLOPs is best spent on, by
the 20-tokens-per-parameter rule or by a fitted loss ``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al.
2022, "Training Compute-Optimal Large Language Models", approach 3; or the refit of Besiroglu et al. 2024,
"Chinchilla Scaling: A replication attempt"), both under ``C = 6·N·D``.

With ``C = 6ND`` the loss is smallest at ``N = G · (C/6)^(beta/(alpha+beta))`` and ``D = (C/6) / N``, where
``G = (alpha·A / (beta·B))^(1/(alpha+beta))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from flopsweep.core.errors import require


@dataclass(frozen=True)
class LossFit:
    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    def optimum(self, flops: float) -> tuple[float, float]:
        """The parameters and tokens that minimise the loss for ``flops = 6·N·D``."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        params = g * (flops / 6.0) ** (self.beta / (self.alpha + self.beta))
        return params, flops / 6.0 / params


FITS = {
    "hoffmann": LossFit("hoffmann", 1.69, 406.4, 410.7, 0.34, 0.28, "Hoffmann et al. 2022, approach 3"),
    "besiroglu": LossFit("besiroglu", 1.8172, 482.01, 2085.43, 0.3478, 0.3658,
                         "Besiroglu et al. 2024, the refit of Hoffmann et al.'s approach 3"),
}


@dataclass(frozen=True)
class Optimum:
    method: str
    params: float
    tokens: float
    loss: Optional[float]         # the fitted law's prediction (None for the rule)


MAX_TOKENS_PER_PARAM = 100_000


def check_tokens_per_param(tokens_per_param: float) -> None:
    """A rule of thumb's tokens a parameter: Chinchilla's 20; over-trained models far more (Llama 3 8B: about 1,900),
    none near 100,000."""
    require(0 < tokens_per_param <= MAX_TOKENS_PER_PARAM, "tokens-per-param", tokens_per_param,
            f"must be > 0 and at most {MAX_TOKENS_PER_PARAM:,} (Chinchilla's rule is 20; Llama 3 8B was trained at "
            "about 1,900)")


def optimum(flops: float, method: str = "rule", tokens_per_param: float = 20.0) -> Optimum:
    """The compute-optimal parameters and tokens of a budget of training ``flops``: ``method`` is ``rule``, a rule of
    ``tokens_per_param`` tokens a parameter (``D = k·N``, so ``N = sqrt(C / 6k)``), or a name of :data:`FITS`; the
    loss is predicted by the Hoffmann fit for the rule, by the fit itself otherwise."""
    require(flops > 0, "budget", flops, "must be > 0 FLOPs")
    if method in FITS:
        fit = FITS[method]
        params, tokens = fit.optimum(flops)
        return Optimum(method, params, tokens, fit.loss(params, tokens))
    require(method == "rule", "fit", method, f"must be rule or one of {', '.join(FITS)}")
    check_tokens_per_param(tokens_per_param)
    params = (flops / (6.0 * tokens_per_param)) ** 0.5
    tokens = tokens_per_param * params
    return Optimum(f"{tokens_per_param:g} tokens/param", params, tokens, FITS["hoffmann"].loss(params, tokens))
