"""The build_window stage: bronze window [D-W, D-1] + holdout day D -> encoded examples for the CTR models.

    python spark_jobs/build_window.py --date 2026-02-02 [--config FILE | --config-json JSON] [--set k=v]
                                  [--bronze-versions '{"impressions": 12, "ads": 12}']

Every impression is joined to the ad catalog of its own day (bronze ads, dt = impression dt).
Per run date D this job writes (Delta tables under the warehouse, all replaced per date; their
names and readers are in features/tables.py):

  features/id_registry   field, value, id, first_dt: every vocabulary value's permanent id, given
                         the first time a stored day contains it (spark_jobs/id_registry.py)
  features/day_rows      one bronze day's impressions joined to that day's catalog, encoded to
                         stable ids in Spark (numeric fields and ad_id kept raw), with ad_pos (the
                         row's position among its ad's rows of the day, by event_ts and
                         impression_id) and source_fingerprint (partitioned by dt); written once
                         per day and rewritten only when the day's bronze files change
                         (spark_jobs/day_store.py)
  features/daily_counts  dt, field, value, num_value, count, source_fingerprint (partitioned by dt)
                         value counts of one day's rows (vocabulary fields by stable id), counted
                         once like the day rows
  features/vocab         run_date, field, value, id, count, stable_id: the window's *active* values
                         (seen >= min_count times), ids 1.. by descending count (0 = OOV): the
                         rows of the run's embedding tables; stable_id names the same value
  features/bins          run_date, field, edges: exact quantile edges of the window's values
  features/ad_window_counts  run_date, ad_id, impressions: every ad's impressions in the window
                         (is_cold = impressions < COLD_MAX_IMPRESSIONS, also for serving)
  features/examples/<D>  the run date's encoded examples of features/spec.py, one Delta table per
                         run date (partitioned by split), laid out in ad groups and encoded from
                         the day rows on the executors (spark_jobs/example_assembly.py)
  features/runs          run_date, the feature spec, bronze versions read, window and metadata

A daily run therefore does Spark work for its new day only (join, register its new values,
encode it to stable ids, count, write its rows) and sums stored counts; the window's stored rows
are grouped, mapped from stable ids to the run's ids (an inactive id to 0) and written by one
Spark job. The full rebuild (features.incremental=false) recounts and
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

The stage only builds: the DAG's next tasks check the examples (check_examples_quality,
spark_jobs/check_examples.py) and export the trainer's snapshot (export_training_snapshot,
spark_jobs/export_snapshot.py).

Reproducible: the run records the Delta versions of the bronze tables it read; passing them back
as `bronze_versions` re-reads those versions (time travel) and reproduces the outputs exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import storage
from core.cli import UsageError, run_cli, run_stage
from core.config import FeaturesConfig, PipelineConfig
from core.delta import latest_version, read_delta, replace_where
from core.exit_codes import BadDataError
from core.paths import Paths
from core.spark import get_spark
from features.encoder import VOCAB_FIELDS
from features.examples import SPLITS, examples_location
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS, FeatureSpec
from features.tables import (AD_COUNTS_TABLE, BINS_TABLE, DAILY_COUNTS_TABLE, DAY_ROWS_TABLE, EXAMPLES_TABLE,
                             RUNS_TABLE, VOCAB_TABLE, FeaturesError, read_encoder)
from spark_jobs import example_assembly
from spark_jobs.day_status import latest_verdicts
from spark_jobs.day_store import source_fingerprints, update_daily_counts, update_day_rows
from spark_jobs.id_registry import read_registry
from spark_jobs.feature_transforms import (agg_bin_edges, agg_vocabulary, agg_window_counts, field_rates,
                                           window_oov_rates, with_catalog)

log = logging.getLogger("features")


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


def failed_days(spark: SparkSession, paths: Paths, run_date: dt.date, window: list[dt.date],
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


# --------------------------------------------------------------------------- I/O helpers


def resolve_bronze_versions(spark: SparkSession, paths: Paths,
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
        latest = latest_version(spark, uri)  # one history query: None when there is no table
        if latest is None:
            if name == "images":
                continue
            raise FeaturesError(f"bronze table {name!r} not found at {uri}; run ingest for the window first")
        version = int(pinned.get(name, latest))
        if not 0 <= version <= latest:
            raise FeaturesError(f"bronze_versions[{name!r}] = {version} is outside [0, {latest}] of {uri}")
        versions[name] = version
    return versions


def _present_days(imp_df: DataFrame, first: dt.date, last: dt.date) -> dict[dt.date, int]:
    """Impression rows per bronze day in [first, last] (one small job over the dt column)."""
    rows = (imp_df.where(F.col("dt").between(F.lit(first), F.lit(last)))
            .groupBy("dt").count().collect())
    return {r["dt"]: int(r["count"]) for r in rows if r["count"] > 0}


def _split_summary(stats: dict[str, Any] | None) -> dict[str, Any]:
    """Rows, label rate, groups, cold and OOV rates of one split (example_assembly._split_stats_of)."""
    if stats is None:
        return {"rows": 0, "label_rate": None, "groups": 0, "mean_impressions_per_group": None,
                "cold_rate": None, "oov_rate": {}}
    rows = stats["rows"]
    denominators = {n: rows for n in SINGLE_FIELDS} | {n: stats[f"len_{n}"] for n in MULTI_FIELDS}
    return {"rows": rows, "label_rate": stats["clicks"] / rows, "groups": stats["groups"],
            "mean_impressions_per_group": rows / stats["groups"], "cold_rate": stats["cold_rows"] / rows,
            "oov_rate": field_rates({n: stats[f"oov_{n}"] for n in (*SINGLE_FIELDS, *MULTI_FIELDS)}, denominators)}


# --------------------------------------------------------------------------- the job


def run(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date,
        bronze_versions: dict[str, int] | None = None) -> dict[str, Any]:
    """Build run date D's vocabularies, bins and encoded examples; return the run's metadata.

    `bronze_versions` ({"impressions": v, "ads": v}) pins the bronze Delta versions read (a
    reproduction of an earlier run); by default the latest versions are read and recorded.
    """
    started = time.monotonic()
    fc = cfg.features
    paths = Paths.of(cfg)
    thresholds = min_count_thresholds(fc)
    versions = resolve_bronze_versions(spark, paths, bronze_versions)
    imp_df = read_delta(spark, paths.bronze_impressions, versions["impressions"])
    ads_df = read_delta(spark, paths.bronze_ads, versions["ads"])
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
    # The stored counts name vocabulary values by stable id; the registry gives their raw values.
    named_df = (window_counts_df.where(F.col("field").isin(list(VOCAB_FIELDS)) & F.col("value").isNotNull())
                .withColumnRenamed("value", "stable_id")
                .join(read_registry(spark, paths).select("field", F.col("id").alias("stable_id"), "value"),
                      ["field", "stable_id"]))
    day = f"run_date = DATE'{run_date.isoformat()}'"
    tag = F.lit(run_date).alias("run_date")
    replace_where(named_df.transform(agg_vocabulary(thresholds, extra=("stable_id",))).select(tag, "*"),
                  paths.table(VOCAB_TABLE), ["run_date"], day, merge_schema=True)
    replace_where(window_counts_df.transform(agg_bin_edges(fc.n_bins)).select(tag, "*"),
                  paths.table(BINS_TABLE), ["run_date"], day)
    replace_where(named_df.where(F.col("field") == "ad_id")
                  .select(tag, F.col("value").alias("ad_id"), F.col("count").alias("impressions")),
                  paths.table(AD_COUNTS_TABLE), ["run_date"], day)
    window_oov = window_oov_rates(window_counts_df, thresholds)
    window_counts_df.unpersist()
    encoder = read_encoder(spark, paths, run_date)
    log.info("features %s: vocabularies and bins stored; encoding examples", run_date)

    day_rows_df = (spark.read.format("delta").load(paths.table(DAY_ROWS_TABLE))
                   .where(F.col("dt").isin([*read_days, run_date])))
    examples_uri = examples_location(paths.table(EXAMPLES_TABLE), run_date)
    assembled = example_assembly.assemble(day_rows_df, encoder, examples_uri, run_date, fc.group_size, fc.seed,
                                          rows_estimate=sum(rows_per_day.get(d, 0) for d in [*read_days, run_date]))
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
    replace_where(runs_df, paths.table(RUNS_TABLE), ["run_date"], day)
    storage.write_json(paths.features_record(run_date), metadata)  # for the run report, no Spark
    log.info("features %s: done in %.1f s; train %d rows (label rate %.4f, %.2f per group), holdout %d rows",
             run_date, time.monotonic() - started, metadata["rows"]["train"], metadata["label_rate"]["train"],
             metadata["mean_impressions_per_group"]["train"], metadata["rows"]["holdout"])
    return metadata


# --------------------------------------------------------------------------- command line


def _pinned_versions(raw: str | None) -> dict[str, int] | None:
    if not raw:
        return None
    try:
        return {str(k): int(v) for k, v in json.loads(raw).items()}
    except (ValueError, AttributeError, TypeError):
        raise UsageError(f"bad --bronze-versions {raw!r}; expected JSON like {{\"impressions\": 3, \"ads\": 3}}") from None


def main(argv: list[str] | None = None) -> int:
    def job(cfg: PipelineConfig, run_date: dt.date, args) -> dict[str, Any]:
        metadata = run(cfg, get_spark(cfg.spark), run_date, _pinned_versions(args.bronze_versions))
        return {k: metadata[k] for k in ("run_date", "window_days", "missing_days", "excluded_days",
                                         "counted_days", "bronze_versions", "rows", "label_rate")}

    return run_stage("Build the training window, vocabularies, bins and encoded examples of one run date.", job,
                     argv, add_arguments=lambda ap: ap.add_argument(
                         "--bronze-versions", help='JSON {"impressions": v, "ads": v}: re-read these bronze versions'),
                     log_name="features", task="build_window")


if __name__ == "__main__":
    sys.exit(run_cli(main))
