"""Where a predicted step and a measured one part ways, op by op, on a CUDA GPU: each job's step is counted (its
trace), predicted with the GPU's calibration profile (``FLOPSWEEP_CALIBRATION_DIR``, as ``flopsweep-calibrate`` left
it), and profiled with ``torch.profiler`` over three steps; the table puts each aten op's predicted time a step beside
the time its kernels took on the device, and the step's host time beside its device time.

    FLOPSWEEP_CALIBRATION_DIR=... python benchmarks/gpu/diagnose_prediction.py     # benchmarks/gpu/run.sh runs it
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import torch

from flopsweep.build.model import build
from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve
from flopsweep.measure.count import count_step
from flopsweep.measure.defaults import profile_for
from flopsweep.measure.predict import TimeModel, predict
from flopsweep.measure.timing import device_name

JOBS = {"gpt2_small b8 s1024": ["model=gpt2_small", "batch.size=8", "batch.seq_len=1024"],
        "bert_base b32 s512": ["model=bert_base", "batch.size=32", "batch.seq_len=512"]}
COMMON = ["dtype=bfloat16", "optimizer=adamw", "tracking=none", "device=cuda"]


def step(built) -> None:
    built.optimizer.zero_grad(set_to_none=True)
    with built.autocast():
        loss = built.model(**built.inputs)
    loss.backward()
    built.optimizer.step()


def diagnose(name: str, overrides: list[str]) -> None:
    spec = resolve(compose_config(*overrides, *COMMON))
    built = build(spec)
    count = count_step(built.model, built.inputs, built.optimizer, context=built.autocast)
    cal, origin = profile_for(None, device_name("cuda:0"), True)
    prediction = predict(count.trace, cal, autocast=spec.autocast)
    model = TimeModel(cal, spec.autocast)
    predicted: Counter = Counter()
    for phase, calls in count.trace.phases.items():
        for i in calls:
            sig = count.trace.sigs[i]
            predicted[sig.op.replace("aten.", "aten::")] += max(model.body(sig))
    for _ in range(3):
        step(built)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step(built)
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / 3
    measured: Counter = Counter()
    for event in prof.key_averages():
        self_device = getattr(event, "self_device_time_total", None)
        if self_device is None:
            self_device = getattr(event, "self_cuda_time_total", 0.0)
        if event.key.startswith("aten::") and self_device:
            measured[event.key] += self_device / 1e6 / 3
    device_total = sum(measured.values())
    print(f"\n## {name} ({origin}; wall a step under the profiler {wall * 1e3:.1f} ms)\n")
    print(f"predicted {prediction.seconds * 1e3:.1f} ms "
          f"({', '.join(f'{p} {t.seconds * 1e3:.1f}' for p, t in prediction.phases.items())}); "
          f"bodies {sum(predicted.values()) * 1e3:.1f} ms; device kernels measured {device_total * 1e3:.1f} ms; "
          f"module calls {count.trace.module_calls}")
    print("\n| op | predicted body ms/step | measured kernels ms/step | ratio |\n|---|---|---|---|")
    for op in sorted(set(predicted) | set(measured), key=lambda k: -max(predicted[k], measured[k]))[:18]:
        ratio = predicted[op] / measured[op] if measured[op] else float("nan")
        print(f"| {op} | {predicted[op] * 1e3:.2f} | {measured[op] * 1e3:.2f} | {ratio:.2f} |")


def main() -> int:
    if not torch.cuda.is_available():
        print("diagnose_prediction: no CUDA GPU here", file=sys.stderr)
        return 2
    for name, overrides in JOBS.items():
        diagnose(name, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
