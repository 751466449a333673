"""Compute-optimal answers for a training budget: the 20-tokens-per-parameter rule and the fitted loss laws."""

import math

import pytest

from flopsweep.projection.scaling import FITS, optimum


@pytest.mark.parametrize("fit", sorted(FITS))
@pytest.mark.parametrize("flops", [1e21, 5.76e23, 1e25])
def test_the_fitted_optimum_is_the_minimum_of_the_loss_on_the_budget_curve(fit, flops):
    law = FITS[fit]
    best = optimum(flops, fit)
    # a numeric minimisation along N·D = C/6, independent of the closed form: a fine grid in log N, then refined
    lo, hi = math.log(1e6), math.log(1e14)
    for _ in range(6):
        grid = [lo + (hi - lo) * i / 400 for i in range(401)]
        losses = [law.loss(math.exp(x), flops / 6 / math.exp(x)) for x in grid]
        i = min(range(len(grid)), key=losses.__getitem__)
        lo, hi = grid[max(i - 2, 0)], grid[min(i + 2, 400)]
    assert best.params == pytest.approx(math.exp((lo + hi) / 2), rel=1e-4)
    assert 6 * best.params * best.tokens == pytest.approx(flops)
    assert best.loss == pytest.approx(min(losses), rel=1e-9)


def test_chinchillas_budget_gives_chinchilla_by_the_rule():
    # Chinchilla: 70 B parameters on 1.4 T tokens, 20 a parameter: 6 · 70e9 · 1.4e12 = 5.88e23 FLOPs
    rule = optimum(5.88e23)
    assert rule.params == pytest.approx(70e9) and rule.tokens == pytest.approx(1.4e12)


def test_more_tokens_per_parameter_gives_a_smaller_model_for_the_same_budget():
    over = optimum(5.88e23, tokens_per_param=200)      # LLaMA-style over-training
    assert over.params == pytest.approx(70e9 / math.sqrt(10)) and over.tokens == pytest.approx(200 * over.params)
    assert over.loss > optimum(5.88e23, "hoffmann").loss  # off the fitted optimum, the predicted loss is higher
