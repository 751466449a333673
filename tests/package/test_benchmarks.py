"""The benchmarks are never silent for long: each says on stderr which run starts (benchmarks/progress.py), its
results alone on stdout to paste."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow  # a benchmark's two runs in a new interpreter: some 8 s
def test_a_benchmark_says_each_run_as_it_starts_and_keeps_its_results_apart(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_store_creation.py"), "--runs", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if ": run " in line]
    assert [line.split(": run ")[1][:6] for line in said] == ["1 of 2", "2 of 2"]
    assert re.search(r"\(the one before: [\d.]+ s\)", said[1])
    assert "run 1 of 2" not in proc.stdout and proc.stdout.startswith("new store: median")


def test_every_benchmark_that_repeats_runs_says_them():
    """A loop over the runs or rounds asked for that says nothing: bench_generation counted a 70B model's 32k-token
    plan five times in silence, 19 s before its first line (a check's repeats of some milliseconds need none)."""
    silent = [path.name for path in sorted(BENCHMARKS.glob("*.py"))
              if re.search(r"in range\((args\.)?(runs|rounds)\)", path.read_text())]
    assert not silent


@pytest.mark.slow  # some 15 s: the script's every step, each refusing quickly without a GPU
def test_the_prepared_gpu_check_finds_the_cuda_tests_wherever_they_live(tmp_path):
    """It named tests/test_cuda.py after the tests moved to tests/measure/: on a lent GPU its first step would have run
    none. Without a GPU here, they are collected and skip; the calibration and the benchmark refuse in one line."""
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu" / "run.sh")], cwd=BENCHMARKS.parent, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OUT": str(out), "SKIP_PROFILE": "1"})
    tests = (out / "pytest_cuda.txt").read_text()
    assert re.search(r"\b(\d+) skipped\b", tests) and int(re.search(r"(\d+) skipped", tests).group(1)) >= 9, tests
    assert "not found" not in tests and "no tests ran" not in tests
    assert proc.returncode == 1 and "pytest -m cuda: exit 0; calibrate: exit 2; bench_gpu: exit 2" in proc.stdout


@pytest.mark.slow  # a new interpreter each
@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if "sys.path" in p.read_text()))
def test_a_benchmark_that_reaches_into_the_tests_finds_what_it_imports(script):
    """resnet_bk_vs_reference.py looked for the reference counter in tests/ after it moved to tests/models/: the
    command migrating.md and resnet_bk.md give failed with ModuleNotFoundError."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
