"""Helpers shared by the simworld tests: a tiny world and readers of its output."""

from __future__ import annotations

import os
from typing import Any

import pyarrow.parquet as pq

from core.config import PipelineConfig, load_config
from core.paths import Paths
from tests import worlds

TINY_WORLD = {**worlds.TINY_WORLD, "world.mean_ad_lifetime_days": 10}
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")


def tiny_cfg(root: os.PathLike | str, **overrides: Any) -> PipelineConfig:
    """The tiny world rooted at `root`, with dotted overrides (dots written as '__')."""
    extra = {k.replace("__", "."): v for k, v in overrides.items()}
    return load_config(overrides={**TINY_WORLD, "storage.root": str(root), **extra})


def read_day(cfg: PipelineConfig, day: str) -> dict[str, Any]:
    """The landing tables and truth of one day as pyarrow tables."""
    paths = Paths.of(cfg)
    return {"impressions": pq.read_table(paths.landing_impressions(day)),
            "ads": pq.read_table(paths.landing_ads(day)),
            "truth": pq.read_table(paths.truth_day(day))}
