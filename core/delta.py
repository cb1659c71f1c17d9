"""Delta Lake helpers shared by the Spark stages and the Spark-side readers of features/tables.py.

Everything goes through DataFrames and Delta's SQL, so the same code runs on a Spark of the
stage's own process and on a Spark Connect server (core/spark.py), where Delta's Python
`DeltaTable` API is not available. Imported only by processes that run Spark (it imports pyspark).
"""

from __future__ import annotations

import datetime as dt
import uuid

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from core.paths import is_local
from core.timing import timed

# The error conditions of a path that holds no Delta table (a plain folder, or nothing).
NOT_A_TABLE = ("DELTA_MISSING_DELTA_TABLE", "DELTA_TABLE_ONLY_OPERATION")


def table_ref(uri: str) -> str:
    """`uri` as a path-based Delta table name for SQL: delta.`uri` (backticks in it doubled)."""
    return "delta.`" + uri.replace("`", "``") + "`"


def sql_string(value: str) -> str:
    """`value` as a SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def latest_version(spark: SparkSession, uri: str) -> int | None:
    """The latest committed version of the Delta table at `uri`; None when there is no table.

    On local and S3 storage this process reads it from the names in the table's _delta_log folder
    (the highest commit or checkpoint: Delta writes a commit whole, under its version's name), not
    with a Spark job: a listing takes milliseconds, DESCRIBE HISTORY 0.1-0.3 s on a warm server
    and seconds on a cold one, and the stages ask often (tests/test_delta_log.py checks the two
    agree). Other schemes go through DESCRIBE HISTORY.
    """
    if is_local(uri) or uri.split("://", 1)[0] in ("s3", "s3a"):
        from core import delta_log  # pyarrow: not at import (a stage answers a bad argument without it)

        return delta_log.latest_version(uri)
    try:
        rows = spark.sql(f"DESCRIBE HISTORY {table_ref(uri)} LIMIT 1").select("version").collect()
    except AnalysisException as e:
        if e.getCondition() in NOT_A_TABLE:
            return None
        raise
    return int(rows[0][0])


def delta_exists(spark: SparkSession, uri: str) -> bool:
    """Whether a Delta table exists at `uri`."""
    return latest_version(spark, uri) is not None


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
def replace_where(df: DataFrame, uri: str, partition_by: list[str], where: str, merge_schema: bool = False) -> None:
    """Overwrite exactly the rows matching `where` in one commit (creating the table on first write).

    `merge_schema` lets the write add columns to an existing table (a table whose layout grew).
    """
    writer = (df.write.format("delta").mode("overwrite").partitionBy(*partition_by)
              .option("replaceWhere", where))
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    writer.save(uri)


@timed("writes")
def update_where(spark: SparkSession, uri: str, assignments: dict[str, str], where: str) -> None:
    """`UPDATE` the Delta table at `uri`: set each column to its SQL expression where `where` holds (one commit)."""
    sets = ", ".join(f"`{column}` = {expr}" for column, expr in assignments.items())
    spark.sql(f"UPDATE {table_ref(uri)} SET {sets} WHERE {where}").collect()


@timed("writes")
def delete_where(spark: SparkSession, uri: str, where: str) -> None:
    """`DELETE` the rows of the Delta table at `uri` where `where` holds (one commit)."""
    spark.sql(f"DELETE FROM {table_ref(uri)} WHERE {where}").collect()


@timed("writes")
def merge_into(spark: SparkSession, uri: str, source: DataFrame, statement: str) -> None:
    """Run `MERGE INTO <the table at uri> t USING <source> s <statement>` (one commit).

    `statement` is the rest of the MERGE: `ON ... WHEN MATCHED ... WHEN NOT MATCHED ...`, with
    the table as `t` and `source` as `s`. The source is a temporary view of this session only.
    """
    view = f"cscnn_merge_source_{uuid.uuid4().hex}"
    source.createOrReplaceTempView(view)
    try:
        spark.sql(f"MERGE INTO {table_ref(uri)} t USING {view} s {statement}").collect()
    finally:
        spark.catalog.dropTempView(view)


def dates_sql(days: list[dt.date]) -> str:
    """`days` as a SQL list of DATE literals, for `dt IN (...)` predicates."""
    return ", ".join(f"DATE'{d.isoformat()}'" for d in days)
