"""The warehouse on object storage: a real S3-compatible server, reached through s3a://.

The server is moto's server mode (`moto_server`, from PyPI), started by the test as a process of
its own on 127.0.0.1 and stopped at the end. Spark reaches it through hadoop-aws
(`spark.packages`, resolved from Maven Central once per machine like Delta's jars); the endpoint
and path-style access are `spark.extra_conf` settings of the config file, while the credentials
are only in the stages' environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): a config that
carries one is refused.

What runs on it today: day D's ingest and bronze quality check, as the DAG runs them, with
`storage.warehouse_uri` on the bucket (the landing area stays local, where the simulator writes).
The later stages still need a local warehouse (the examples assembly reads and writes local
files); README, "Running on a cluster", says so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import spark_server
from core.spark_server import _answers, _free_port
from core.config import ConfigError, load_config
from tests.dags.conftest import REPO_ROOT
from tests.dags.tiny_world import CONFIG, EPOCH

DAY = EPOCH + dt.timedelta(days=2)
BUCKET = "cscnn-test"
HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.5.0"  # the Hadoop of pyspark 4.2's jars (hadoop-client-api 3.5.0)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with an empty bucket; its endpoint URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        _s3(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _s3(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def _config(root: Path, endpoint: str) -> Path:
    """The tiny world with its warehouse on the bucket; no credentials in it."""
    s3a = {"spark.hadoop.fs.s3a.endpoint": endpoint, "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
           "spark.hadoop.fs.s3a.path.style.access": "true", "spark.hadoop.fs.s3a.connection.ssl.enabled": "false"}
    text = CONFIG.format(root=root / "var")
    text = text.replace("[storage]\n", f'[storage]\nwarehouse_uri = "s3a://{BUCKET}/prefix/warehouse"\n', 1)
    text = text.replace("[spark]\n", f'[spark]\npackages = ["{HADOOP_AWS}"]\n', 1)
    text += "\n[spark.extra_conf]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in s3a.items())
    path = root / "run.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _run(args: list[str]) -> str:
    env = {**os.environ, **CREDENTIALS}
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_ingest_and_the_bronze_check_write_the_warehouse_to_s3(s3_endpoint, tmp_path):
    config_file = _config(tmp_path, s3_endpoint)
    cfg = load_config(config_file)
    assert cfg.storage.resolved().warehouse_uri.startswith("s3a://")
    try:
        _run(["-m", "simworld", "--config", str(config_file), "--start", str(DAY), "--end", str(DAY)])
        ingested = json.loads(_run(["-m", "spark_jobs.ingest", "--date", str(DAY), "--config", str(config_file)])
                              .strip().splitlines()[-1])
        checked = json.loads(_run(["-m", "spark_jobs.check_quality", "--date", str(DAY), "--config",
                                   str(config_file)]).strip().splitlines()[-1])
        # Read back through Spark and s3a: the bronze rows are the landing day's.
        counted = _run(["-c", "import sys; from core.config import load_config; from core.paths import Paths; "
                              "from core.spark import get_spark; cfg = load_config(sys.argv[1]); "
                              "print(get_spark(cfg.spark).read.format('delta').load(Paths.of(cfg).bronze_impressions)"
                              ".where(\"dt = DATE'" + str(DAY) + "'\").count())", str(config_file)])
    finally:
        spark_server.stop(cfg.spark)  # its s3a endpoint goes away with this module
    assert ingested["landing_impressions"] > 0
    assert ingested["bronze_impressions"] + ingested["quarantined_impressions"] == ingested["landing_impressions"]
    assert int(counted.strip().splitlines()[-1]) == ingested["bronze_impressions"]
    assert checked["success"] is True
    # The tables are objects in the bucket, and no warehouse folder was made on the local disk.
    keys = [o["Key"] for page in _s3(s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    for table in ("bronze/impressions", "bronze/ads", "bronze/images", "ops/ingest_runs"):
        assert any(k.startswith(f"prefix/warehouse/{table}/_delta_log/") for k in keys), table
        assert any(k.startswith(f"prefix/warehouse/{table}/") and k.endswith(".parquet") for k in keys), table
    assert not (tmp_path / "var" / "warehouse").exists()
    assert not any((tmp_path / "var").rglob("_delta_log"))


def test_a_credential_in_the_config_file_is_refused():
    for key in ("spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key",
                "spark.hadoop.fs.s3a.bucket.b.session.token"):
        with pytest.raises(ConfigError, match=f"'spark.extra_conf': '{key}'.*from the environment"):
            load_config(overrides={"spark.extra_conf": {key: "x"}})
