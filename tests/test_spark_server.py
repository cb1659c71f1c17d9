"""The machine's long-lived Spark (core/spark_server.py): found, not restarted; loopback only; and a
server killed in the middle of a stage fails that task, whose retry starts a new server and
leaves no duplicated rows.

The stage runs exactly as the DAG runs it: the default StageOperator, `python -m
spark_jobs.ingest --date D --config F`, its SparkSession a client of the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from pyspark.sql import functions as F

from core.config import ConfigError, SparkConfig, load_config
from core.paths import Paths, local_path
from core.spark_server import ensure_server, server_key, servers, stop_all
from dags.cscnn_links import StageOperator
from simworld.generate import generate_day
from tests.dags.tiny_world import CONFIG, EPOCH

pytestmark = pytest.mark.slow  # JVMs

KILL_WAIT_S = 300


@pytest.fixture
def own_servers(tmp_path, monkeypatch):
    """A server folder of this test alone (stage subprocesses inherit it); its servers stopped after."""
    monkeypatch.setenv("CSCNN_SPARK_SERVER_DIR", str(tmp_path / "servers"))
    yield tmp_path / "servers"
    stop_all()


def _listening_addresses(pid: int) -> set[str]:
    """Local addresses on which the process `pid` listens (TCP), from `ss`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if f"pid={pid}," in line}


def test_a_server_is_started_once_found_after_and_listens_on_loopback_only(own_servers):
    cfg = SparkConfig(master="local[1]", driver_memory="1g")
    first = ensure_server(cfg)
    again = ensure_server(cfg)
    assert (again.pid, again.port) == (first.pid, first.port)
    assert first.url == f"sc://127.0.0.1:{first.port}"
    addresses = _listening_addresses(first.pid)
    assert addresses and addresses <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, addresses
    # another master is another server; the CLI lists both and stops both
    assert server_key(SparkConfig(master="local[2]", driver_memory="1g")) != server_key(cfg)
    listed = subprocess.run([sys.executable, "-m", "core.spark_server", "status"], capture_output=True,
                            text=True, check=True).stdout
    assert f"running  {first.url}  pid {first.pid}" in listed, listed
    stopped = subprocess.run([sys.executable, "-m", "core.spark_server", "stop"], capture_output=True,
                             text=True, check=True).stdout
    assert "stopped 1 Spark Connect server(s)" in stopped
    assert not [s for s in servers() if s[2]]


def test_a_bad_remote_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="spark.remote.*'spark://x:7077'"):
        load_config(overrides={"spark.remote": "spark://x:7077"})


def _first_commit(warehouse: Path) -> bool:
    return any(warehouse.glob("bronze/*/_delta_log/*.json"))


def test_a_server_killed_mid_stage_fails_the_task_and_the_retry_leaves_no_duplicates(own_servers, spark, tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text(CONFIG.format(root=tmp_path / "var"))
    cfg = load_config(config_file)
    day = EPOCH
    generate_day(cfg, day)
    landing_ids = pq.read_table(Paths.of(cfg).landing_impressions(day), columns=["impression_id"]).column(0)
    warehouse = Path(local_path(Paths.of(cfg).bronze_impressions)).parent.parent
    task = StageOperator(task_id="ingest_day", module="spark_jobs.ingest",
                         arguments=["--date", str(day), "--config", str(config_file)])

    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            task.execute({})
            outcome["error"] = None
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    runner = threading.Thread(target=attempt)
    runner.start()
    deadline = time.monotonic() + KILL_WAIT_S
    while not _first_commit(warehouse):  # the stage has written one table and has more to write
        assert runner.is_alive(), f"the stage ended before it committed anything: {outcome}"
        assert time.monotonic() < deadline, "the stage committed nothing in time"
        time.sleep(0.05)
    (_, record, running), = servers()
    assert running
    os.killpg(int(record["pid"]), signal.SIGKILL)
    runner.join(KILL_WAIT_S)
    error = outcome["error"]
    assert isinstance(error, AirflowException) and not isinstance(error, AirflowFailException), error

    task.execute({})  # the retry: a new server, the whole day again
    (_, new_record, running), = servers()
    assert running and new_record["pid"] != record["pid"]

    bronze = spark.read.format("delta").load(Paths.of(cfg).bronze_impressions).where(F.col("dt") == F.lit(day))
    quarantined = (spark.read.format("delta").load(Paths.of(cfg).quarantine)
                   .where((F.col("dt") == F.lit(day)) & (F.col("source") == "impressions")).count())
    assert bronze.count() == bronze.select("impression_id").distinct().count()
    assert bronze.count() + quarantined == len(landing_ids) == len(set(landing_ids.to_pylist()))
    # Every table of the day holds it once: the retry replaced the killed attempt's commits.
    ads = spark.read.format("delta").load(Paths.of(cfg).bronze_ads).where(F.col("dt") == F.lit(day))
    assert ads.count() == ads.select("ad_id").distinct().count() > 0
