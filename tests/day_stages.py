"""A tiny world's day D run stage by stage, as the DAG's tasks run them, for the tests that run it
somewhere else than the default local Spark and filesystem (tests/cluster, tests/storage).

Each Spark stage is `python -m core.stage_runner run spark_jobs.<stage> --date D --config FILE`
(a fork of the warm stage runner, as the DAG's StageOperator runs it); training goes through
models.launch.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from tests.dags.conftest import REPO_ROOT
from tests.dags.tiny_world import EPOCH

DAY = EPOCH + dt.timedelta(days=2)
# The DAG's Spark stages before and after training (dags/cscnn_daily.py), in its order.
BEFORE_TRAINING = ("ingest", "check_quality", "build_window", "check_examples", "export_snapshot")
AFTER_TRAINING = ("build_lookup", "validate", "publish")
STAGE_TIMEOUT_S = 600


def run(args: list[str], env: dict[str, str] | None = None) -> str:
    """`python *args` in the repository; its stdout. Fails the test with the output's tail."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=STAGE_TIMEOUT_S, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


def history(config_file: Path, env: dict[str, str] | None = None) -> None:
    """Generate the tiny world up to D and ingest the days before D (the window's history)."""
    config = str(config_file)
    run(["-m", "simworld", "--config", config, "--start", str(EPOCH), "--end", str(DAY)], env)
    run(["-m", "spark_jobs.ingest", "--config", config, "--date", str(EPOCH),
         "--end-date", str(DAY - dt.timedelta(days=1))], env)


def run_day(config_file: Path, env: dict[str, str] | None = None) -> None:
    """Day D's stages, as the DAG runs them."""
    config = str(config_file)
    for stage in BEFORE_TRAINING:
        run(["-m", "core.stage_runner", "run", f"spark_jobs.{stage}", "--date", str(DAY), "--config", config], env)
    run(["-m", "models.launch", "--nproc-per-node", "1", "-m", "spark_jobs.train_model",
         "--date", str(DAY), "--config", config], env)
    for stage in AFTER_TRAINING:
        run(["-m", "core.stage_runner", "run", f"spark_jobs.{stage}", "--date", str(DAY), "--config", config], env)
