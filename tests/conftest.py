"""Shared fixtures: one Spark for the whole test run, tmp configs; the `slow` mark.

Two Sparks serve the whole test run. The `spark` fixture is a Spark in the test process
(spark.remote = ""): a test's many small queries run fastest without a client-server hop. Every
stage process (the DAG tests' tasks, a stage run as a command) is a client of one Spark Connect
server (core/spark_server.py), started by the first of them; its records live in a folder of
this test run (CSCNN_SPARK_SERVER_DIR, inherited by every subprocess), never a developer's own
server, and every server started there is stopped when the run ends. The same holds for the
warm stage runner the DAG's tasks run their stages in (core/stage_runner.py, CSCNN_STAGE_RUNNER_DIR). CSCNN_TEST_SPARK_REMOTE=local
makes the `spark` fixture a client of that server too, to run the in-process tests over Spark
Connect.

`./scripts/test.sh -m "not slow"` is the developer's fast loop: every test that needs a JVM (the
`spark` fixture, a spark-submit, an Airflow run) is marked slow here or in its module; CI runs all.
scripts/test.sh runs the tests on pytest-xdist workers; each worker is a process of its own, with
its own `spark` fixture, server folder and runner folder (this module runs in each). A module's
tests all run on one worker (`--dist loadfile`), so a fixture a module shares (a DAG run, an
Airflow) is made once; pytest_collection_modifyitems below says which modules start first.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from core.config import SparkConfig, load_config
from core.spark import get_spark
from core import stage_runner
from core.spark_server import stop_all
from tests.worlds import TINY_WORLD

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
_SERVER_DIR = tempfile.mkdtemp(prefix="cscnn-test-spark-servers-")
os.environ["CSCNN_SPARK_SERVER_DIR"] = _SERVER_DIR
_RUNNER_DIR = tempfile.mkdtemp(prefix="cscnn-test-stage-runners-")
os.environ["CSCNN_STAGE_RUNNER_DIR"] = _RUNNER_DIR


def pytest_sessionfinish(session, exitstatus):
    """Stop the Spark Connect servers and stage runners this run started."""
    stop_all()
    stage_runner.stop_all()
    shutil.rmtree(_SERVER_DIR, ignore_errors=True)
    shutil.rmtree(_RUNNER_DIR, ignore_errors=True)


# The modules that run whole DAGs or long-lived servers, longest first (measured, about 2-6 minutes
# each on 2 cores). They start first, so that with several workers none of them is the last left.
LONGEST_FIRST = (
    "tests/dags/test_scheduler_ui.py",
    "tests/test_readme_commands.py",
    "tests/dags/test_bad_day.py",
    "tests/dags/test_dag_run.py",
    "tests/cluster/test_standalone.py",
    "tests/features/test_failed_days.py",
    "tests/test_spark_server.py",
)


def pytest_collection_modifyitems(config, items):
    """Marks and order.

    * A test that uses the session's Spark (directly or through a fixture) is slow.
    * Modules run longest first: those of LONGEST_FIRST, then modules with a slow test, then the
      rest, each module's tests together and in their own order.
    """
    rank: dict[str, tuple[int, int]] = {}
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        module = item.nodeid.split("::")[0]
        first = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        slow = 0 if item.get_closest_marker("slow") else 1
        rank[module] = min(rank.get(module, (first, slow)), (first, slow))
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session")
def spark():
    """One local session for the whole test run, in this process (JVM start is ~7 s); Delta enabled."""
    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=1, driver_memory="2g",
                                    app_name="cscnn-tests", remote=os.environ.get("CSCNN_TEST_SPARK_REMOTE", "")))
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
