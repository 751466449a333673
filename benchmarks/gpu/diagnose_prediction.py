"""Where a predicted step and a measured one part ways, op by op: each job's step is counted (its trace), predicted
with the device's calibration profile (``FLOPSWEEP_CALIBRATION_DIR``, as ``flopsweep-calibrate`` left it), and profiled
with ``torch.profiler`` over three steps; the table puts each aten op's predicted time a step beside the time its
kernels took on the GPU (or its own CPU time on a CPU).

    python benchmarks/gpu/diagnose_prediction.py                 # on a GPU: benchmarks/gpu/run.sh runs it
    python benchmarks/gpu/diagnose_prediction.py --device cpu --job "model=resnet18 batch.size=4"
"""

from __future__ import annotations

import argparse
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
COMMON = ["optimizer=adamw", "tracking=none"]


def step(built) -> None:
    built.optimizer.zero_grad(set_to_none=True)
    with built.autocast():
        loss = built.model(**built.inputs)
    loss.backward()
    built.optimizer.step()


def diagnose(name: str, overrides: list[str], device: str) -> None:
    gpu = device.startswith("cuda")
    spec = resolve(compose_config(*overrides, *COMMON, f"device={device}", f"dtype={'bfloat16' if gpu else 'float32'}"))
    built = build(spec)
    count = count_step(built.model, built.inputs, built.optimizer, context=built.autocast)
    cal, origin = profile_for(None, device_name(device), gpu)
    prediction = predict(count.trace, cal, autocast=spec.dtype.autocast)
    model = TimeModel(cal, spec.dtype.autocast)
    predicted: Counter = Counter()
    for phase, calls in count.trace.phases.items():
        for i in calls:
            sig = count.trace.sigs[i]
            predicted[sig.op.replace("aten.", "aten::")] += max(model.body(sig))
    for group in built.optimizer.param_groups:  # as the timed steps run (measure/timing.weights_kept)
        group["lr"] = 0.0
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    for _ in range(3):
        step(built)
    sync()
    start = time.perf_counter()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            step(built)
        sync()
    wall = (time.perf_counter() - start) / 3
    measured: Counter = Counter()
    for event in prof.key_averages():
        if gpu:
            spent = getattr(event, "self_device_time_total", None)
            spent = spent if spent is not None else getattr(event, "self_cuda_time_total", 0.0)
        else:
            spent = event.self_cpu_time_total
        if event.key.startswith("aten::") and spent:
            measured[event.key] += spent / 1e6 / 3
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--job", action="append", help="a job's overrides instead of the defaults, quoted, repeatable")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("diagnose_prediction: no CUDA GPU here", file=sys.stderr)
        return 2
    jobs = {job: job.split() for job in args.job} if args.job else JOBS
    for name, overrides in jobs.items():
        diagnose(name, overrides, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
