"""Fixtures of the simworld tests: a tiny simulated world (seconds, not minutes)."""

from __future__ import annotations

import pytest

from core.config import PipelineConfig
from simworld.generate import generate_range
from simworld_helpers import DAYS, tiny_cfg


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> PipelineConfig:
    """Three clean days of the tiny world, generated once per test session."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("tiny_world"))
    generate_range(cfg, DAYS[0], DAYS[-1])
    return cfg
