"""No stage pays at start-up for imports it does not use: torch and Great Expectations (seconds to
import each) only inside the functions that train, embed or run a suite, pandas (about a second)
only where a frame is made, Airflow never. So a bad argument is answered in under a second
(tests/test_cli_errors.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_packaging import STAGES

HEAVY = ("torch", "torchvision", "great_expectations", "airflow", "pandas")
# What importing each stage's module may load; all else in HEAVY must wait until it is used.
ALLOWED = {
    "ingest": set(), "build_window": set(), "export_snapshot": set(), "publish": set(),
    "build_lookup": set(), "train_model": set(),
    "check_quality": set(), "check_examples": set(), "validate": set(),
}


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_importing_a_stage_loads_only_what_it_uses(stage):
    code = (f"import json, sys, spark_jobs.{stage}; "
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert loaded <= ALLOWED[stage], f"importing spark_jobs.{stage} loads {sorted(loaded - ALLOWED[stage])}"


def test_every_stage_script_is_listed():
    assert {s.removesuffix(".py") for s in STAGES} == set(ALLOWED)
