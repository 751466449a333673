"""Fixtures; what the tests share otherwise is in ``tests/helpers.py``."""

import os
import subprocess
import tempfile

import pytest

from tests.helpers import compose_config

# what flopsweep keeps between commands (the language-model presets' sizes) kept in a folder of this run's, not the
# user's ~/.cache; a test of the keeping itself gives its own
os.environ.setdefault("FLOPSWEEP_CACHE_DIR", tempfile.mkdtemp(prefix="flopsweep-cache-"))


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture
def tmpfs():
    """``tmpfs(path, size="64k", read_only=False)``: a real tmpfs mounted at ``path`` (a full disk, a read-only one;
    mounting needs root: the test is skipped without it), unmounted after the test."""
    mounted = []

    def mount(path, size="64k", read_only=False):
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                               capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)
