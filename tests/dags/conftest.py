"""Airflow settings for the DAG tests: a throwaway AIRFLOW_HOME, this repo's DAGs, no examples.

Airflow reads its configuration when first imported, so the environment is set here, at
collection time, before any test module imports airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO_ROOT / "dags"
PLUGINS_DIR = REPO_ROOT / "plugins"

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="cscnn-airflow-test-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, True)  # removed when the test process ends
AIRFLOW_TEST_ENV = {
    "AIRFLOW_HOME": _AIRFLOW_HOME,
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_DIR),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
}
os.environ.update(AIRFLOW_TEST_ENV)
