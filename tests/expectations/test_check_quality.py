"""The check_bronze_quality stage end to end on small Delta tables."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from pyspark.sql import functions as F

from core.paths import Paths
from expectations.runner import DataQualityError
from spark_jobs import check_quality
from spark_jobs.day_status import latest_verdicts
from tests.expectations.conftest import AD_DDL, DAY, IMPRESSION_DDL, ad_row, clean_rows


def write_ingest_records(spark, cfg, records):
    """ops/ingest_runs rows as ingest writes them: {day: (landing_imp, quarantined_imp, landing_ads,
    quarantined_ads, reasons)}."""
    rows = [(day, json.dumps({"dt": str(day), "landing_impressions": li, "quarantined_impressions": qi,
                              "landing_ads": la, "quarantined_ads": qa, "reasons": reasons}))
            for day, (li, qi, la, qa, reasons) in records.items()]
    (spark.createDataFrame(rows, "dt date, record string").write.format("delta").mode("append")
     .partitionBy("dt").save(Paths.of(cfg).ingest_runs))


def _write_bronze(spark, cfg, records=None):
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
    empty = {"impressions": {}, "ads": {}}
    write_ingest_records(spark, cfg, records or {
        DAY: (22, 1, 3, 0, {"impressions": {"unknown_ad": 1}, "ads": {}}),
        DAY + dt.timedelta(days=1): (0, 0, 0, 0, empty)})


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
    assert suites["bronze_quarantine"]["success"]
    assert summary["quarantine"]["impressions"] == {"landing": 22, "quarantined": 1, "rate": 1 / 22,
                                                    "reasons": {"unknown_ad": 1}}
    assert summary["quarantine"]["ads"]["rate"] == 0.0
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
    verdicts = latest_verdicts(spark, Paths.of(tmp_cfg), [DAY, next_day])
    assert verdicts[DAY]["passed"] and verdicts[DAY]["reason"] == "passed"
    assert not verdicts[next_day]["passed"] and "expect_table_row_count_to_be_between" in verdicts[next_day]["reason"]


def test_quarantine_budget_is_critical_and_broken_down_per_reason(tmp_cfg, spark):
    cfg = tmp_cfg.replace({"quality.max_quarantine_rate": 0.2})
    # 30 of 52 landing impressions quarantined (the 22 bronze rows of the day are clean)
    _write_bronze(spark, cfg, {DAY: (52, 30, 3, 1, {"impressions": {"unknown_ad": 28, "bad_type": 2},
                                                    "ads": {"negative_price": 1}})})
    with pytest.raises(DataQualityError) as err:
        check_quality.run(cfg, spark, DAY)
    assert "impressions_quarantine_rate" in str(err.value) and "max_value=0.2" in str(err.value)
    assert "ads_quarantine_rate" in str(err.value)  # 1 of 3 > 0.2
    with open(os.path.join(Paths.of(cfg).reports, "quality", f"{DAY}.json")) as fh:
        summary = json.load(fh)
    assert summary["quarantine"] == {
        "max_rate": 0.2,
        "impressions": {"landing": 52, "quarantined": 30, "rate": 30 / 52,
                        "reasons": {"bad_type": 2, "unknown_ad": 28}},
        "ads": {"landing": 3, "quarantined": 1, "rate": 1 / 3, "reasons": {"negative_price": 1}}}
    assert summary["suites"]["bronze_quarantine"]["failed_critical"]
    verdict = latest_verdicts(spark, Paths.of(cfg), [DAY])[DAY]
    assert not verdict["passed"] and "impressions_quarantine_rate" in verdict["reason"]


def test_missing_bronze_table_names_the_path(tmp_cfg, spark):
    with pytest.raises(FileNotFoundError, match="bronze impressions Delta table not found"):
        check_quality.run(tmp_cfg, spark, DAY)
