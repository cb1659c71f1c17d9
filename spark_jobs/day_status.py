"""Day status: the quality verdict of every ingested day, in the ops Delta table ops/day_status.

`check_bronze_quality` appends one row per check of a day (dt, checked_at, passed, reason,
summary_path); the latest row of a day is its verdict. `build_window` leaves out the window days
whose verdict failed (features.failed_days). A day never checked (a history backfill ingested
without the check) has no verdict and counts as usable. Re-ingesting a corrected day and checking
it again appends a passing row, which makes the day usable again.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from core.delta import delta_exists
from core.paths import Paths
from core.timing import timed

DAY_STATUS_TABLE = "ops/day_status"
SCHEMA = "dt date, checked_at timestamp, passed boolean, reason string, summary_path string"


def day_status_uri(paths: Paths) -> str:
    return paths.table(DAY_STATUS_TABLE)


@timed("writes")
def record_verdict(spark: SparkSession, paths: Paths, day: dt.date, passed: bool, reason: str,
                   summary_path: str | None) -> None:
    """Append day `day`'s verdict (one Delta commit); the latest row of a day wins."""
    checked_at = dt.datetime.now(dt.timezone.utc)
    row_df = spark.createDataFrame([(day, checked_at, passed, reason, summary_path)], SCHEMA)
    row_df.write.format("delta").mode("append").partitionBy("dt").save(day_status_uri(paths))


def latest_verdicts(spark: SparkSession, paths: Paths, days: list[dt.date]) -> dict[dt.date, dict]:
    """{day: {'passed', 'reason', 'checked_at', 'summary_path'}} of the days in `days` that were checked."""
    uri = day_status_uri(paths)
    if not days or not delta_exists(spark, uri):
        return {}
    latest = Window.partitionBy("dt").orderBy(F.col("checked_at").desc())
    rows = (spark.read.format("delta").load(uri).where(F.col("dt").isin(days))
            .withColumn("_rank", F.row_number().over(latest)).where(F.col("_rank") == 1).collect())
    return {r["dt"]: {"passed": bool(r["passed"]), "reason": r["reason"], "checked_at": r["checked_at"],
                      "summary_path": r["summary_path"]} for r in rows}
