"""docker-compose.yml is a valid Compose file with the designed services."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.dags.conftest import REPO_ROOT

# The secrets have no defaults in the file; any values make it resolvable.
SECRETS = {"POSTGRES_PASSWORD": "test-pg", "AIRFLOW_JWT_SECRET": "test-jwt",
           "AIRFLOW_API_SECRET_KEY": "test-api", "AIRFLOW_FERNET_KEY": "test-fernet"}


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed; install it (Debian: apt-get install -y docker-compose) "
                    "to validate docker-compose.yml")
    return subprocess.run([binary, "-f", "docker-compose.yml", *args], cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid():
    proc = _compose("config", "-q", env=SECRETS)
    assert proc.returncode == 0, proc.stderr


def test_compose_file_refuses_to_run_without_secrets():
    proc = _compose("config", "-q", env={k: v for k, v in SECRETS.items() if k != "AIRFLOW_JWT_SECRET"})
    assert proc.returncode != 0
    assert "AIRFLOW_JWT_SECRET" in proc.stderr


def test_compose_services_gpu_worker_and_shared_warehouse():
    proc = _compose("config", env=SECRETS)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"postgres", "redis", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-worker", "airflow-worker-gpu", "spark-master", "spark-worker"} <= set(services)
    gpu = services["airflow-worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert services["airflow-scheduler"]["environment"]["CSCNN_GPU_QUEUE"] == "gpu"
    assert services["airflow-worker"]["environment"]["CSCNN_SPARK_SUBMIT"] == "true"  # the compose cluster's master
    for name in ("airflow-worker", "airflow-worker-gpu", "spark-worker"):
        assert any(v.startswith("warehouse:/opt/cscnn/var") for v in services[name]["volumes"]), name
    assert services["airflow-api-server"]["ports"][0]["host_ip"] == "127.0.0.1" \
        if isinstance(services["airflow-api-server"]["ports"][0], dict) \
        else services["airflow-api-server"]["ports"][0].startswith("127.0.0.1:")
