"""A crash in the middle of a write leaves the previous table state readable (Delta commits)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

from pyspark.sql import functions as F

from core.paths import Paths
from spark_jobs import ingest
from tests.ingest.landing_fixture import DAY, _png, ad, impression, write_day

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _data_files(table: str) -> set[str]:
    return set(glob.glob(os.path.join(table, "**", "*.parquet"), recursive=True))


def _commits(table: str) -> set[str]:
    return set(glob.glob(os.path.join(table, "_delta_log", "*.json")))


def test_kill_mid_write_keeps_previous_version(spark, tmp_cfg):
    paths = Paths.of(tmp_cfg)
    image = {"images/0/1.png": _png((5, 5, 5))}
    write_day(paths.landing, [impression(i) for i in range(5)], [ad(1)], image)
    ingest.run(tmp_cfg, spark, DAY)
    table = paths.bronze_impressions
    before_files, before_commits = _data_files(table), _commits(table)

    # A much bigger drop for the same day, ingested by a separate process that we kill as soon as
    # its first new data file appears in the bronze table (files are written before the commit).
    write_day(paths.landing, [impression(i) for i in range(150_000)], [ad(1)], image)
    cfg = tmp_cfg.replace({"spark.shuffle_partitions": 4})
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "spark_jobs", "ingest.py"), "--date", str(DAY),
                             "--config-json", cfg.to_json()], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if _data_files(table) - before_files:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the ingest process ended before it wrote any file; cannot test a crash"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    assert _data_files(table) - before_files, "expected orphan data files of the killed write"
    assert _commits(table) == before_commits, "the killed write must not have committed"
    day_df = spark.read.format("delta").load(table).where(F.col("dt") == F.lit(DAY))
    assert sorted(r.impression_id for r in day_df.collect()) == [f"i{i}" for i in range(5)]
    # And the next run succeeds on top of the debris.
    record = ingest.run(cfg, spark, DAY)
    assert record["bronze_impressions"] == 150_000
