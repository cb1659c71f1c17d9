"""The check_bronze_quality stage end to end on small Delta tables."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from core.paths import Paths
from expectations.runner import DataQualityError
from spark_jobs import check_quality
from tests.expectations.conftest import AD_DDL, DAY, IMPRESSION_DDL, ad_row, clean_rows


def _write_bronze(spark, cfg):
    from pyspark.sql import functions as F

    paths = Paths.of(cfg)
    rows = []
    for offset, n in ((2, 20), (1, 24)):  # two trailing days: mean 22 rows
        rows += clean_rows(n, DAY - dt.timedelta(days=offset))
    rows += clean_rows(21, DAY)
    (spark.createDataFrame(rows, IMPRESSION_DDL).write.format("delta").partitionBy("dt")
     .save(paths.bronze_impressions))
    ads = [ad_row(i, d) for d in (DAY - dt.timedelta(days=1), DAY) for i in (10, 11, 12)]
    spark.createDataFrame(ads, AD_DDL).write.format("delta").partitionBy("dt").save(paths.bronze_ads)
    # The landing file of D carries an undocumented column: schema drift, not critical.
    landing = spark.createDataFrame(clean_rows(3, DAY), IMPRESSION_DDL).drop("dt").withColumn("extra", F.col("hour"))
    landing.write.parquet(paths.landing_impressions(DAY))


def test_trailing_volume_ignores_the_day_and_missing_days(spark):
    rows = clean_rows(4, DAY - dt.timedelta(days=3)) + clean_rows(8, DAY - dt.timedelta(days=1)) + clean_rows(50, DAY)
    df = spark.createDataFrame(rows, IMPRESSION_DDL)
    assert check_quality.trailing_volume(df, DAY, 7) == {"mean_rows": 6.0, "days": 2}
    assert check_quality.trailing_volume(df, DAY, 1) == {"mean_rows": 8.0, "days": 1}
    assert check_quality.trailing_volume(df, DAY - dt.timedelta(days=3), 7) is None


def test_run_passes_a_clean_day_then_fails_an_empty_one(tmp_cfg, spark):
    _write_bronze(spark, tmp_cfg)
    summary = check_quality.run(tmp_cfg, spark, DAY)
    assert summary["trailing"] == {"mean_rows": 22.0, "days": 2}
    suites = summary["suites"]
    assert suites["bronze_impressions"]["success"] and suites["bronze_ads"]["success"]
    landing = suites["landing_impressions_schema"]
    assert not landing["success"] and landing["failed_critical"] == []
    assert "unexpected columns [\"extra\"], missing columns []" in landing["failed"][0]
    assert summary["critical_failures"] == 0
    path = os.path.join(Paths.of(tmp_cfg).reports, "quality", f"{DAY}.json")
    assert summary["summary_path"] == path
    with open(path) as fh:
        assert json.load(fh)["suites"]["bronze_ads"]["report_path"] == suites["bronze_ads"]["report_path"]
    for s in suites.values():
        assert os.path.isfile(s["report_path"])

    # D+1 has no impressions and no ads at all: critical, after the summary is written.
    next_day = DAY + dt.timedelta(days=1)
    with pytest.raises(DataQualityError) as err:
        check_quality.run(tmp_cfg, spark, next_day)
    assert "expect_table_row_count_to_be_between" in str(err.value)
    with open(os.path.join(Paths.of(tmp_cfg).reports, "quality", f"{next_day}.json")) as fh:
        failed = json.load(fh)
    assert not failed["success"] and failed["critical_failures"] >= 2
    assert failed["suites"]["landing_impressions_schema"]["report_path"] is None  # no landing file that day


def test_missing_bronze_table_names_the_path(tmp_cfg, spark):
    with pytest.raises(FileNotFoundError, match="bronze impressions Delta table not found"):
        check_quality.run(tmp_cfg, spark, DAY)
