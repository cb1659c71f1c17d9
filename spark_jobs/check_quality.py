"""Check bronze quality for day D (the DAG's `check_bronze_quality` stage), with GX Data Docs.

    python spark_jobs/check_quality.py --date 2026-02-02 [--config FILE] [--set k=v]

Validates, each through a GX checkpoint that updates Data Docs (<reports>/data_docs):
  bronze_impressions          the day's bronze impressions (dt = D), volume vs the trailing
                              `quality.trailing_days` days' mean row count, CTR bounds, ...
  bronze_ads                  the day's bronze ad catalog (dt = D)
  landing_impressions_schema  the raw landing impressions file's columns vs the contract
  bronze_quarantine           the day's quarantined share of landing impressions and of landing
                              ads vs `quality.max_quarantine_rate` (from ingest's run record)
Writes a summary to <reports>/quality/<D>.json (suite -> success, failed, failed_critical,
report_path; `quarantine`: per table landing/quarantined rows, rate and count per reason),
records the day's verdict in ops/day_status (spark_jobs/day_status.py: build_window leaves out
days whose latest verdict failed), then raises DataQualityError if any critical expectation
failed, naming each one and its Data Docs page; the command then exits with
core.exit_codes.BAD_DATA, which the DAG does not retry. Re-running a date replaces the summary,
adds a new Data Docs run and a new verdict (the latest wins).

Great Expectations (expectations.bronze and expectations.runner, ~6 s of imports) and pandas are
imported by `run`, so that a bad argument is reported without loading it (tests/test_cli_errors.py); the DAG's
stage runner has it loaded already.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import storage
from core.cli import run_cli, run_stage
from core.config import PipelineConfig
from core.delta import read_required
from core.paths import Paths
from core.records import QUARANTINE_TABLES
from core.spark import get_spark
from core.timing import phase
from spark_jobs.day_status import record_verdict

if TYPE_CHECKING:
    from expectations.runner import QualityResult

log = logging.getLogger("check_quality")


# --------------------------------------------------------------------------- pure transforms


def filter_day(df: DataFrame, day: dt.date) -> DataFrame:
    """Rows of partition dt = day."""
    return df.where(F.col("dt") == F.lit(day))


def agg_daily_rows(df: DataFrame, first: dt.date, last: dt.date) -> DataFrame:
    """Row count per dt for dt in [first, last] (days without rows are absent): dt, rows."""
    return (df.where(F.col("dt").between(F.lit(first), F.lit(last)))
            .groupBy("dt").agg(F.count(F.lit(1)).alias("rows")))


def trailing_volume(df: DataFrame, day: dt.date, trailing_days: int) -> dict[str, Any] | None:
    """{'mean_rows', 'days'} over the days in [day - trailing_days, day - 1] that have rows; None if none.

    Days absent from the table (not ingested, or ingested empty) do not pull the mean down: the
    volume check compares the day with the days that did arrive.
    """
    row = (agg_daily_rows(df, day - dt.timedelta(days=trailing_days), day - dt.timedelta(days=1))
           .agg(F.avg("rows").alias("mean_rows"), F.count(F.lit(1)).alias("days")).collect()[0])
    if not row["days"]:
        return None
    return {"mean_rows": float(row["mean_rows"]), "days": int(row["days"])}


# --------------------------------------------------------------------------- the job


def _read_delta(spark: SparkSession, uri: str, what: str) -> DataFrame:
    return read_required(spark, uri, what, "run ingest for this date first")


def _landing_schema_df(spark: SparkSession, uri: str) -> DataFrame | None:
    """The landing impressions file with no rows (only its schema matters), or None if it is gone."""
    try:
        return spark.read.parquet(uri).limit(0)
    except AnalysisException as e:  # PATH_NOT_FOUND: the drop was cleaned up or never landed
        log.warning("landing impressions file %s unreadable, schema check skipped: %s", uri, e)
        return None


def read_ingest_record(spark: SparkSession, paths: Paths, day: dt.date) -> dict[str, Any]:
    """Ingest's run record of `day` (ops/ingest_runs): landing, bronze and quarantined counts, reasons."""
    rows = (_read_delta(spark, paths.ingest_runs, "ingest runs").where(F.col("dt") == F.lit(day))
            .select("record").collect())
    if not rows:
        raise FileNotFoundError(f"no ingest record for {day} in {paths.ingest_runs}; run ingest for this date first")
    return json.loads(rows[0]["record"])


def quarantine_breakdown(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per table of QUARANTINE_TABLES: landing and quarantined rows, the rate, and the count per reason."""
    out = {}
    for table in QUARANTINE_TABLES:
        landing, quarantined = int(record[f"landing_{table}"]), int(record[f"quarantined_{table}"])
        out[table] = {"landing": landing, "quarantined": quarantined,
                      "rate": quarantined / landing if landing else 0.0,
                      "reasons": dict(sorted(record["reasons"][table].items()))}
    return out


def verdict_reason(results: list[QualityResult]) -> str:
    """One line for the day-status table: the failed critical expectations, or 'passed'."""
    failures = [f"{r.suite_name}: {f}" for r in results for f in r.failed_critical]
    return "; ".join(failures) if failures else "passed"


def write_summary(cfg: PipelineConfig, day: dt.date, summary: dict[str, Any], suffix: str = "") -> str:
    """Write the day's summary JSON whole to <reports>/quality/<D><suffix>.json; return its URI."""
    uri = Paths.of(cfg).quality_summary(day, suffix)
    storage.write_json(uri, summary)
    return uri


def run(cfg: PipelineConfig, spark: SparkSession, day: dt.date) -> dict[str, Any]:
    """Validate day D's bronze impressions, bronze ads and landing schema; write the summary JSON.

    Returns the summary ({'date', 'success', 'summary_path', 'suites': {suite: {...}}}); raises
    DataQualityError after writing it when a critical expectation failed (an empty day does).
    """
    with phase("imports"):
        from expectations.bronze import (build_ads_suite, build_impressions_suite, build_landing_schema_suite,
                                         build_quarantine_suite, quarantine_rate_column)
        from expectations.runner import raise_on_critical, validate
        import pandas as pd  # loaded by Great Expectations already
    paths = Paths.of(cfg)
    run_name = day.isoformat()
    imp_df = _read_delta(spark, paths.bronze_impressions, "bronze impressions")
    ads_df = _read_delta(spark, paths.bronze_ads, "bronze ads")
    trailing = trailing_volume(imp_df, day, cfg.quality.trailing_days)
    log.info("%s: trailing volume %s", day, trailing)

    results: list[QualityResult] = [
        validate(cfg, filter_day(imp_df, day), build_impressions_suite(cfg, trailing), "bronze_impressions",
                 run_name),
        validate(cfg, filter_day(ads_df, day), build_ads_suite(cfg), "bronze_ads", run_name),
    ]
    suites: dict[str, Any] = {r.suite_name: summary_entry(r) for r in results}
    landing_uri = paths.landing_impressions(day)
    landing_df = _landing_schema_df(spark, landing_uri)
    if landing_df is not None:
        landing = validate(cfg, landing_df, build_landing_schema_suite(cfg), "landing_impressions", run_name)
        results.append(landing)
        suites[landing.suite_name] = summary_entry(landing)
    else:
        suites["landing_impressions_schema"] = {"success": False, "failed": [f"file not readable: {landing_uri}"],
                                                "failed_critical": [], "report_path": None, "statistics": {}}
    quarantine = quarantine_breakdown(read_ingest_record(spark, paths, day))
    rates_df = pd.DataFrame({quarantine_rate_column(t): [quarantine[t]["rate"]] for t in QUARANTINE_TABLES})
    budget = validate(cfg, rates_df, build_quarantine_suite(cfg), "quarantine_rates", run_name)
    results.append(budget)
    suites[budget.suite_name] = summary_entry(budget)
    log.info("%s: quarantined impressions %.4f, ads %.4f of landing rows (at most %s allowed)", day,
             quarantine["impressions"]["rate"], quarantine["ads"]["rate"], cfg.quality.max_quarantine_rate)
    summary = {
        "date": run_name,
        "success": all(s["success"] for s in suites.values()),
        "critical_failures": sum(len(s["failed_critical"]) for s in suites.values()),
        "trailing": trailing,
        "quarantine": {"max_rate": cfg.quality.max_quarantine_rate, **quarantine},
        "suites": suites,
    }
    summary["summary_path"] = write_summary(cfg, day, summary)
    passed = not any(r.failed_critical for r in results)
    record_verdict(spark, paths, day, passed, verdict_reason(results), summary["summary_path"])
    raise_on_critical(*results)
    return summary


def summary_entry(r: QualityResult) -> dict[str, Any]:
    """A suite's line of a quality summary: success, failed and critical expectations, report, statistics."""
    return {"success": r.success, "failed": r.failed, "failed_critical": r.failed_critical,
            "report_path": r.report_path, "statistics": r.statistics}


def run_check_stage(check: Callable[[PipelineConfig, SparkSession, dt.date], dict[str, Any]], description: str,
                    argv: list[str] | None, task: str) -> int:
    """The command of a quality check stage: `check` on the run date, whose summary's date, verdict
    and path are the stage's result; `task` (the DAG's task id) names its timing record."""
    def job(cfg: PipelineConfig, day: dt.date, args) -> dict[str, Any]:
        summary = check(cfg, get_spark(cfg.spark), day)
        return {"date": summary["date"], "success": summary["success"], "summary_path": summary["summary_path"]}

    return run_stage(description, job, argv, log_name="check_quality", task=task)


def main(argv: list[str] | None = None) -> int:
    return run_check_stage(run, "Check one day's bronze data quality with Great Expectations.", argv,
                           task="check_bronze_quality")


if __name__ == "__main__":
    sys.exit(run_cli(main))
