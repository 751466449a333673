"""Fixtures; what the tests share otherwise is in ``tests/helpers.py``."""

import pytest

from tests.helpers import compose_config


@pytest.fixture
def compose_cfg():
    return compose_config
