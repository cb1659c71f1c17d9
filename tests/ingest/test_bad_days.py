"""Simulated days with bad data: wrongly typed values are quarantined per row and never fail the
day; a day that loses too many rows to quarantine fails its quality check on the budget."""

from __future__ import annotations

import datetime as dt
import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from core.paths import Paths
from expectations.runner import DataQualityError
from simworld.generate import generate_day
from spark_jobs import check_quality, ingest
from spark_jobs.day_status import latest_verdicts

DAY = dt.date(2026, 1, 5)
BAD_ROWS = 7  # of the day's 2,000 impressions get an unconvertible user_location


def _retype_user_location(path: str) -> list[str]:
    """Rewrite the landing file with user_location as strings, BAD_ROWS of them not numbers.

    Returns the impression ids of the bad rows."""
    table = pq.read_table(path)
    locations = pc.cast(table["user_location"], pa.string()).to_pylist()
    bad_idx = list(range(0, BAD_ROWS * 100, 100))
    for i in bad_idx:
        locations[i] = f"region-{i}"
    table = table.set_column(table.schema.get_field_index("user_location"), "user_location",
                             pa.array(locations, pa.string()))
    pq.write_table(table, path)
    return [table["impression_id"][i].as_py() for i in bad_idx]


def test_wrongly_typed_optional_values_are_quarantined_as_bad_type(spark, tmp_cfg):
    paths = Paths.of(tmp_cfg)
    generate_day(tmp_cfg, DAY)
    bad_ids = _retype_user_location(paths.landing_impressions(DAY))

    record = ingest.run(tmp_cfg, spark, DAY)
    assert record["reasons"]["impressions"] == {"bad_type": BAD_ROWS}
    assert record["landing_impressions"] == record["bronze_impressions"] + BAD_ROWS
    quarantined = (spark.read.format("delta").load(paths.quarantine)
                   .where((F.col("dt") == F.lit(DAY)) & (F.col("source") == "impressions")).collect())
    assert sorted(r["key"] for r in quarantined) == sorted(bad_ids)
    assert {r["reason"] for r in quarantined} == {"bad_type"}
    raw = json.loads(quarantined[0]["record"])
    assert raw["user_location"].startswith("region-")  # the raw value, not a null
    bronze = spark.read.format("delta").load(paths.bronze_impressions).where(F.col("dt") == F.lit(DAY))
    assert bronze.where(F.col("impression_id").isin(bad_ids)).count() == 0
    assert dict(bronze.dtypes)["user_location"] == "int"  # the numeric strings were converted
    assert bronze.where(F.col("user_location").isNotNull()).count() == bronze.count()

    summary = check_quality.run(tmp_cfg, spark, DAY)  # 7 of 2,000: within the budget, the day passes
    assert summary["quarantine"]["impressions"]["reasons"] == {"bad_type": BAD_ROWS}
    assert summary["suites"]["bronze_quarantine"]["success"]
    assert latest_verdicts(spark, paths, [DAY])[DAY]["passed"]


def test_day_with_many_unknown_ads_fails_on_the_quarantine_budget(spark, tmp_cfg):
    cfg = tmp_cfg.replace({"world.bad_data.unknown_ad_rate": 0.4})
    paths = Paths.of(cfg)
    generate_day(cfg, DAY)
    record = ingest.run(cfg, spark, DAY)  # ingest itself succeeds: every row is accounted for
    assert record["reasons"]["impressions"]["unknown_ad"] == round(0.4 * record["landing_impressions"])

    with pytest.raises(DataQualityError) as err:
        check_quality.run(cfg, spark, DAY)
    message = str(err.value)
    assert "impressions_quarantine_rate" in message
    assert f"max_value={cfg.quality.max_quarantine_rate}" in message
    assert "row_count" not in message  # only the budget fails
    with open(os.path.join(paths.reports, "quality", f"{DAY}.json")) as fh:
        quarantine = json.load(fh)["quarantine"]
    assert quarantine["impressions"]["rate"] == pytest.approx(0.4, abs=0.001)
    assert quarantine["impressions"]["reasons"] == {"unknown_ad": record["reasons"]["impressions"]["unknown_ad"]}
    verdict = latest_verdicts(spark, paths, [DAY])[DAY]
    assert not verdict["passed"] and "impressions_quarantine_rate" in verdict["reason"]
