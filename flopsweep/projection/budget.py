"""The inverse of a projection: what a budget (FLOPs, GPU-hours, days or dollars) buys: the tokens it trains a
measured model on, by method, and which presets it trains compute-optimally."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from flopsweep.core.errors import ConfigError, require
from flopsweep.core.text import billions, share, whole
from flopsweep.projection.parallel import PerDevice
from flopsweep.projection.scaling import FITS, optimum
from flopsweep.projection.parallel import table as per_device_table
from flopsweep.projection.training import TOKENS_PER_PARAM, Hardware, PerToken, Plan, cost_row, total_flops


BUDGET_KINDS = ("flops", "gpu_hours", "days", "usd")
# the MFU of a FLOPs budget where none is given or predicted: the tokens it buys do not depend on it, only the hours
# the FLOPs take; 40%, what well-tuned large dense training reaches (PaLM 46%, Megatron-LM's GPT-3 runs 40-50%)
DEFAULT_MFU = 0.4


def budget_flops(kind: str, value: float, hw: Hardware, bubble: float = 0.0) -> float:
    """The training FLOPs a budget of ``value`` (FLOPs, GPU-hours, wall-clock days on all GPUs, or dollars) buys;
    a pipeline ``bubble`` idles the GPUs that fraction of the time bought."""
    require(kind in BUDGET_KINDS, "budget", kind, f"must be one of {', '.join(BUDGET_KINDS)}")
    require(value > 0, f"budget_{kind}", value, "must be > 0")
    if kind == "flops":
        return float(value)
    busy = hw.flops_per_gpu_hour * (1.0 - bubble)
    if kind == "gpu_hours":
        return value * busy
    if kind == "days":
        return value * 24.0 * hw.gpus * busy
    if hw.price_per_gpu_hour is None or hw.price_per_gpu_hour == 0:
        raise ConfigError("price", hw.price_per_gpu_hour, "a budget in dollars needs a price per GPU-hour > 0")
    return value / hw.price_per_gpu_hour * busy


def tokens_within(flops: float, cost: PerToken, recompute: bool = False) -> dict[str, Optional[float]]:
    """Tokens a budget of ``flops`` trains (or, for inference, processes), by method (the optimizer step left out:
    it is per step)."""
    per_token = total_flops(cost, Plan(1.0, None, recompute))
    return {m: (flops / v if v else None) for m, v in per_token.items()}


@dataclass(frozen=True)
class Fit:
    model: str
    params: int
    tokens: float          # compute-optimal: TOKENS_PER_PARAM × params
    flops: float           # 6ND (+ attention for decoders) for those tokens
    share: float           # of the budget
    fits: bool
    bought: float          # the tokens the whole budget trains it on, at the same cost a token
    loss: float            # Hoffmann et al.'s fit at (params, bought)


def compute_optimal_fits(flops: float, costs: list[PerToken], recompute: bool = False) -> list[Fit]:
    """For each model, the FLOPs of compute-optimal training (6ND+attention where it applies, else 6ND), whether
    the budget covers it, and the loss Hoffmann et al.'s fit predicts for it trained on the whole budget; smallest
    first."""
    out = []
    for cost in costs:
        plan = Plan.compute_optimal(cost.params, recompute)
        totals = total_flops(cost, plan)
        need = totals["6ND+attention"] if totals["6ND+attention"] is not None else totals["6ND"]
        bought = flops * plan.tokens / need
        out.append(Fit(cost.model, cost.params, plan.tokens, need, need / flops, need <= flops, bought,
                       FITS["hoffmann"].loss(cost.params, bought)))
    return sorted(out, key=lambda f: f.flops)


def _amount(kind: str, value: float, flops: float) -> str:
    """The budget as given, then its FLOPs (counts in B, FLOPs as 1.234e+23, as every line after it)."""
    given = {"usd": f"${value:,.0f}", "gpu_hours": f"{value:,.0f} GPU-hours",
             "days": f"{value:,.4g} days on all GPUs"}.get(kind)
    return f"{given} = {flops:.3e} FLOPs" if given else f"{flops:.3e} FLOPs"


def _of_budget(part: float) -> str:
    """What a preset needs of the budget: ``16.8% of``, and from ten budgets on ``21,413×`` (it read 2141329.2%)."""
    return f"{share(part)} of" if part < 10 else f"{part:,.0f}×"


def budget_report(flops: float, kind: str, value: float, cost: PerToken, hardware: Hardware, presets: list[PerToken],
                  recompute: bool = False, devices: Optional[PerDevice] = None,
                  tokens_per_param: float = TOKENS_PER_PARAM, inference_tokens: Optional[float] = None
                  ) -> dict[str, Any]:
    """What a budget of ``flops`` buys ``cost``'s model, by method, and which of ``presets`` it trains
    compute-optimally: the text to print (``text``) and the same as data."""
    tokens = tokens_within(flops, cost, recompute)
    fits = compute_optimal_fits(flops, presets, recompute) if cost.training else []
    bubble = devices.bubble if devices else 0.0
    takes = cost_row("budget", flops, hardware, bubble) if kind == "flops" else None  # the others are time already
    lines = [f"budget {_amount(kind, value, flops)}"
             + (f", {whole(takes.gpu_hours)} GPU-hours ({whole(takes.days)} days)" if takes else "")
             + f" on {hardware.gpus:,} × {hardware.gpu} at MFU {hardware.mfu:.1%} ({hardware.mfu_source})"
             + (f", less a pipeline bubble of {devices.bubble:.1%}" if devices else ""), ""]
    if devices:
        lines += [per_device_table(devices, hardware.memory_bytes), ""]
    lines += [f"{cost.model} (N = {cost.params:,}) " + ("trains on" if cost.training else "processes (forward only)")
              + ", by method:"]
    lines += [f"  {m:14s} {billions(t)} tokens ({whole(t / cost.params)} per parameter)" if t else f"  {m:14s} n/a"
              for m, t in tokens.items()]
    optima = [optimum(flops, "rule", tokens_per_param), *(optimum(flops, name) for name in FITS)] \
        if cost.training else []
    if optima:
        lines += ["", "what the budget is best spent on (C = 6ND; the loss predicted by the fit, Hoffmann's for "
                  "a rule):"]
        lines += [f"  {o.method:16s} N {o.params / 1e9:10,.2f}B  D {o.tokens / 1e9:12,.1f}B tokens  "
                  f"predicted loss {o.loss:.3f}" + (f"  + serving {billions(inference_tokens)} tokens (2N each): "
                                                    f"{flops + 2 * o.params * inference_tokens:.3e} FLOPs in all"
                                                    if inference_tokens else "") for o in optima]
    if fits:
        lines += ["", f"compute-optimal ({TOKENS_PER_PARAM} tokens per parameter, 6ND + attention) for each "
                  "language-model preset at its sequence length, N the parameters a token uses; and the loss "
                  "Hoffmann et al.'s fit predicts for it trained on the whole budget:"]
        width, needs = max(len(f.model) for f in fits), max(len(_of_budget(f.share)) for f in fits)
        best = min(fits, key=lambda f: f.loss)
        lines += [f"  {f.model:{width}s}  N {f.params / 1e9:8.2f}B  needs {f.flops:.3e} FLOPs  "
                  f"{_of_budget(f.share):>{needs}s} the budget  {'fits' if f.fits else 'does not fit':12s}  "
                  f"budget: {whole(f.bought / f.params):>9s} tokens/param, loss {f.loss:.3f}"
                  + ("  <- lowest" if f is best else "") for f in fits]
    return {"text": "\n".join(lines), "budget": {"kind": kind, "value": value, "flops": flops, "mfu": hardware.mfu,
                                                 "mfu_source": hardware.mfu_source,
                                                 "gpu_hours": takes.gpu_hours if takes else None},
            "tokens": tokens, "compute_optimal": [f.__dict__ for f in fits],
            "optimum": [{**o.__dict__, "with_inference_flops": flops + 2 * o.params * inference_tokens
                         if inference_tokens else None} for o in optima],
            "parallel": devices.to_dict() if devices else None}
