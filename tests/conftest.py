"""Shared fixtures: one local SparkSession (Delta on) per test run, tmp configs; the `slow` mark.

`./scripts/test.sh -m "not slow"` is the developer's fast loop: every test that needs a JVM (the
`spark` fixture, a spark-submit, an Airflow run) is marked slow here or in its module; CI runs all.
"""

from __future__ import annotations

import os

import pytest

from core.config import SparkConfig, load_config
from core.spark import get_spark
from tests.worlds import TINY_WORLD

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def pytest_collection_modifyitems(config, items):
    """A test that uses the session's Spark (directly or through a fixture) is slow."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def spark():
    """One local session for the whole test run (JVM start is ~7 s); Delta enabled."""
    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=1, driver_memory="2g",
                                    app_name="cscnn-tests"))
    yield session
    session.stop()


@pytest.fixture
def tmp_cfg(tmp_path):
    """A PipelineConfig whose storage root is a fresh temporary folder, with a tiny world."""
    return load_config(overrides={
        "storage.root": str(tmp_path / "var"),
        **TINY_WORLD,
        "spark.shuffle_partitions": 1,
        "spark.master": "local[2]",
    })
