"""ResNet-BK: the dispatch-level count beside the reference repository's analytic counter, per component
and across sequence lengths (figures for docs/resnet_bk.md).

    .venv/bin/python benchmarks/resnet_bk_vs_reference.py [--batch 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from flopsweep.build.model import build
from flopsweep.config.compose import register_configs
from flopsweep.config.resolve import resolve
from flopsweep.config.schema import CONF_DIR
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
import resnet_bk_reference as reference  # noqa: E402 - the reference's counter, re-implemented for the tests


def counted(batch: int, n_seq: int, optimizer: str = "adamw"):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["model=resnet_bk_baseline", "device=meta", f"batch.size={batch}",
                                           f"model.n_seq={n_seq}", f"optimizer={optimizer}"])
    spec = resolve(cfg)
    built = build(spec)
    with MetaLikeCPU():
        return spec, count_step(built.model, built.inputs, built.optimizer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    register_configs()
    spec, count = counted(args.batch, 128)
    ref = reference.count(reference.dims_of(spec.model, spec.batch))
    rows = {r["module"]: r for r in count.module_table(2)}
    names = {"embedding": ["tok_embedding", "pos_embedding"], "final_layernorm": ["norm"], "lm_head": ["lm_head"]}
    print(f"ResNet-BK baseline, batch {args.batch}, N 128 (forward / backward, all FLOPs: matmul + elementwise)")
    print(f"{'component':<16} {'reference fwd':>15} {'counted fwd':>15} {'reference bwd':>15} {'counted bwd':>15}")
    for part, flops in ref.breakdown.items():
        if part.startswith("layer_"):
            modules = [f"blocks.{part.split('_')[1]}"]
        else:
            modules = names[part]
        fwd = sum(rows[m]["forward_flops"] + rows[m]["forward_elementwise"] for m in modules if m in rows)
        bwd = sum(rows[m]["backward_flops"] + rows[m]["backward_elementwise"] for m in modules if m in rows)
        print(f"{part:<16} {flops.forward:>15,} {fwd:>15,} {flops.backward:>15,} {bwd:>15,}")
    loss = rows.get("loss", {})
    print(f"{'loss (not in ref)':<16} {0:>15,} {loss.get('forward_elementwise', 0):>15,} {0:>15,} "
          f"{loss.get('backward_elementwise', 0):>15,}")
    opt = count.optimizer.elementwise
    print(f"{'optimizer':<16} {ref.optimizer:>15,} {opt:>15,}")
    total = count.forward.matmul + count.forward.elementwise + count.backward.matmul + count.backward.elementwise + opt
    print(f"{'total':<16} {ref.total:>15,} {total:>15,}")
    print(f"matmul-class only, counted: forward {count.forward.matmul:,}, backward {count.backward.matmul:,}")
    print()
    print("sequence-length scaling (batch 1): forward FLOPs per token")
    print(f"{'N':>6} {'reference':>14} {'counted':>14}")
    for n in (128, 256, 512, 1024, 2048):
        spec, c = counted(1, n)
        r = reference.count(reference.dims_of(spec.model, spec.batch))
        print(f"{n:>6} {r.forward / n:>14,.0f} {(c.forward.matmul + c.forward.elementwise) / n:>14,.0f}")


if __name__ == "__main__":
    main()
