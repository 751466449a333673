"""What MLflow records of a projection (``flopsweep.sinks.projections.log_projection``): its run's name, params, metrics
and files."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any

from flopsweep.core import metrics as M
from flopsweep.projection.scaling import FITS
from flopsweep.projection.serving import ServingPlan
from flopsweep.projection.training import Hardware, PerToken, Projection


def training_record(projection: Projection) -> dict[str, Any]:
    data = projection.to_dict()
    hw, plan = data["hardware"], data["plan"]
    params = {**{f"plan.{k}": v for k, v in plan.items()}, **{f"hardware.{k}": v for k, v in hw.items()},
              "model.name": projection.cost.model, "model.params": projection.cost.params,
              "model.seq_len": projection.cost.seq_len}
    metrics = {M.projection_metric(row["method"], q): row[q] for row in data["rows"]
               for q in M.PROJECTION_QUANTITIES}
    if data["parallel"]:
        par = data["parallel"]
        params.update({f"parallel.{k}": v for k, v in {**par["layout"], "micro_batches": par["micro_batches"]}
                       .items()})  # as used: pp when left out
        metrics.update({M.per_device_metric(q): par[q]["device"] for q in M.PER_DEVICE_QUANTITIES})
        metrics[M.PIPELINE_BUBBLE] = par["bubble"]
    return {"name": f"{projection.cost.model}|{plan['tokens']:.3g} tokens|{hw['gpus']}x{hw['gpu']}",
            "source": projection.cost.source, "params": params, "metrics": metrics,
            "artifacts": {"projection.json": json.dumps(data, indent=2, default=str) + "\n",
                          "projection.txt": projection.table() + "\n"}}



def budget_record(report: dict[str, Any], cost: PerToken, hardware: Hardware) -> dict[str, Any]:
    """What a budget buys (:func:`flopsweep.projection.budget.budget_report`): the budget and hardware as params, the
    tokens by method and each rule's optimum as metrics, the text and the data (the presets' ranking in it) as
    files."""
    b = report["budget"]
    params = {"budget.kind": b["kind"], "budget.value": b["value"], "budget.mfu_source": b["mfu_source"],
              **{f"hardware.{k}": v for k, v in asdict(hardware).items()},
              "model.name": cost.model, "model.params": cost.params, "model.seq_len": cost.seq_len}
    metrics = {M.BUDGET_FLOPS: b["flops"], M.BUDGET_GPU_HOURS: b["gpu_hours"],
               **{M.budget_tokens_metric(method): tokens for method, tokens in report["tokens"].items()},
               **{M.budget_optimum_metric(o["method"] if o["method"] in FITS else "rule", q): o[q]
                  for o in report["optimum"] for q in ("params", "tokens", "loss")}}  # the rule: k tokens/param
    if report["parallel"]:
        metrics.update({M.per_device_metric(q): report["parallel"][q]["device"] for q in M.PER_DEVICE_QUANTITIES})
    data = {k: v for k, v in report.items() if k != "text"}
    return {"name": f"{cost.model}|budget {b['flops']:.3g} FLOPs|{hardware.gpus}x{hardware.gpu}",
            "source": cost.source, "params": params, "metrics": metrics,
            "artifacts": {"budget.json": json.dumps(data, indent=2, default=str) + "\n",
                          "budget.txt": report["text"] + "\n"}}


def serving_record(plan: ServingPlan) -> dict[str, Any]:
    """A serving plan: its generation and hardware as params, the largest batch as a metric, each batch's figures as
    metrics over the batch (MLflow's charts plot them against it), the table, the data and the plot as files."""
    g, s = plan.generation, plan.serving
    params = {**{f"generation.{k}": v for k, v in asdict(g).items()},
              **{f"serving.{k}": v for k, v in asdict(s).items() if k != "gpu"},
              **{f"hardware.{k}": v for k, v in asdict(s.gpu).items()}}
    series = {M.serving_metric(q): [(r.batch, getattr(r, q)) for r in plan.rows] for q in M.SERVING_QUANTITIES}
    return {"name": f"{g.source.split(' ')[0]}|serve {g.prompt}+{g.new_tokens}|{s.replica}x{s.gpu.name}",
            "source": g.source, "params": params, "metrics": {M.SERVING_LARGEST_BATCH: plan.largest},
            "series": series, "artifacts": {"serving.json": json.dumps(plan.to_dict(), indent=2, default=str) + "\n",
                                            "serving.txt": plan.table() + "\n", "serving.png": serving_png(plan)}}


def serving_png(plan: ServingPlan) -> bytes:
    """Output tokens per second per GPU against the batch, and the time per output token on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r.batch for r in plan.rows]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot(batches, [r.output_tokens_per_s_per_gpu for r in plan.rows], marker="o", color="tab:blue")
    ax.set_xlabel("batch (sequences)")
    ax.set_ylabel("output tokens/s per GPU", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    other = ax.twinx()
    other.plot(batches, [r.tpot_s * 1e3 for r in plan.rows], marker="s", color="tab:orange")
    other.set_ylabel("time per output token (ms)", color="tab:orange")
    g, s = plan.generation, plan.serving
    ax.set_title(f"{g.source.split(' ')[0]}: {g.prompt:,} + {g.new_tokens:,} tokens on {s.replica} × {s.gpu.name}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
