"""Where a decode step's time goes on a CUDA GPU: LLaMA-2 7B (our decoder, bf16, batch 1, a prompt of 512 tokens),
ten decode steps timed by wall clock against a prefill, then three profiled with torch.profiler, the ops by CUDA time
and by CPU time (docs/benchmarks.md: the cuDNN attention graph built at every new context length, the launches).

    python benchmarks/gpu/profile_decode.py
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from flopsweep.build.model import build
from flopsweep.config.compose import compose_config
from flopsweep.config.resolve import resolve


def main() -> int:
    if not torch.cuda.is_available():
        print("profile_decode: no CUDA GPU here", file=sys.stderr)
        return 2
    spec = resolve(compose_config("model=llama2_7b", "batch.size=1", "batch.seq_len=512", "workload=generate",
                                  "generate.new_tokens=128", "dtype=bfloat16", "device=cuda", "tracking=none"))
    built = build(spec)
    gen = spec.family.generator(spec.model)(built.model)
    one = torch.randint(0, gen.vocab_size, (1, 1), device="cuda")
    prompt = torch.randint(0, gen.vocab_size, (1, 512), device="cuda")
    with torch.no_grad():
        cache = gen.prefill(prompt)
        for _ in range(5):
            cache = gen.decode(one, cache)
        for what, run in (("decode step", lambda c: gen.decode(one, c)), ("prefill", lambda c: gen.prefill(prompt))):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                out = run(cache)
                cache = out if what == "decode step" else cache
            torch.cuda.synchronize()
            print(f"{what}: {(time.perf_counter() - start) / 10 * 1e3:.1f} ms (wall clock, mean of 10)")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                cache = gen.decode(one, cache)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return 0


if __name__ == "__main__":
    sys.exit(main())
