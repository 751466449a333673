"""Configs ship inside the wheel: install it into a fresh venv and run from another directory."""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_installed_wheel_runs_a_job_and_a_preset(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("flopsweep-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir)  # without pip: this interpreter's pip installs into it (--python)
    py = env_dir / "bin" / "python"
    # the dependencies (torch, hydra) come from this interpreter's site-packages, not a second download
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import flopsweep, os; print(os.path.dirname(flopsweep.__file__))"],
                           cwd=work, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
    assert (Path(where) / "conf" / "config.yaml").exists() and (Path(where) / "sweeps" / "quickstart.yaml").exists()

    flopsweep = env_dir / "bin" / "flopsweep"
    proc = subprocess.run([str(flopsweep), "model=gpt2_small", "device=meta", "model.n_layer=2", "tracking=none"],
                          cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (result,) = (work / "outputs" / "runs").rglob("result.json")
    assert json.loads(result.read_text())["status"] == "ok"
    proc = subprocess.run([str(flopsweep), "+sweep=gpt3_family", "model=gpt3_small", "batch.seq_len=64",
                           "tracking=none"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(list((work / "outputs" / "sweeps").rglob("result.json"))) == 1
