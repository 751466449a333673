import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from flopsweep.config import CONF_DIR, register_configs

REPO = Path(__file__).resolve().parents[1]
FLOPSWEEP = [sys.executable, "-m", "flopsweep"]

register_configs()


def compose_config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="")
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([*FLOPSWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.fixture
def compose_cfg():
    return compose_config
