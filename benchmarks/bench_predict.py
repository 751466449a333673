"""Predicted against measured step time on this machine's CPU (issue 26's acceptance): each configuration is run as the
``flopsweep`` command runs it (count, size, time: 2 warm-up and 5 timed steps), and its step predicted from its counted
ops with the CPU's calibration profile; the table gives both, their ratio and what bounds the prediction.

    .venv/bin/flopsweep-calibrate --device cpu          # once: the profile the jobs below find
    .venv/bin/python benchmarks/bench_predict.py [--out predict.json] [--only gpt2]

Nothing else should run on the machine meanwhile: both the calibration and the timings are of the whole CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.core import metrics as M
from flopsweep.core.hardware import cpu_model
from flopsweep.run.job import run_job

HF_DECODER = ["model=llama3_2_1b", "model.num_hidden_layers=2"]
CONFIGS = {  # name -> overrides: our families, a Hugging Face decoder and a CNN, two batches and lengths, SGD and AdamW
    "gpt2_small b1 s128 adamw": ["model=gpt2_small", "batch.size=1", "batch.seq_len=128"],
    "gpt2_small b4 s256 adamw": ["model=gpt2_small", "batch.size=4", "batch.seq_len=256"],
    "gpt2_small b2 s512 sgd": ["model=gpt2_small", "batch.size=2", "batch.seq_len=512", "optimizer=sgd"],
    "bert_base b4 s128 adamw": ["model=bert_base", "batch.size=4", "batch.seq_len=128"],
    "bert_base b8 s256 sgd": ["model=bert_base", "batch.size=8", "batch.seq_len=256", "optimizer=sgd"],
    "vit_b16 b2 adamw": ["model=vit_b16", "batch.size=2"],
    "vit_b16 b8 sgd": ["model=vit_b16", "batch.size=8", "optimizer=sgd"],
    "t5_small b4 s128 adamw": ["model=t5_small", "batch.size=4", "batch.seq_len=128"],
    "t5_small b8 s256 sgd": ["model=t5_small", "batch.size=8", "batch.seq_len=256", "optimizer=sgd"],
    "llama3.2 1B (HF, 2 layers) b2 s128 adamw": [*HF_DECODER, "batch.size=2", "batch.seq_len=128"],
    "llama3.2 1B (HF, 2 layers) b4 s256 sgd": [*HF_DECODER, "batch.size=4", "batch.seq_len=256", "optimizer=sgd"],
    "resnet18 (HF CNN) b4 sgd": ["model=resnet18", "batch.size=4", "optimizer=sgd"],
    "resnet18 (HF CNN) b16 adamw": ["model=resnet18", "batch.size=16"],
    "resnet_bk_baseline b4 s512 adamw": ["model=resnet_bk_baseline", "batch.size=4", "batch.seq_len=512"],
}
COMMON = ["device=cpu", "dtype=float32", "tracking=none", "measure.warmup=2", "measure.repeats=5"]


def run(name: str, overrides: list[str]) -> dict:
    start = time.perf_counter()
    result = run_job(resolve(compose_config(*overrides, *COMMON)), {})
    if result.status != "ok":
        return {"status": result.status, "error": result.error}
    m = result.metrics
    phases = {p: (m.get(f"time/{p}_s"), m.get(f"time/{p}_predicted_s")) for p in ("forward", "backward", "optimizer")}
    return {"status": "ok", "measured_s": m[M.TIME_STEP], "iqr_s": m.get(M.TIME_STEP_SPREAD),
            "predicted_s": m.get(M.TIME_STEP_PREDICTED), "ratio": m.get(M.TIME_STEP_PREDICTED_RATIO),
            "shares": {k: m.get(key) for k, key in (("compute", M.PREDICTED_SHARE_COMPUTE),
                                                     ("memory", M.PREDICTED_SHARE_MEMORY),
                                                     ("launch", M.PREDICTED_SHARE_LAUNCH))},
            "phases": phases, "prediction": result.info.get("prediction"), "wall_s": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("predict_cpu.json"))
    parser.add_argument("--only", help="configurations whose name contains this")
    args = parser.parse_args()
    rows = {}
    for name, overrides in CONFIGS.items():
        if args.only and args.only not in name:
            continue
        rows[name] = run(name, overrides)
        print(f"{name}: {rows[name].get('ratio') or rows[name].get('error')}", flush=True)
    args.out.write_text(json.dumps({"machine": {"cpu": cpu_model(), "python": platform.python_version()},
                                    "rows": rows}, indent=2))
    print(f"\n{cpu_model()}\n")
    print("| configuration | measured step (IQR) | predicted | ratio | forward / backward / optimizer ratios | "
          "bound (compute / memory / launch) |")
    print("|---|---|---|---|---|---|")
    within = 0
    for name, r in rows.items():
        if r["status"] != "ok" or r["ratio"] is None:
            print(f"| {name} | {r.get('error') or 'no prediction'} | | | | |")
            continue
        within += abs(r["ratio"] - 1) <= 0.25
        phases = " / ".join("n/a" if not (meas and pred) else f"{pred / meas:.2f}"
                            for meas, pred in r["phases"].values())
        shares = " / ".join(f"{v:.0%}" for v in r["shares"].values())
        print(f"| {name} | {r['measured_s'] * 1e3:.0f} ms ({r['iqr_s'] * 1e3:.0f}) | {r['predicted_s'] * 1e3:.0f} ms | "
              f"{r['ratio']:.2f} | {phases} | {shares} |")
    print(f"\nwithin 25%: {within} of {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
