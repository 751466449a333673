#!/usr/bin/env bash
# The prepared GPU check, for a machine with a CUDA GPU (CI has none): the CUDA tests, then the GPU benchmarks,
# in under 10 minutes; the figures go to $OUT (default: benchmarks/gpu/results/) for docs/benchmarks.md.
#
#   bash benchmarks/gpu/run.sh            # from the repository root; uses .venv when it is there
set -uo pipefail
OUT=${OUT:-benchmarks/gpu/results}
mkdir -p "$OUT"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$PY" -c "import pytest" 2>/dev/null || {  # make demo installs no test tools
  echo "run.sh: needs the test tools: make test installs them (or $PY -m pip install 'torch==2.13.0' -e '.[test]')" >&2
  exit 1
}
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
} | tee "$OUT/machine.txt"
timeout 200 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_cuda.txt"  # wherever they are
tests=${PIPESTATUS[0]}
# the GPU's calibration profile, where the timed jobs below find it (they record their predicted step beside the
# measured one); no MLflow here
export FLOPSWEEP_CALIBRATION_DIR=${FLOPSWEEP_CALIBRATION_DIR:-$OUT/calibration}
timeout 130 "$PY" -m flopsweep.cli.calibrate --device cuda --no-log 2>&1 | tee "$OUT/calibrate.txt"
calibrated=${PIPESTATUS[0]}
# ${BENCH_ARGS}: --skip-generation where the generation rows are not wanted (a short lease)
timeout 240 "$PY" benchmarks/gpu/bench_gpu.py --out "$OUT/gpu_figures.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_figures.md"
bench=${PIPESTATUS[0]}
timeout 120 "$PY" benchmarks/gpu/diagnose_prediction.py > "$OUT/diagnose_prediction.txt" 2>&1  # op by op
if [ -z "${SKIP_PROFILE:-}" ]; then  # where a decode step's time goes
  timeout 120 "$PY" benchmarks/gpu/profile_decode.py > "$OUT/profile_decode.txt" 2>&1
fi
echo "pytest -m cuda: exit $tests; calibrate: exit $calibrated; bench_gpu: exit $bench" | tee -a "$OUT/machine.txt"
[ "$tests" -eq 0 ] && [ "$calibrated" -eq 0 ] && [ "$bench" -eq 0 ]
