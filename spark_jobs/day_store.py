"""The stored day rows and daily value counts of the build_window stage, kept per bronze day.

`features/day_rows` and `features/daily_counts` hold one partition per day (dt), tagged with the
day's source fingerprint: a digest of the bronze data files behind the day. A run rewrites a day
only when its fingerprint changed (re-ingested) or it is missing, so a daily run does Spark work
for its new day only; `features.incremental = false` rewrites every day (the full rebuild).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.delta import dates_sql, delta_exists, replace_where
from core.paths import Paths
from features.encoder import stable_column
from features.tables import DAILY_COUNTS_TABLE, DAY_ROWS_TABLE
from spark_jobs.example_assembly import DAY_ROW_READ_COLUMNS
from spark_jobs.feature_transforms import agg_daily_value_counts, with_ad_positions
from spark_jobs.id_registry import encode_days, read_registry, timed_register

# Bumped whenever the meaning of a stored day (its rows or counts) changes, so that it is redone.
COUNTS_FORMAT_VERSION = "3"  # 3: vocabulary fields stored and counted as stable ids
DAY_ROW_COLUMNS: tuple[str, ...] = ("dt", *DAY_ROW_READ_COLUMNS)
_DT_DIR = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def source_fingerprints(imp_df: DataFrame, ads_df: DataFrame, days: list[dt.date]) -> dict[dt.date, str]:
    """A digest per day of the bronze data files behind that day (no data is read).

    Delta data files are immutable and uniquely named, so re-ingesting a day changes its
    digest and the day is recounted. Files outside a dt= folder count for every day.
    """
    per_day: dict[str, list[str]] = {d.isoformat(): [] for d in days}
    shared: list[str] = []
    for table, df in (("impressions", imp_df), ("ads", ads_df)):
        for path in df.inputFiles():
            tag = f"{table}:{path.rsplit('/', 1)[-1]}"
            m = _DT_DIR.search(path)
            if m is None:
                shared.append(tag)
            elif m.group(1) in per_day:
                per_day[m.group(1)].append(tag)
    out = {}
    for d in days:
        digest = hashlib.sha256(COUNTS_FORMAT_VERSION.encode())
        for tag in sorted(per_day[d.isoformat()] + shared):
            digest.update(tag.encode() + b"\n")
        out[d] = digest.hexdigest()[:32]
    return out


def _stale_days(spark: SparkSession, uri: str, days: list[dt.date], fingerprints: dict[dt.date, str],
                incremental: bool) -> list[dt.date]:
    """Days whose partition of the per-day table at `uri` is missing or was built from other bronze
    files (every day when not incremental)."""
    stored: dict[dt.date, set[str]] = {}
    if incremental and days and delta_exists(spark, uri):
        for row in (spark.read.format("delta").load(uri).where(f"dt IN ({dates_sql(days)})")
                    .select("dt", "source_fingerprint").distinct().collect()):
            stored.setdefault(row["dt"], set()).add(row["source_fingerprint"])
    return [d for d in days if stored.get(d) != {fingerprints[d]}]


def _with_fingerprints(df: DataFrame, fingerprints: dict[dt.date, str], days: list[dt.date]) -> DataFrame:
    fingerprint_of = F.create_map(*[x for d in days for x in (F.lit(d), F.lit(fingerprints[d]))])
    return df.withColumn("source_fingerprint", fingerprint_of[F.col("dt")])


def update_day_rows(spark: SparkSession, paths: Paths, joined_df: DataFrame, days: list[dt.date],
                    fingerprints: dict[dt.date, str], incremental: bool) -> list[dt.date]:
    """Encode and write the joined rows (DAY_ROW_COLUMNS) of the days whose stored rows are missing
    or stale: their new values are registered first (spark_jobs/id_registry.py), then every
    vocabulary field is stored as its stable id.

    Returns the days written now; each replaces its dt partition (replaceWhere), so re-runs
    never duplicate rows.
    """
    uri = paths.table(DAY_ROWS_TABLE)
    to_write = _stale_days(spark, uri, days, fingerprints, incremental)
    if to_write:
        days_df = joined_df.where(F.col("dt").isin(to_write))
        timed_register(spark, paths, days_df)
        rows_df = (encode_days(days_df.transform(with_ad_positions), read_registry(spark, paths))
                   .select(*DAY_ROW_COLUMNS).transform(lambda df: _with_fingerprints(df, fingerprints, to_write)))
        # mergeSchema: a table stored before the registry held raw columns; its days are all stale
        # (COUNTS_FORMAT_VERSION), so every day is rewritten with the id columns.
        replace_where(rows_df, uri, ["dt"], f"dt IN ({dates_sql(to_write)})", merge_schema=True)
    return to_write


def update_daily_counts(spark: SparkSession, paths: Paths, days: list[dt.date],
                        fingerprints: dict[dt.date, str], incremental: bool) -> list[dt.date]:
    """Count, from the stored day rows, the days whose stored counts are missing or stale (all
    days when not incremental): vocabulary fields by stable id, numeric fields by value. Returns
    the days counted now (each replaces its partition)."""

    uri = paths.table(DAILY_COUNTS_TABLE)
    to_count = _stale_days(spark, uri, days, fingerprints, incremental)
    if to_count:
        rows_df = spark.read.format("delta").load(paths.table(DAY_ROWS_TABLE)).where(F.col("dt").isin(to_count))
        counts_df = (rows_df.transform(lambda df: agg_daily_value_counts(df, column=stable_column))
                     .transform(lambda df: _with_fingerprints(df, fingerprints, to_count))
                     .repartition("dt"))  # one file per day, not one per day and task
        replace_where(counts_df, uri, ["dt"], f"dt IN ({dates_sql(to_count)})")
    return to_count
