"""Ingest on a hand-written landing day: each violation gets its reason; counts reconcile."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from core.paths import Paths
from spark_jobs import ingest
from tests.ingest.landing_fixture import DAY, ad, bad_day, impression, write_day, _png


def test_each_violation_is_quarantined_with_its_reason(spark, tmp_cfg):
    paths = Paths.of(tmp_cfg)
    expected = bad_day(paths.landing)
    record = ingest.run(tmp_cfg, spark, DAY)
    assert record["reasons"] == expected
    assert record["landing_impressions"] == 11
    assert record["bronze_impressions"] == 3  # i0, i1 (its first copy) and i2
    assert record["bronze_impressions"] + record["quarantined_impressions"] == record["landing_impressions"]
    assert record["bronze_ads"] + record["quarantined_ads"] == record["landing_ads"]
    bronze = spark.read.format("delta").load(paths.bronze_impressions)
    assert sorted(r.impression_id for r in bronze.collect()) == ["i0", "i1", "i2"]
    q = spark.read.format("delta").load(paths.quarantine)
    dup = q.where((F.col("source") == "impressions") & (F.col("reason") == "duplicate_id")).collect()
    assert [json.loads(r.record)["impression_id"] for r in dup] == ["i1"]
    images = spark.read.format("delta").load(paths.bronze_images)
    assert sorted(r.ad_id for r in images.collect()) == [1, 2]


def test_reingest_replaces_the_day(spark, tmp_cfg):
    paths = Paths.of(tmp_cfg)
    images = {"images/0/1.png": _png((9, 9, 9))}
    write_day(paths.landing, [impression(i) for i in range(5)], [ad(1)], images)
    ingest.run(tmp_cfg, spark, DAY)
    ingest.run(tmp_cfg, spark, DAY)
    for uri in (paths.bronze_impressions, paths.bronze_ads, paths.bronze_images):
        df = spark.read.format("delta").load(uri)
        assert df.count() == df.distinct().count() if "images" not in uri else df.count() == 1
    assert spark.read.format("delta").load(paths.bronze_impressions).count() == 5
    assert spark.read.format("delta").load(paths.ingest_runs).count() == 1


def test_missing_drop_and_missing_required_column_are_clear_errors(spark, tmp_cfg):
    with pytest.raises(ingest.LandingError, match="_SUCCESS is missing"):
        ingest.run(tmp_cfg, spark, DAY)
    paths = Paths.of(tmp_cfg)
    write_day(paths.landing, [impression(0)], [ad(1)], {"images/0/1.png": _png((1, 1, 1))}, drop_columns=("click",))
    with pytest.raises(ingest.LandingError, match=r"required column\(s\) \['click'\]"):
        ingest.run(tmp_cfg, spark, DAY)


def test_schema_drift_is_recorded_not_silent(spark, tmp_cfg):
    paths = Paths.of(tmp_cfg)
    rows = [dict(impression(i), debug_note="x") for i in range(3)]
    for r in rows:
        r.pop("query_title_match")
    write_day(paths.landing, rows, [ad(1)], {"images/0/1.png": _png((1, 1, 1))},
              extra_columns=[("debug_note", pa.string())], drop_columns=("query_title_match",))
    record = ingest.run(tmp_cfg, spark, DAY)
    assert record["schema_drift"]["impressions"] == {"extra": ["debug_note"], "missing": ["query_title_match"]}
    assert record["bronze_impressions"] == 3
    bronze = spark.read.format("delta").load(paths.bronze_impressions)
    assert bronze.where(F.col("query_title_match").isNotNull()).count() == 0
