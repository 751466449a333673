"""The GPU benchmark's training jobs (bench_gpu.py) predicted from a count on meta with a calibration profile, eager and
fused: the figures of docs/benchmarks.md computed after the H100 run, with the profile it measured (the shipped one by
default), so that they can be checked without a GPU.

    .venv/bin/python benchmarks/gpu/predict_on_meta.py [--profile flopsweep/measure/data/nvidia-h100-80gb-hbm3.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.core import metrics as M
from flopsweep.run.job import run_job

SHIPPED = Path(__file__).resolve().parents[2] / "flopsweep" / "measure" / "data" / "nvidia-h100-80gb-hbm3.json"
JOBS = {"gpt2_small b8 s1024": ["model=gpt2_small", "batch.size=8", "batch.seq_len=1024"],
        "bert_base b32 s512": ["model=bert_base", "batch.size=32", "batch.seq_len=512"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=SHIPPED)
    args = parser.parse_args()
    print("| job | eager predicted | fused (compiled) predicted | bound, eager (compute / memory / launch) |")
    print("|---|---|---|---|")
    for name, overrides in JOBS.items():
        rows = {}
        for fused in ("false", "true"):
            spec = resolve(compose_config(*overrides, "dtype=bfloat16", "optimizer=adamw", "device=meta",
                                          "tracking=none", f"predict.hardware={args.profile}",
                                          f"predict.fused={fused}"))
            rows[fused] = run_job(spec, {}).metrics
        eager, fused = rows["false"], rows["true"]
        shares = " / ".join(f"{eager[k]:.0%}" for k in (M.PREDICTED_SHARE_COMPUTE, M.PREDICTED_SHARE_MEMORY,
                                                        M.PREDICTED_SHARE_LAUNCH))
        print(f"| {name} | {eager[M.TIME_STEP_PREDICTED] * 1e3:.1f} ms | {fused[M.TIME_STEP_PREDICTED] * 1e3:.1f} ms | "
              f"{shares} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
