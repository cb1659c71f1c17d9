"""Features: bronze window [D-W, D-1] + holdout day D -> encoded examples for the CTR models.

    python spark_jobs/features.py --date 2026-02-02 [--config FILE | --config-json JSON] [--set k=v]
                                  [--bronze-versions '{"impressions": 12, "ads": 12}']

Every impression is joined to the ad catalog of its own day (bronze ads, dt = impression dt).
Per run date D this job writes (Delta tables under the warehouse, all replaced per date):

  features/day_rows      one bronze day's impressions joined to that day's catalog, with ad_pos (the
                         row's position among its ad's rows of the day, by event_ts and
                         impression_id) and source_fingerprint (partitioned by dt); written once
                         per day and rewritten only when the day's bronze files change
  features/daily_counts  dt, field, value, num_value, count, source_fingerprint (partitioned by dt)
                         raw value counts of one day's rows, counted once like the day rows
  features/vocab         run_date, field, value, id, count: values seen >= min_count times in
                         the window, ids 1.. by descending count (0 = OOV)
  features/bins          run_date, field, edges: exact quantile edges of the window's values
  features/ad_window_counts  run_date, ad_id, impressions: every ad's impressions in the window
                         (is_cold = impressions < COLD_MAX_IMPRESSIONS, also for serving)
  features/examples/<D>  the run date's encoded examples of core/feature_spec.py, one Delta table per
                         run date (partitioned by split), assembled from the day rows outside Spark
                         (spark_jobs/examples.py)
  features/runs          run_date, the feature spec, bronze versions read, window and metadata

A daily run therefore does Spark work for its new day only (join, count, write its rows) and
sums stored counts; the window's rows are encoded, grouped and written by one pyarrow/numpy
pass over the stored day rows. The full rebuild (features.incremental=false) recounts and
rewrites every day from the raw logs and then runs the same assembly.

Numeric bins are exact weighted quantiles of the window's value counts, computed from the same
daily counts as the vocabularies; that keeps the incremental run (sum the stored daily counts,
count only new or changed days) and the full rebuild (recount every window day from the raw
logs) identical, which an approximate sketch per day could not promise.

Window days whose latest quality verdict failed (ops/day_status, written by check_bronze_quality)
are left out of the window (features.failed_days = "exclude", the default; "fail" stops the
stage) and named in the run's record as `excluded_days: [{"date": "YYYY-MM-DD", "reason": ...}]`;
a holdout day that failed always stops it. Both leave the stage with core.exit_codes.BAD_DATA.
Exclusion only changes which stored days a run reads: a day's stored rows and counts depend on
its bronze files alone, so a re-ingested day that passes again is rewritten (its fingerprint
changed) and counted like any other day.

Reproducible: the run records the Delta versions of the bronze tables it read; passing them back
as `bronze_versions` re-reads those versions (time travel) and reproduces the outputs exactly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from core.config import FeaturesConfig, PipelineConfig
from core.exit_codes import BAD_DATA, BadDataError
from core.feature_spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS, FeatureSpec
from core.files import write_json_local
from core.paths import Paths
from spark_jobs.examples import (DAY_ROW_READ_COLUMNS, EXAMPLE_COLUMNS, NULL_AD_KEY, SPLITS, examples_location,
                                 read_example_files)
from spark_jobs.day_status import latest_verdicts
from spark_jobs.feature_encoding import CATEGORICAL_SINGLE_FIELDS, VOCAB_FIELDS, FeatureEncoder

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("features")

DAY_ROWS_TABLE = "features/day_rows"
DAILY_COUNTS_TABLE = "features/daily_counts"
VOCAB_TABLE = "features/vocab"
BINS_TABLE = "features/bins"
AD_COUNTS_TABLE = "features/ad_window_counts"
EXAMPLES_TABLE = "features/examples"
RUNS_TABLE = "features/runs"

# Bumped whenever the meaning of a stored day (its rows or counts) changes, so that it is redone.
COUNTS_FORMAT_VERSION = "2"
DAY_ROW_COLUMNS: tuple[str, ...] = ("dt", *DAY_ROW_READ_COLUMNS)
COUNT_COLUMNS: tuple[str, ...] = ("field", "value", "num_value", "count")


class FeaturesError(RuntimeError):
    """The features stage cannot run for a date (missing days, missing tables, bad settings)."""


class FailedDaysError(FeaturesError, BadDataError):
    """The holdout day or (with features.failed_days = "fail") a window day failed its quality check."""


# --------------------------------------------------------------------------- settings


def window_dates(run_date: dt.date, window_days: int) -> list[dt.date]:
    """The training window [D-W, D-1] of run date D, oldest first."""
    return [run_date - dt.timedelta(days=k) for k in range(window_days, 0, -1)]


def min_count_thresholds(fc: FeaturesConfig) -> dict[str, int]:
    """Frequency threshold per vocabulary field (features.min_count_per_field over features.min_count)."""
    unknown = sorted(set(fc.min_count_per_field) - set(VOCAB_FIELDS))
    if unknown:
        binned = [u for u in unknown if u in NUMERIC_FIELDS]
        hint = f" ({', '.join(binned)} are binned, not thresholded)" if binned else ""
        raise FeaturesError(f"features.min_count_per_field names unknown field(s) {unknown}{hint}; "
                            f"allowed: {', '.join(VOCAB_FIELDS)}")
    return {name: fc.min_count_per_field.get(name, fc.min_count) for name in VOCAB_FIELDS}


def failed_days(spark: "SparkSession", paths: Paths, run_date: dt.date, window: list[dt.date],
                policy: str) -> dict[dt.date, str]:
    """{day: reason} of the window days whose latest quality verdict failed (ops/day_status), in date order.

    Raises FailedDaysError when the holdout day's verdict failed (whatever the policy: its rows
    are what the model is judged on), or when a window day failed and `policy` is "fail".
    """
    verdicts = latest_verdicts(spark, paths, [*window, run_date])
    holdout = verdicts.get(run_date)
    if holdout is not None and not holdout["passed"]:
        raise FailedDaysError(f"holdout day {run_date} failed its quality check ({holdout['reason']}); "
                              "replace its landing drop, re-ingest and re-check it first")
    failed = {d: verdicts[d]["reason"] for d in window if d in verdicts and not verdicts[d]["passed"]}
    if not failed:
        return failed
    listed = "; ".join(f"{d}: {reason}" for d, reason in failed.items())
    if policy == "fail":
        raise FailedDaysError(f"features {run_date}: {len(failed)} window day(s) failed their quality check "
                              f"({listed}); fix and re-check them, or set features.failed_days=exclude")
    log.warning("features %s: excluding %d window day(s) whose quality check failed: %s", run_date, len(failed),
                listed)
    return failed


# --------------------------------------------------------------------------- pure transforms


def with_catalog(ads_df: "DataFrame") -> Callable[["DataFrame"], "DataFrame"]:
    """Join each impression to the catalog row of its ad on the impression's day (left join).

    Ingest keeps one catalog row per (dt, ad_id), so the join never multiplies impressions; an
    impression without a catalog row keeps null ad attributes (OOV ids, null bins).
    """

    def inner(imp_df: "DataFrame") -> "DataFrame":
        catalog_df = ads_df.select("dt", "ad_id", "category_id", "parent_category_id", "brand_id", "shop_id",
                                   "price", "review_count", "title_words")
        return imp_df.join(catalog_df, on=["dt", "ad_id"], how="left")

    return inner


def agg_daily_value_counts(joined_df: "DataFrame") -> "DataFrame":
    """Occurrences of every raw value per (dt, field) of joined impression rows.

    Categorical values land in `value` (bigint), numeric ones in `num_value` (double; NaN counts
    as null); null single values are counted too (with both null) so that OOV rates include them.
    Multi-valued fields count each array element; a null array counts nothing.
    """
    from pyspark.sql import functions as F

    def entry(name: str, value, num_value):
        return F.struct(F.lit(name).alias("field"), value.cast("bigint").alias("value"),
                        num_value.cast("double").alias("num_value"))

    no_long, no_double = F.lit(None).cast("bigint"), F.lit(None).cast("double")
    singles = [entry(n, F.col(n), no_double) for n in CATEGORICAL_SINGLE_FIELDS]
    for n in NUMERIC_FIELDS:
        x = F.col(n).cast("double")
        singles.append(entry(n, no_long, F.when(F.isnan(x), None).otherwise(x)))
    def element_entry(name: str):  # a one-argument lambda: transform() passes (x, index) to two
        return lambda x: entry(name, x, no_double)

    multis = [F.transform(F.coalesce(F.col(n), F.array().cast("array<int>")), element_entry(n))
              for n in MULTI_FIELDS]
    entries = F.concat(F.array(*singles), *multis)
    return (joined_df.select("dt", F.explode(entries).alias("e"))
            .select("dt", "e.field", "e.value", "e.num_value")
            .groupBy("dt", "field", "value", "num_value").agg(F.count(F.lit(1)).alias("count")))


def agg_window_counts(daily_counts_df: "DataFrame") -> "DataFrame":
    """Sum daily value counts over the days present in `daily_counts_df`."""
    from pyspark.sql import functions as F

    return daily_counts_df.groupBy("field", "value", "num_value").agg(F.sum("count").cast("bigint").alias("count"))


def _field_threshold(thresholds: dict[str, int]):
    """A Column: the frequency threshold of the row's `field` (a literal map lookup)."""
    from pyspark.sql import functions as F

    pairs = [x for name, t in sorted(thresholds.items()) for x in (F.lit(name), F.lit(t))]
    return F.create_map(*pairs)[F.col("field")]


def agg_vocabulary(thresholds: dict[str, int]) -> Callable[["DataFrame"], "DataFrame"]:
    """Vocabulary rows (field, value, id, count) from window counts: values seen >= the field's
    threshold; ids 1.. by descending count, ties by ascending value (id 0 stays OOV)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def inner(window_counts_df: "DataFrame") -> "DataFrame":
        threshold = _field_threshold(thresholds)
        order = Window.partitionBy("field").orderBy(F.col("count").desc(), F.col("value").asc())
        return (window_counts_df
                .where(F.col("field").isin(list(thresholds)) & F.col("value").isNotNull()
                       & (F.col("count") >= threshold))
                .select("field", "value", F.row_number().over(order).cast("int").alias("id"), "count"))

    return inner


def agg_bin_edges(n_bins: int) -> Callable[["DataFrame"], "DataFrame"]:
    """Exact quantile bin edges (field, edges) of numeric fields from window value counts.

    Edge k (k = 1..n_bins-1) is the smallest value whose cumulative count reaches k/n_bins of
    the field's non-null count; equal edges (heavy values) collapse, so a field may get fewer
    than n_bins bins. Fields without any non-null value get no row.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def inner(window_counts_df: "DataFrame") -> "DataFrame":
        spark = window_counts_df.sparkSession
        by_field = Window.partitionBy("field")
        cumulative = by_field.orderBy("num_value").rowsBetween(Window.unboundedPreceding, Window.currentRow)
        cdf_df = (window_counts_df
                  .where(F.col("field").isin(list(NUMERIC_FIELDS)) & F.col("num_value").isNotNull())
                  .select("field", "num_value", F.sum("count").over(cumulative).alias("cum"),
                          F.sum("count").over(by_field).alias("total")))
        ks_df = spark.range(1, n_bins).select(F.col("id").alias("k"))
        return (cdf_df.crossJoin(F.broadcast(ks_df))
                .where(F.col("cum") * n_bins >= F.col("k") * F.col("total"))  # integer maths: no rounding
                .groupBy("field", "k").agg(F.min("num_value").alias("edge"))
                .groupBy("field").agg(F.array_sort(F.collect_set("edge")).alias("edges")))

    return inner


def with_ad_positions(df: "DataFrame") -> "DataFrame":
    """Add `ad_pos` (int, 0..): each row's position among the rows of its ad and dt, ordered by
    (event_ts, impression_id). Rows with a null ad_id are ordered as one more ad."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ad_key = F.coalesce(F.col("ad_id").cast("bigint"), F.lit(NULL_AD_KEY))
    within_ad = Window.partitionBy("dt", "_ad_key").orderBy("event_ts", "impression_id")
    return (df.withColumn("_ad_key", ad_key)
            .withColumn("ad_pos", (F.row_number().over(within_ad) - 1).cast("int")).drop("_ad_key"))


# --------------------------------------------------------------------------- I/O helpers


def _delta_exists(spark: "SparkSession", uri: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, uri)


def _latest_version(spark: "SparkSession", uri: str) -> int:
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, uri).history(1).select("version").collect()[0][0])


def resolve_bronze_versions(spark: "SparkSession", paths: Paths,
                            pinned: dict[str, int] | None = None) -> dict[str, int]:
    """Delta versions of the bronze tables to read: `pinned` ones as given, the others latest.

    impressions and ads are required; images is recorded when present (the trainer reads it).
    """
    uris = {"impressions": paths.bronze_impressions, "ads": paths.bronze_ads, "images": paths.bronze_images}
    pinned = dict(pinned or {})
    unknown = sorted(set(pinned) - set(uris))
    if unknown:
        raise FeaturesError(f"unknown bronze table(s) {unknown} in bronze_versions; allowed: {sorted(uris)}")
    versions: dict[str, int] = {}
    for name, uri in uris.items():
        if not _delta_exists(spark, uri):
            if name == "images":
                continue
            raise FeaturesError(f"bronze table {name!r} not found at {uri}; run ingest for the window first")
        latest = _latest_version(spark, uri)
        version = int(pinned.get(name, latest))
        if not 0 <= version <= latest:
            raise FeaturesError(f"bronze_versions[{name!r}] = {version} is outside [0, {latest}] of {uri}")
        versions[name] = version
    return versions


def _read_delta(spark: "SparkSession", uri: str, version: int | None = None) -> "DataFrame":
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(uri)


def _date_list_sql(days: list[dt.date]) -> str:
    return ", ".join(f"DATE'{d.isoformat()}'" for d in days)


def _replace(df: "DataFrame", uri: str, partition_by: list[str], where: str) -> None:
    """Overwrite exactly the rows matching `where` (creating the table on first write)."""
    (df.write.format("delta").mode("overwrite").partitionBy(*partition_by)
     .option("replaceWhere", where).save(uri))


_DT_DIR = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def source_fingerprints(imp_df: "DataFrame", ads_df: "DataFrame", days: list[dt.date]) -> dict[dt.date, str]:
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


def _stale_days(spark: "SparkSession", uri: str, days: list[dt.date], fingerprints: dict[dt.date, str],
                incremental: bool) -> list[dt.date]:
    """Days whose partition of the per-day table at `uri` is missing or was built from other bronze
    files (every day when not incremental)."""
    stored: dict[dt.date, set[str]] = {}
    if incremental and days and _delta_exists(spark, uri):
        for row in (spark.read.format("delta").load(uri).where(f"dt IN ({_date_list_sql(days)})")
                    .select("dt", "source_fingerprint").distinct().collect()):
            stored.setdefault(row["dt"], set()).add(row["source_fingerprint"])
    return [d for d in days if stored.get(d) != {fingerprints[d]}]


def _with_fingerprints(df: "DataFrame", fingerprints: dict[dt.date, str], days: list[dt.date]) -> "DataFrame":
    from pyspark.sql import functions as F

    fingerprint_of = F.create_map(*[x for d in days for x in (F.lit(d), F.lit(fingerprints[d]))])
    return df.withColumn("source_fingerprint", fingerprint_of[F.col("dt")])


def update_day_rows(spark: "SparkSession", paths: Paths, joined_df: "DataFrame", days: list[dt.date],
                    fingerprints: dict[dt.date, str], incremental: bool) -> list[dt.date]:
    """Write the joined rows (DAY_ROW_COLUMNS) of the days whose stored rows are missing or stale.

    Returns the days written now; each replaces its dt partition (replaceWhere), so re-runs
    never duplicate rows.
    """
    uri = paths.table(DAY_ROWS_TABLE)
    to_write = _stale_days(spark, uri, days, fingerprints, incremental)
    if to_write:
        from pyspark.sql import functions as F

        rows_df = (joined_df.where(F.col("dt").isin(to_write)).transform(with_ad_positions)
                   .select(*DAY_ROW_COLUMNS).transform(lambda df: _with_fingerprints(df, fingerprints, to_write)))
        _replace(rows_df, uri, ["dt"], f"dt IN ({_date_list_sql(to_write)})")
    return to_write


def update_daily_counts(spark: "SparkSession", paths: Paths, days: list[dt.date],
                        fingerprints: dict[dt.date, str], incremental: bool) -> list[dt.date]:
    """Count, from the stored day rows, the days whose stored counts are missing or stale (all
    days when not incremental). Returns the days counted now (each replaces its partition)."""
    from pyspark.sql import functions as F

    uri = paths.table(DAILY_COUNTS_TABLE)
    to_count = _stale_days(spark, uri, days, fingerprints, incremental)
    if to_count:
        rows_df = spark.read.format("delta").load(paths.table(DAY_ROWS_TABLE)).where(F.col("dt").isin(to_count))
        counts_df = (rows_df.transform(agg_daily_value_counts)
                     .transform(lambda df: _with_fingerprints(df, fingerprints, to_count))
                     .repartition("dt"))  # one file per day, not one per day and task
        _replace(counts_df, uri, ["dt"], f"dt IN ({_date_list_sql(to_count)})")
    return to_count


def day_row_files(spark: "SparkSession", paths: Paths, days: list[dt.date]) -> list[tuple[dt.date, str]]:
    """(day, local parquet path) of the stored day rows of `days` (the table's current files)."""
    from urllib.parse import unquote, urlparse

    wanted = {d.isoformat(): d for d in days}
    out = []
    for uri in spark.read.format("delta").load(paths.table(DAY_ROWS_TABLE)).inputFiles():
        m = _DT_DIR.search(uri)
        if m is None:
            raise FeaturesError(f"day-rows file {uri} is not inside a dt= partition folder")
        if m.group(1) in wanted:
            parsed = urlparse(uri)
            if parsed.scheme not in ("", "file"):
                raise FeaturesError(f"day-rows file {uri} is not on a local filesystem; the examples assembly "
                                    "reads local files only")
            out.append((wanted[m.group(1)], unquote(parsed.path)))
    return sorted(out)


def read_encoder(spark: "SparkSession", paths: Paths, run_date: dt.date) -> FeatureEncoder:
    """The FeatureEncoder of a run date from its stored vocabularies, bins and window ad counts."""
    vocab_uri, bins_uri = paths.table(VOCAB_TABLE), paths.table(BINS_TABLE)
    if not (_delta_exists(spark, vocab_uri) and _delta_exists(spark, bins_uri)):
        raise FeaturesError(f"no feature vocabularies/bins under {paths.table('features')}; "
                            f"run the features job for {run_date} first")
    day = f"run_date = DATE'{run_date.isoformat()}'"
    vocab_tbl = (spark.read.format("delta").load(vocab_uri).where(day)
                 .select("field", "value", "id", "count").toArrow())
    bins_rows = spark.read.format("delta").load(bins_uri).where(day).select("field", "edges").collect()
    if not bins_rows:
        raise FeaturesError(f"no bin edges stored for run date {run_date}; run the features job for it first")
    vocab_df = vocab_tbl.to_pandas()
    entries: dict[str, dict[int, int]] = {name: {} for name in VOCAB_FIELDS}
    for name, part in vocab_df.groupby("field"):
        entries[str(name)] = dict(zip(part["value"].tolist(), part["id"].tolist()))
    ad_counts: dict[int, int] = {}
    ad_counts_uri = paths.table(AD_COUNTS_TABLE)
    if _delta_exists(spark, ad_counts_uri):
        ads_df = (spark.read.format("delta").load(ad_counts_uri).where(day)
                  .select("ad_id", "impressions").toArrow().to_pandas())
        ad_counts = dict(zip(ads_df["ad_id"].tolist(), ads_df["impressions"].tolist()))
    return FeatureEncoder.from_entries(entries, {r["field"]: list(r["edges"] or []) for r in bins_rows}, ad_counts)


def _present_days(imp_df: "DataFrame", first: dt.date, last: dt.date) -> dict[dt.date, int]:
    """Impression rows per bronze day in [first, last] (one small job over the dt column)."""
    from pyspark.sql import functions as F

    rows = (imp_df.where(F.col("dt").between(F.lit(first), F.lit(last)))
            .groupBy("dt").count().collect())
    return {r["dt"]: int(r["count"]) for r in rows if r["count"] > 0}


def window_oov_rates(window_counts_df: "DataFrame", thresholds: dict[str, int]) -> dict[str, float]:
    """Per vocabulary field, the window's share of occurrences (nulls included) that map to OOV."""
    from pyspark.sql import functions as F

    threshold = _field_threshold(thresholds)
    in_vocab = F.col("value").isNotNull() & (F.col("count") >= threshold)
    rows = (window_counts_df.where(F.col("field").isin(list(thresholds))).groupBy("field")
            .agg(F.sum("count").alias("total"), F.sum(F.when(in_vocab, F.col("count")).otherwise(0)).alias("kept"))
            .collect())
    totals = {r["field"]: int(r["total"]) for r in rows}
    return _field_rates({r["field"]: int(r["total"]) - int(r["kept"]) for r in rows},
                        {n: totals.get(n, 0) for n in thresholds})


def _field_rates(numerators: dict[str, int], denominators: dict[str, int]) -> dict[str, float]:
    return {k: (numerators.get(k, 0) / denominators[k]) if denominators.get(k) else 0.0 for k in denominators}


def _split_summary(stats: dict[str, Any] | None) -> dict[str, Any]:
    """Rows, label rate, groups, cold and OOV rates of one split (examples.split_stats)."""
    if stats is None:
        return {"rows": 0, "label_rate": None, "groups": 0, "mean_impressions_per_group": None,
                "cold_rate": None, "oov_rate": {}}
    rows = stats["rows"]
    denominators = {n: rows for n in SINGLE_FIELDS} | {n: stats[f"len_{n}"] for n in MULTI_FIELDS}
    return {"rows": rows, "label_rate": stats["clicks"] / rows, "groups": stats["groups"],
            "mean_impressions_per_group": rows / stats["groups"], "cold_rate": stats["cold_rows"] / rows,
            "oov_rate": _field_rates({n: stats[f"oov_{n}"] for n in (*SINGLE_FIELDS, *MULTI_FIELDS)}, denominators)}


# --------------------------------------------------------------------------- the job


def run(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date,
        bronze_versions: dict[str, int] | None = None) -> dict[str, Any]:
    """Build run date D's vocabularies, bins and encoded examples; return the run's metadata.

    `bronze_versions` ({"impressions": v, "ads": v}) pins the bronze Delta versions read (a
    reproduction of an earlier run); by default the latest versions are read and recorded.
    """
    from pyspark.sql import functions as F

    started = time.monotonic()
    fc = cfg.features
    paths = Paths.of(cfg)
    thresholds = min_count_thresholds(fc)
    versions = resolve_bronze_versions(spark, paths, bronze_versions)
    imp_df = _read_delta(spark, paths.bronze_impressions, versions["impressions"])
    ads_df = _read_delta(spark, paths.bronze_ads, versions["ads"])
    window = window_dates(run_date, fc.window_days)
    log.info("features %s: window %s..%s (%d days), bronze versions %s, %s counts", run_date, window[0],
             window[-1], len(window), versions, "incremental" if fc.incremental else "full rebuild of")

    rows_per_day = _present_days(imp_df, window[0], run_date)
    if run_date not in rows_per_day:
        raise FeaturesError(f"holdout day {run_date} has no rows in {paths.bronze_impressions}; ingest it first")
    excluded = failed_days(spark, paths, run_date, window, fc.failed_days)
    missing = [d for d in window if d not in rows_per_day and d not in excluded]
    read_days = [d for d in window if d in rows_per_day and d not in excluded]
    if excluded and not read_days:
        raise FailedDaysError(f"every window day of {run_date} with bronze rows failed its quality check "
                              f"({', '.join(d.isoformat() for d in excluded)}); nothing to train on")
    if missing:
        listed = ", ".join(d.isoformat() for d in missing)
        if not fc.allow_short_window:
            raise FeaturesError(f"{len(missing)} of {len(window)} window days have no bronze impressions: {listed}; "
                                "ingest them, or set features.allow_short_window=true to train on the rest")
        if not read_days:
            raise FeaturesError(f"no window day in {window[0]}..{window[-1]} has bronze impressions; "
                                "nothing to train on")
        log.warning("features %s: short window, %d missing day(s): %s", run_date, len(missing), listed)

    joined_df = imp_df.where(F.col("dt").isin([*read_days, run_date])).transform(with_catalog(ads_df))
    fingerprints = source_fingerprints(imp_df, ads_df, [*read_days, run_date])
    written = update_day_rows(spark, paths, joined_df, [*read_days, run_date], fingerprints, fc.incremental)
    counted = update_daily_counts(spark, paths, read_days, fingerprints, fc.incremental)
    log.info("features %s: wrote the rows of %d day(s) and counted %d from bronze; reused %d day(s) of counts",
             run_date, len(written), len(counted), len(read_days) - len(counted))

    window_counts_df = (spark.read.format("delta").load(paths.table(DAILY_COUNTS_TABLE))
                        .where(F.col("dt").isin(read_days)).transform(agg_window_counts).cache())
    day = f"run_date = DATE'{run_date.isoformat()}'"
    tag = F.lit(run_date).alias("run_date")
    _replace(window_counts_df.transform(agg_vocabulary(thresholds)).select(tag, "*"),
             paths.table(VOCAB_TABLE), ["run_date"], day)
    _replace(window_counts_df.transform(agg_bin_edges(fc.n_bins)).select(tag, "*"),
             paths.table(BINS_TABLE), ["run_date"], day)
    _replace(window_counts_df.where((F.col("field") == "ad_id") & F.col("value").isNotNull())
             .select(tag, F.col("value").alias("ad_id"), F.col("count").alias("impressions")),
             paths.table(AD_COUNTS_TABLE), ["run_date"], day)
    window_oov = window_oov_rates(window_counts_df, thresholds)
    window_counts_df.unpersist()
    encoder = read_encoder(spark, paths, run_date)
    log.info("features %s: vocabularies and bins stored; encoding examples", run_date)

    from spark_jobs import examples as assembly

    files = day_row_files(spark, paths, [*read_days, run_date])
    split_files = {"train": [f for f in files if f[0] != run_date], "holdout": [f for f in files if f[0] == run_date]}
    examples_uri = examples_location(paths.table(EXAMPLES_TABLE), run_date)
    assembled = assembly.assemble(spark, encoder, split_files, examples_uri, run_date, fc.group_size, fc.seed)
    stats = assembled["stats"]

    spec = FeatureSpec(single={n: encoder.vocab_size(n) for n in SINGLE_FIELDS},
                       multi={n: encoder.vocab_size(n) for n in MULTI_FIELDS})
    vocab_sizes = {n: encoder.vocab_size(n) for n in (*SINGLE_FIELDS, *MULTI_FIELDS)}
    in_vocab = {n: int(encoder.vocab[n][0].size) for n in VOCAB_FIELDS}
    split_meta = {split: _split_summary(stats.get(split)) for split in SPLITS}
    if split_meta["train"]["rows"] == 0:
        raise FeaturesError(f"the window of {run_date} produced no training rows")

    metadata: dict[str, Any] = {
        "run_date": run_date.isoformat(),
        "window_start": window[0].isoformat(), "window_end": window[-1].isoformat(),
        "window_days": [d.isoformat() for d in read_days], "missing_days": [d.isoformat() for d in missing],
        "excluded_days": [{"date": d.isoformat(), "reason": reason} for d, reason in excluded.items()],
        "short_window": bool(missing or excluded), "bronze_versions": versions,
        "incremental": fc.incremental, "counted_days": [d.isoformat() for d in counted],
        "row_days_written": [d.isoformat() for d in written],
        "bronze_rows": {d.isoformat(): n for d, n in sorted(rows_per_day.items())},
        "rows": {k: v["rows"] for k, v in split_meta.items()},
        "label_rate": {k: v["label_rate"] for k, v in split_meta.items()},
        "groups": {k: v["groups"] for k, v in split_meta.items()},
        "mean_impressions_per_group": {k: v["mean_impressions_per_group"] for k, v in split_meta.items()},
        "cold_rate": {k: v["cold_rate"] for k, v in split_meta.items()},
        "vocab_sizes": vocab_sizes, "vocab_entries": in_vocab,
        "oov_rate_window": window_oov, "oov_rate": {k: v["oov_rate"] for k, v in split_meta.items()},
        "bin_edges": {n: encoder.bin_edges[n].tolist() for n in NUMERIC_FIELDS},
        "min_count": thresholds, "feature_spec": json.loads(spec.to_json()),
        "config_hash": cfg.config_hash(),
        "examples_seconds": assembled["seconds"],
        "tables": {"examples": examples_uri, "day_rows": paths.table(DAY_ROWS_TABLE),
                   "vocab": paths.table(VOCAB_TABLE), "bins": paths.table(BINS_TABLE),
                   "ad_window_counts": paths.table(AD_COUNTS_TABLE),
                   "daily_counts": paths.table(DAILY_COUNTS_TABLE), "runs": paths.table(RUNS_TABLE)},
    }
    runs_df = spark.createDataFrame(
        [(run_date, window[0], window[-1], read_days, metadata["short_window"], versions, spec.to_json(),
          json.dumps(metadata, sort_keys=True), cfg.to_json())],
        "run_date date, window_start date, window_end date, window_days array<date>, short_window boolean, "
        "bronze_versions map<string,bigint>, feature_spec string, metadata string, config string")
    _replace(runs_df, paths.table(RUNS_TABLE), ["run_date"], day)
    write_json_local(f"{paths.run_dir(run_date)}/features.json", metadata)  # for the run report, no Spark
    log.info("features %s: done in %.1f s; train %d rows (label rate %.4f, %.2f per group), holdout %d rows",
             run_date, time.monotonic() - started, metadata["rows"]["train"], metadata["label_rate"]["train"],
             metadata["mean_impressions_per_group"]["train"], metadata["rows"]["holdout"])
    return metadata


# --------------------------------------------------------------------------- readers


def _run_row(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date):
    uri = Paths.of(cfg).table(RUNS_TABLE)
    rows = (spark.read.format("delta").load(uri).where(f"run_date = DATE'{run_date.isoformat()}'").collect()
            if _delta_exists(spark, uri) else [])
    if not rows:
        raise FeaturesError(f"no features run stored for {run_date} in {uri}; run the features job for it first")
    return rows[0]


def load_feature_spec(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> FeatureSpec:
    """The FeatureSpec (vocabulary sizes) of a run date's encoded examples."""
    return FeatureSpec.from_json(_run_row(cfg, spark, run_date)["feature_spec"])


def load_run_metadata(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> dict[str, Any]:
    """The metadata dict a run date's features run returned (bronze versions, rates, sizes)."""
    return json.loads(_run_row(cfg, spark, run_date)["metadata"])


def load_encoder(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> FeatureEncoder:
    """The run date's FeatureEncoder, for encoding raw rows outside Spark (serving, inference)."""
    return read_encoder(spark, Paths.of(cfg), run_date)


def examples_uri(cfg: PipelineConfig, run_date: dt.date) -> str:
    """The Delta table of a run date's encoded examples (partitioned by split)."""
    return examples_location(Paths.of(cfg).table(EXAMPLES_TABLE), run_date)


def read_examples(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> "DataFrame":
    """A run date's encoded examples (both splits) as a Spark DataFrame of EXAMPLE_COLUMNS."""
    _run_row(cfg, spark, run_date)  # a clear error when the date was never built
    return spark.read.format("delta").load(examples_uri(cfg, run_date)).select(*EXAMPLE_COLUMNS)


def load_examples(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date, split: str) -> "pd.DataFrame":
    """A split's encoded examples of a run date as pandas (EXAMPLE_COLUMNS), in training order (row_idx)."""
    if split not in SPLITS:
        raise FeaturesError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    _run_row(cfg, spark, run_date)  # a clear error when the date was never built
    df = read_example_files(examples_uri(cfg, run_date), split).to_pandas()
    df.insert(1, "split", split)
    return df[list(EXAMPLE_COLUMNS)]


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    from core.cli import UsageError, config_from_args, parse_date, setup_logging, stage_parser
    from core.spark import get_spark

    setup_logging()
    ap = stage_parser("Build the training window, vocabularies, bins and encoded examples of one run date.")
    ap.add_argument("--bronze-versions", help='JSON {"impressions": v, "ads": v}: re-read these bronze versions')
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    pinned = None
    if args.bronze_versions:
        try:
            pinned = {str(k): int(v) for k, v in json.loads(args.bronze_versions).items()}
        except (ValueError, AttributeError, TypeError):
            raise UsageError(f"bad --bronze-versions {args.bronze_versions!r}; "
                             'expected JSON like {"impressions": 3, "ads": 3}') from None
    ap_date = parse_date(args.date)
    spark = get_spark(cfg.spark)
    # The stage's outputs are checked before anything trains on them, then exported as the
    # plain-parquet snapshot the trainer reads (models/train_job.py).
    from spark_jobs.check_quality import check_examples
    from spark_jobs.export_snapshot import export_training_snapshot

    try:
        metadata = run(cfg, spark, ap_date, pinned)
        check_examples(cfg, spark, ap_date)
    except BadDataError as err:
        log.error("%s", err)
        return BAD_DATA
    export_training_snapshot(cfg, spark, ap_date)
    print(json.dumps({k: metadata[k] for k in ("run_date", "window_days", "missing_days", "excluded_days",
                                               "counted_days", "bronze_versions", "rows", "label_rate")}))
    return 0


if __name__ == "__main__":
    from core.cli import run_cli

    sys.exit(run_cli(main))
