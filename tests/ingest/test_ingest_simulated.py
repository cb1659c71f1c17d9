"""Ingest on simulated days: idempotent re-runs, and every bad-data class quarantined."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from pyspark.sql import functions as F

from core.paths import Paths
from expectations.runner import DataQualityError
from simworld.generate import generate_day
from spark_jobs import check_quality, ingest

DAY = dt.date(2026, 1, 5)

ALL_KNOBS = {
    "world.bad_data.null_required_rate": 0.01, "world.bad_data.unknown_ad_rate": 0.01,
    "world.bad_data.bad_label_rate": 0.01, "world.bad_data.negative_price_rate": 0.005,
    "world.bad_data.out_of_day_ts_rate": 0.01, "world.bad_data.duplicate_id_rate": 0.01,
    "world.bad_data.corrupt_image_rate": 0.005, "world.bad_data.missing_image_rate": 0.005,
    "world.bad_data.escaping_image_uri_rate": 0.005, "world.bad_data.extra_column": True,
    "world.bad_data.missing_column": True,
}


def test_clean_day_twice_gives_one_copy(spark, tmp_cfg):
    paths = Paths.of(tmp_cfg)
    generate_day(tmp_cfg, DAY)
    first = ingest.run(tmp_cfg, spark, DAY)
    second = ingest.run(tmp_cfg, spark, DAY)
    assert first["quarantined_impressions"] == 0 and first["quarantined_ads"] == 0
    assert second["bronze_impressions"] == first["landing_impressions"]
    bronze = spark.read.format("delta").load(paths.bronze_impressions)
    assert bronze.count() == first["landing_impressions"]
    assert bronze.select("impression_id").distinct().count() == bronze.count()
    images = spark.read.format("delta").load(paths.bronze_images)
    assert images.count() == images.select("ad_id").distinct().count() == first["bronze_ads"]


def test_every_bad_data_class_lands_in_quarantine(spark, tmp_cfg):
    cfg = tmp_cfg.replace(ALL_KNOBS)
    paths = Paths.of(cfg)
    generate_day(cfg, DAY)
    with open(os.path.join(paths.landing_day(DAY), "_injected.json")) as f:
        injected = json.load(f)
    record = ingest.run(cfg, spark, DAY)

    assert record["landing_impressions"] == record["bronze_impressions"] + record["quarantined_impressions"]
    assert record["landing_ads"] == record["bronze_ads"] + record["quarantined_ads"]
    assert record["schema_drift"]["impressions"]["extra"] == [injected["extra_column"]]
    assert record["schema_drift"]["impressions"]["missing"] == [injected["missing_column"]]

    q = spark.read.format("delta").load(paths.quarantine).where(F.col("dt") == F.lit(DAY))
    got = {(r.source, r.reason, r.key) for r in q.collect()}
    bad_ads = {k for s, r, k in got if s == "ads"}
    for reason in ("negative_price", "image_corrupt", "image_missing", "image_uri_escapes"):
        ids = {str(i) for i in injected[reason]["ad_ids"]}
        assert ids and ids <= {k for s, r, k in got if s == "ads" and r == reason}, reason
    for reason in ("unknown_ad", "bad_label", "ts_outside_day", "duplicate_id"):
        ids = {str(i) for i in injected[reason]["impression_ids"]}
        reasons_of_ids = {r for s, r, k in got if s == "impressions" and k in ids}
        assert ids, reason
        assert reason in reasons_of_ids, reason
        # An injected row may only carry another reason when its ad was itself quarantined.
        assert reasons_of_ids <= {reason, "ad_of_bad_catalog_row", "null_required"}, (reason, reasons_of_ids)
    assert record["reasons"]["impressions"]["null_required"] >= injected["null_required"]["count"]
    assert bad_ads, "bad catalog rows must be quarantined"
    bronze = spark.read.format("delta").load(paths.bronze_impressions)
    assert bronze.where(~F.col("click").isin(0, 1)).count() == 0
    assert bronze.select("impression_id").distinct().count() == bronze.count()


def test_bad_day_quality_report_marks_failed_expectations(spark, tmp_cfg):
    """Schema drift on the landing file fails (non-critically) and the Data Docs page shows it;
    an empty day fails critically, naming the expectation and the report."""
    cfg = tmp_cfg.replace({"world.bad_data.extra_column": True, "world.bad_data.missing_column": True})
    generate_day(cfg, DAY)
    ingest.run(cfg, spark, DAY)
    summary = check_quality.run(cfg, spark, DAY)
    drift = [s for name, s in summary["suites"].items() if "landing" in name]
    assert drift and not drift[0]["success"] and not drift[0]["failed_critical"]
    page = open(drift[0]["report_path"]).read()
    assert "fa-times" in page  # GX's failed-expectation marker

    empty_day = DAY + dt.timedelta(days=1)
    cfg_empty = tmp_cfg.replace({"world.bad_data.empty_day": True})
    generate_day(cfg_empty, empty_day)
    ingest.run(cfg_empty, spark, empty_day)
    with pytest.raises(DataQualityError) as err:
        check_quality.run(cfg_empty, spark, empty_day)
    message = str(err.value)
    assert "report:" in message
    report = message.split("report:")[1].split()[0]
    assert os.path.exists(report), report
