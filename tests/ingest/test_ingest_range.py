"""Ingesting a date range at once gives exactly the tables and records of day-by-day ingest."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import shutil

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from core.paths import Paths
from simworld.generate import generate_range
from spark_jobs import ingest
from tests.ingest.landing_fixture import _png, ad, impression, ts, write_day
from tests.ingest.test_ingest_simulated import ALL_KNOBS

FIRST = dt.date(2026, 1, 5)
LAST = FIRST + dt.timedelta(days=2)
TABLES = ("bronze_impressions", "bronze_ads", "bronze_images", "quarantine")
RUN_ONLY_KEYS = ("versions", "range", "seconds")  # what differs by construction between the two paths


def _two_roots(cfg, tmp_path):
    """The config as given (root A) and the same config on root B holding a copy of A's landing."""
    cfg_b = cfg.replace({"storage.root": str(tmp_path / "per_day")})
    shutil.copytree(Paths.of(cfg).landing, Paths.of(cfg_b).landing)
    return cfg, cfg_b


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in RUN_ONLY_KEYS}


def _runs_by_day(spark, paths: Paths) -> dict[str, dict]:
    rows = spark.read.format("delta").load(paths.ingest_runs).collect()
    assert len(rows) == len({r.dt for r in rows}), "one ingest-run row per day"
    return {str(r.dt): _comparable(json.loads(r.record)) for r in rows}


def _assert_same_outputs(spark, cfg_range, cfg_per_day, range_records, per_day_records):
    paths_r, paths_d = Paths.of(cfg_range), Paths.of(cfg_per_day)
    for table in TABLES:
        assertDataFrameEqual(spark.read.format("delta").load(getattr(paths_r, table)),
                             spark.read.format("delta").load(getattr(paths_d, table)))
    assert [_comparable(r) for r in range_records] == [_comparable(r) for r in per_day_records]
    assert _runs_by_day(spark, paths_r) == _runs_by_day(spark, paths_d)
    for record in range_records:
        with open(os.path.join(paths_r.run_dir(record["dt"]), "ingest.json")) as f:
            assert _comparable(json.load(f)) == _comparable(record)


def test_range_equals_day_by_day_on_simulated_days(spark, tmp_cfg, tmp_path, monkeypatch):
    cfg = tmp_cfg.replace(ALL_KNOBS)
    generate_range(cfg, FIRST, LAST)
    cfg_range, cfg_per_day = _two_roots(cfg, tmp_path)

    checked = collections.Counter()
    real_read_local_images = ingest.read_local_images

    def counting_read_local_images(session, landing_dir, uris):
        checked.update(u for u in uris if u.endswith(".png"))
        return real_read_local_images(session, landing_dir, uris)

    monkeypatch.setattr(ingest, "read_local_images", counting_read_local_images)
    range_records = ingest.run_range(cfg_range, spark, FIRST, LAST)
    monkeypatch.undo()
    assert checked and max(checked.values()) == 1, "each image URI is checked (and decoded) once per range"

    per_day_records = [ingest.run(cfg_per_day, spark, day) for day in _days(FIRST, LAST)]
    assert [r["dt"] for r in range_records] == [str(d) for d in _days(FIRST, LAST)]
    assert all(r["quarantined_impressions"] and r["quarantined_ads"] for r in range_records)
    images = spark.read.format("delta").load(Paths.of(cfg_range).bronze_images)
    assert {r.first_seen_dt for r in images.select("first_seen_dt").distinct().collect()} == set(_days(FIRST, LAST))
    assert all(r["range"] == [str(FIRST), str(LAST)] for r in range_records)
    _assert_same_outputs(spark, cfg_range, cfg_per_day, range_records, per_day_records)

    # Re-ingesting the range (its images now known) replaces its days: the same tables, no new images.
    again = ingest.run_range(cfg_range, spark, FIRST, LAST)
    assert [r["new_images"] for r in again] == [0, 0, 0]
    assert [dict(_comparable(r), new_images=0) for r in per_day_records] == [_comparable(r) for r in again]
    for table in TABLES:
        assertDataFrameEqual(spark.read.format("delta").load(getattr(Paths.of(cfg_range), table)),
                             spark.read.format("delta").load(getattr(Paths.of(cfg_per_day), table)))


def test_hand_written_days_are_judged_per_day_and_an_image_change_merges_in_day_order(spark, tmp_cfg, tmp_path,
                                                                                   caplog):
    """Ad 1's image changes on the second day, so the range falls back to day order; the same
    impression id on two days is no duplicate; 'outside the day' is judged against each row's day."""
    day1, day2 = FIRST, FIRST + dt.timedelta(days=1)
    landing = Paths.of(tmp_cfg).landing
    write_day(landing, [impression(0, event_ts=ts(10, day1)), impression(1, event_ts=ts(10, day1)),
                        impression(2, ad_id=2, event_ts=ts(10, day1)), impression(1, event_ts=ts(10, day1))],
              [ad(1), ad(2, price=-1.0)], {"images/0/1.png": _png((200, 0, 0)), "images/0/2.png": _png((0, 200, 0))},
              day=day1)
    write_day(landing, [impression(0, event_ts=ts(9, day2)), impression(1, event_ts=ts(9, day1)),
                        impression(2, ad_id=2, event_ts=ts(9, day2))],
              [ad(1, image_uri="images/1/1.png"), ad(2)], {"images/1/1.png": _png((0, 0, 200))}, day=day2)
    cfg_range, cfg_per_day = _two_roots(tmp_cfg, tmp_path)

    with caplog.at_level(logging.WARNING, logger="ingest"):
        range_records = ingest.run_range(cfg_range, spark, day1, day2)
    assert "one day at a time" in caplog.text and "ad 1" in caplog.text
    per_day_records = [ingest.run(cfg_per_day, spark, day) for day in (day1, day2)]
    _assert_same_outputs(spark, cfg_range, cfg_per_day, range_records, per_day_records)

    paths = Paths.of(cfg_range)
    bronze = spark.read.format("delta").load(paths.bronze_impressions)
    assert sorted((str(r.dt), r.impression_id) for r in bronze.collect()) == [
        (str(day1), "i0"), (str(day1), "i1"), (str(day2), "i0"), (str(day2), "i2")]
    assert range_records[1]["reasons"]["impressions"] == {"ts_outside_day": 1}
    assert range_records[0]["reasons"] == {"impressions": {"duplicate_id": 1, "ad_of_bad_catalog_row": 1},
                                           "ads": {"negative_price": 1}}
    images = spark.read.format("delta").load(paths.bronze_images)
    assert sorted((r.ad_id, r.image_uri, r.first_seen_dt) for r in images.collect()) == [
        (1, "images/1/1.png", day1), (2, "images/0/2.png", day2)]


def test_an_incomplete_day_fails_the_range_naming_it_before_any_write(spark, tmp_cfg):
    paths = Paths.of(tmp_cfg)
    for day in (FIRST, LAST):
        write_day(paths.landing, [impression(0)], [ad(1)], {"images/0/1.png": _png((1, 1, 1))}, day=day)
    middle = FIRST + dt.timedelta(days=1)
    with pytest.raises(ingest.LandingError, match=f"landing drop for {middle} is not complete"):
        ingest.run_range(tmp_cfg, spark, FIRST, LAST)
    assert not os.path.exists(paths.bronze_impressions) and not os.path.exists(paths.ingest_runs)
    with pytest.raises(ValueError, match=f"end date {FIRST} is before start date {LAST}"):
        ingest.run_range(tmp_cfg, spark, LAST, FIRST)
