"""Delta Lake helpers shared by the Spark stages and the Spark-side readers of features/tables.py.

Imported only by processes that run Spark (it imports pyspark and delta at the top).
"""

from __future__ import annotations

import datetime as dt

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from core.timing import timed


def delta_exists(spark: SparkSession, uri: str) -> bool:
    """Whether a Delta table exists at `uri`."""
    return DeltaTable.isDeltaTable(spark, uri)


def latest_version(spark: SparkSession, uri: str) -> int | None:
    """The latest committed version of the Delta table at `uri`; None when there is no table."""
    if not delta_exists(spark, uri):
        return None
    return int(DeltaTable.forPath(spark, uri).history(1).select("version").collect()[0][0])


def read_delta(spark: SparkSession, uri: str, version: int | None = None) -> DataFrame:
    """The Delta table at `uri`, at `version` when given (time travel), else its latest version."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(uri)


def read_required(spark: SparkSession, uri: str, what: str, fix: str) -> DataFrame:
    """The Delta table at `uri`; FileNotFoundError naming `what` and how to `fix` it when absent."""
    if not delta_exists(spark, uri):
        raise FileNotFoundError(f"{what} Delta table not found at {uri}; {fix}")
    return spark.read.format("delta").load(uri)


@timed("writes")
def replace_where(df: DataFrame, uri: str, partition_by: list[str], where: str) -> None:
    """Overwrite exactly the rows matching `where` in one commit (creating the table on first write)."""
    (df.write.format("delta").mode("overwrite").partitionBy(*partition_by)
     .option("replaceWhere", where).save(uri))


def dates_sql(days: list[dt.date]) -> str:
    """`days` as a SQL list of DATE literals, for `dt IN (...)` predicates."""
    return ", ".join(f"DATE'{d.isoformat()}'" for d in days)
