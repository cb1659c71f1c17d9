"""A day whose clicks were lost, the day after it, and its recovery, through real Airflow runs.

Four `airflow dags test` runs of the tiny world, in order:
  1. day B, whose landing file has every click set to 0: `check_bronze_quality` fails once, with
     no retry (the task has two), nothing is published, and B's verdict in ops/day_status fails;
  2. day B+1, a normal day: it publishes; its window leaves B out, its features record names B in
     `excluded_days`, and its examples hold no row of B;
  3. day B again, after its landing file is replaced with the correct drop (re-running a date
     with `airflow dags test` replaces that date's run, so every task of it runs again): it passes;
  4. day B+2: its window includes B again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from core.config import load_config
from core.paths import Paths
from features import tables
from serving.registry import read_current
from simworld.generate import generate_day
from spark_jobs import ingest
from spark_jobs.day_status import latest_verdicts
from tests.dags.test_dag_run import _dags_test
from tests.dags.tiny_world import CONFIG, EPOCH

BAD = EPOCH + dt.timedelta(days=2)


def _lose_clicks(path: str) -> None:
    table = pq.read_table(path)
    i = table.schema.get_field_index("click")
    pq.write_table(table.set_column(i, "click", pa.array([0] * table.num_rows, table.schema.field(i).type)), path)


def _task_tries(airflow_home: str, day: dt.date, task_id: str) -> tuple[str, int, list[str]]:
    """(state, try_number, states of earlier tries) of a task in the run of `day`."""
    with sqlite3.connect(os.path.join(airflow_home, "airflow.db")) as db:
        run_id = db.execute("SELECT run_id FROM dag_run WHERE dag_id = 'cscnn_daily' AND date(logical_date) = ?",
                            (str(day),)).fetchone()[0]
        state, tries = db.execute("SELECT state, try_number FROM task_instance WHERE dag_id = 'cscnn_daily' "
                                  "AND run_id = ? AND task_id = ?", (run_id, task_id)).fetchone()
        earlier = [r[0] for r in db.execute("SELECT state FROM task_instance_history WHERE dag_id = 'cscnn_daily' "
                                            "AND run_id = ? AND task_id = ?", (run_id, task_id))]
    return state, tries, earlier


def _features_record(paths: Paths, day: dt.date) -> dict:
    with open(os.path.join(paths.run_dir(day), "features.json")) as f:
        return json.load(f)


def _example_rows_of(spark, cfg, run_date: dt.date, day: dt.date) -> int:
    """How many of run date's examples (both splits) are impressions of bronze day `day`."""
    day_ids = (spark.read.format("delta").load(Paths.of(cfg).bronze_impressions)
               .where(F.col("dt") == F.lit(day)).select("impression_id"))
    assert day_ids.count() > 0, f"bronze holds no impressions of {day}"
    return tables.read_examples(cfg, spark, run_date).join(day_ids, "impression_id", "left_semi").count()


@pytest.mark.timeout(4800)  # four whole-DAG runs, beyond the suite-wide 1200 s
def test_bad_day_fails_fast_is_left_out_then_recovers(spark, tmp_path):
    root = tmp_path / "var"
    config_file = tmp_path / "run.toml"
    config_file.write_text(CONFIG.format(root=root))
    cfg = load_config(config_file)
    paths = Paths.of(cfg)
    for i in range(5):
        generate_day(cfg, EPOCH + dt.timedelta(days=i))
    ingest.run_range(cfg, spark, EPOCH, BAD - dt.timedelta(days=1))  # the history; the DAG ingests the rest
    _lose_clicks(paths.landing_impressions(BAD))

    airflow_home = tempfile.mkdtemp(prefix="cscnn-badday-", dir=tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(CSCNN_CONFIG=str(config_file), CSCNN_START_DATE=str(EPOCH), CSCNN_TASK_RETRIES="2",
               CSCNN_RETRY_DELAY_S="1", CSCNN_SPARK_DRIVER_MEMORY="2g", AIRFLOW_HOME=airflow_home)

    # 1. The clicks-lost day: caught at once, not retried, nothing published.
    state, out = _dags_test(env, BAD)
    assert state == "failed", out[-6000:]
    assert _task_tries(airflow_home, BAD, "check_bronze_quality") == ("failed", 1, []), out[-6000:]
    assert "expect_column_mean_to_be_between(column=click" in out
    assert "not retried" in out
    assert _task_tries(airflow_home, BAD, "build_window")[0] == "upstream_failed"
    assert read_current(cfg) is None and not os.path.exists(paths.validation_record(BAD))
    verdict = latest_verdicts(spark, paths, [BAD])[BAD]
    assert not verdict["passed"] and "column=click" in verdict["reason"]

    # 2. The next normal day publishes, trained without the failed day.
    next_day = BAD + dt.timedelta(days=1)
    state, out = _dags_test(env, next_day)
    assert state == "success", out[-6000:]
    assert read_current(cfg)["run_date"] == str(next_day)
    record = _features_record(paths, next_day)
    assert [e["date"] for e in record["excluded_days"]] == [str(BAD)]
    assert "column=click" in record["excluded_days"][0]["reason"]
    assert str(BAD) not in record["window_days"]
    assert _example_rows_of(spark, cfg, next_day, BAD) == 0

    # 3. Recovery: the correct drop replaces the bad file and the day runs again.
    generate_day(cfg, BAD)
    state, out = _dags_test(env, BAD)
    assert state == "success", out[-6000:]
    assert latest_verdicts(spark, paths, [BAD])[BAD]["passed"]

    # 4. The next run's window includes the recovered day.
    last = BAD + dt.timedelta(days=2)
    state, out = _dags_test(env, last)
    assert state == "success", out[-6000:]
    record = _features_record(paths, last)
    assert record["excluded_days"] == [] and record["window_days"] == [str(BAD), str(next_day)]
    assert _example_rows_of(spark, cfg, last, BAD) > 0
