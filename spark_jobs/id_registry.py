"""The id registry: one permanent id per (field, raw value), and the day rows encoded with it.

`features/id_registry` (Delta, columns field, value, id, first_dt) gives every categorical value
of every vocabulary field (features.encoder.VOCAB_FIELDS) an id the first time a day that
contains it is stored by build_window, and keeps it for good:

  * ids are 1, 2, ... per field, in the order values were first stored; within one store, by
    (first day, value). 0 and null are never ids (they stay OOV);
  * rows are only ever added (a MERGE that inserts values not yet present; the table is
    Serializable, so two runs registering at once cannot both commit: the later one retries);
  * a value that stops appearing keeps its id. Frequency control (features.min_count) decides,
    per run date, which ids are *active*; an inactive id maps to its field's OOV row. A model's
    embedding tables hold the active ids only (the run's rows, saved in encoder.npz with the
    stable id of each row), so tables do not grow with the registry; the registry itself grows
    by one small row per distinct value ever stored.

`encode_days` turns a joined day (impressions + that day's catalog) into the stored day rows:
each vocabulary field replaced by its stable id (`id_<field>`, arrays for multi-valued fields),
the raw ad_id kept for grouping and cold-ad lookups, numeric fields kept raw (their bins are the
run date's). It is done in Spark, once per stored day: fields whose values span few enough
integers through id arrays that the executors' Python indexes with numpy, batch by batch (the
arrays travel once with the task, never with each row), the others by broadcast joins or a
regroup (see encode_days).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Iterator

import numpy as np
import pyarrow as pa

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StructField, StructType

from core.delta import delta_exists, merge_into, table_ref
from core.paths import Paths
from features.encoder import CATEGORICAL_SINGLE_FIELDS, VOCAB_FIELDS, stable_column
from features.spec import MULTI_FIELDS
from features.tables import ID_REGISTRY_TABLE, FeaturesError
from spark_jobs.example_assembly import NULL_AD_KEY
from spark_jobs.feature_transforms import agg_daily_value_counts

log = logging.getLogger("features")

REGISTRY_DDL = "field string, value bigint, id bigint, first_dt date"
_KEY = ("dt", "_ad_key", "ad_pos")  # unique per day row (with_ad_positions numbers rows within dt and ad)
_CONFLICT_RETRIES = 8
# A field whose registered values span at most this many integers is encoded through an id array
# (8 bytes per integer of the span, sent once with each task's code) instead of a join (single
# fields) or a regroup (multi-valued fields).
LOOKUP_MAX_SPAN = 1 << 21


def _values_of_days(joined_df: DataFrame) -> DataFrame:
    """(field, value, first_dt): every non-null vocabulary value of the joined rows, with its first day."""
    return (agg_daily_value_counts(joined_df)
            .where(F.col("field").isin(list(VOCAB_FIELDS)) & F.col("value").isNotNull())
            .groupBy("field", "value").agg(F.min("dt").alias("first_dt")))


def _is_conflict(error: Exception) -> bool:
    """Whether `error` is Delta's answer to a concurrent commit (DELTA_CONCURRENT_*)."""
    text = f"{type(error).__name__} {error}"
    return "DELTA_CONCURRENT" in text or "ConcurrentAppendException" in text


def register(spark: SparkSession, paths: Paths, joined_df: DataFrame) -> dict[str, int]:
    """Give every vocabulary value of `joined_df` that has no id yet the next ids of its field.

    Returns {field: ids added} (fields without new values omitted). Idempotent: values already
    registered keep their ids, so re-storing a day adds nothing.
    """
    uri = paths.table(ID_REGISTRY_TABLE)
    seen_df = _values_of_days(joined_df)
    for attempt in range(1, _CONFLICT_RETRIES + 1):
        try:
            spark.sql(f"CREATE TABLE IF NOT EXISTS {table_ref(uri)} ({REGISTRY_DDL}) USING delta "
                      "TBLPROPERTIES ('delta.isolationLevel' = 'Serializable')").collect()
            registry_df = spark.read.format("delta").load(uri)
            top_df = registry_df.groupBy("field").agg(F.max("id").alias("_top"))
            order = Window.partitionBy("field").orderBy("first_dt", "value")
            new_df = (seen_df.join(registry_df.select("field", "value"), ["field", "value"], "left_anti")
                      .join(F.broadcast(top_df), "field", "left")
                      .select("field", "value",
                              (F.coalesce("_top", F.lit(0)) + F.row_number().over(order)).alias("id"), "first_dt")
                      .localCheckpoint())  # the ids are fixed before the MERGE reads the registry again
            added = {r["field"]: int(r["count"]) for r in new_df.groupBy("field").count().collect()}
            if added:
                merge_into(spark, uri, new_df, "ON t.field = s.field AND t.value = s.value "
                                               "WHEN NOT MATCHED THEN INSERT *")
            return dict(sorted(added.items()))
        except Exception as e:  # Delta's ConcurrentAppendException, as Connect or py4j delivers it
            if attempt == _CONFLICT_RETRIES or not _is_conflict(e):
                raise
            log.warning("id registry %s: another run registered values at the same time; retrying (%d of %d)",
                        uri, attempt, _CONFLICT_RETRIES - 1)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def read_registry(spark: SparkSession, paths: Paths) -> DataFrame:
    """The registry (field, value, id, first_dt); FeaturesError when no day was stored yet."""
    uri = paths.table(ID_REGISTRY_TABLE)
    if not delta_exists(spark, uri):
        raise FeaturesError(f"no id registry at {uri}; run build_window for a date first")
    return spark.read.format("delta").load(uri)


def _lookup_arrays(registry_df: DataFrame, names: tuple[str, ...], max_span: int) -> dict[str, tuple[int, np.ndarray]]:
    """{field: (smallest value, ids by value - smallest)} of the fields of `names` whose registered
    values span at most `max_span` integers (gaps hold 0, never an id)."""
    spans = (registry_df.where(F.col("field").isin(list(names))).groupBy("field")
             .agg(F.min("value").alias("lo"), F.max("value").alias("hi")).collect())
    small = {r["field"]: int(r["lo"]) for r in spans if int(r["hi"]) - int(r["lo"]) < max_span}
    if not small:
        return {}
    pairs = registry_df.where(F.col("field").isin(list(small))).select("field", "value", "id").toArrow().to_pandas()
    out = {}
    for name, part in pairs.groupby("field"):
        lo = small[str(name)]
        ids = np.zeros(int(part["value"].max()) - lo + 1, np.int64)
        ids[part["value"].to_numpy() - lo] = part["id"].to_numpy()
        out[str(name)] = (lo, ids)
    return out


def _look_up(values: pa.Array, lo: int, ids: np.ndarray, gap_is_null: bool) -> pa.Array:
    """ids[value - lo] of each int64 value; null for a null value, a value outside the array and,
    when `gap_is_null`, a value whose entry is 0 (a gap: no id)."""
    raw = values.fill_null(lo).to_numpy(zero_copy_only=False).astype(np.int64, copy=False) - lo
    inside = values.is_valid().to_numpy(zero_copy_only=False) & (raw >= 0) & (raw < len(ids))
    out = np.zeros(len(raw), np.int64)
    out[inside] = ids[raw[inside]]
    return pa.array(out, pa.int64(), mask=~inside | (out == 0) if gap_is_null else ~inside)


def _look_up_batches(lookups: dict[str, tuple[str, int, np.ndarray]], batches: Iterator[pa.RecordBatch]
                     ) -> Iterator[pa.RecordBatch]:
    """mapInArrow: append, per {output column: (input column, lo, ids)}, the ids of the input's
    values (bigint, or array<bigint> for a multi-valued field: a null list stays null, a null
    element stays null; a single value in a gap is null, as the join gives)."""
    for batch in batches:
        columns, names = list(batch.columns), list(batch.schema.names)
        for out_name, (in_name, lo, ids) in lookups.items():
            col = batch.column(in_name)
            if pa.types.is_list(col.type):
                offsets = col.offsets.to_numpy()
                values = col.values.slice(offsets[0], offsets[-1] - offsets[0])
                col = pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()),
                                               _look_up(values, lo, ids, gap_is_null=False), mask=col.is_null())
            else:
                col = _look_up(col, lo, ids, gap_is_null=True)
            columns.append(col)
            names.append(out_name)
        yield pa.RecordBatch.from_arrays(columns, names=names)


def encode_days(joined_df: DataFrame, registry_df: DataFrame, lookup_max_span: int = LOOKUP_MAX_SPAN) -> DataFrame:
    """Replace each vocabulary field of the joined rows (which carry dt, ad_pos) by its stable id.

    Single fields become `id_<field>` bigint (null stays null); multi-valued fields become
    `id_<field>` array<bigint> in the same order (a null array stays null, a null element stays
    null). A field whose registered values span at most `lookup_max_span` integers is looked up
    in an id array by numpy in the executors' Python, all such fields in one pass (no shuffle, no
    join per field; the arrays go with the task's code, not with each row, so the cost per row
    does not grow with a field's span). A wider single field takes a broadcast join; a wider
    multi-valued field is exploded, joined and regrouped per row (two shuffles).
    `registry_df` must hold every non-null value (`register` them first): a value without an id
    would be stored as null or 0, that is OOV.
    """
    arrays = _lookup_arrays(registry_df, VOCAB_FIELDS, lookup_max_span) if lookup_max_span > 0 else {}
    df = joined_df.withColumn("_ad_key", F.coalesce(F.col("ad_id").cast("bigint"), F.lit(NULL_AD_KEY)))
    if arrays:
        names = sorted(arrays)
        keyed = df.select("*", *[F.col(n).cast("array<bigint>" if n in MULTI_FIELDS else "bigint").alias(f"_k_{n}")
                                 for n in names])
        schema = StructType([*keyed.schema.fields, *[
            StructField(stable_column(n), ArrayType(LongType()) if n in MULTI_FIELDS else LongType()) for n in names]])
        lookups = {stable_column(n): (f"_k_{n}", *arrays[n]) for n in names}
        df = keyed.mapInArrow(functools.partial(_look_up_batches, lookups), schema).drop(*[f"_k_{n}" for n in names])
    for n in CATEGORICAL_SINGLE_FIELDS:
        if n not in arrays:
            ids = registry_df.where(F.col("field") == n).select(F.col("value").alias(f"_v_{n}"),
                                                                F.col("id").alias(stable_column(n)))
            df = df.join(F.broadcast(ids), F.col(n).cast("bigint") == F.col(f"_v_{n}"), "left").drop(f"_v_{n}")
    wide = [n for n in MULTI_FIELDS if n not in arrays]
    if not wide:
        return df.drop("_ad_key")
    # The wide multi-valued fields: explode (field, position, value) once, look up, regroup per row.
    def element(name: str):
        return lambda x, i: F.struct(F.lit(name).alias("field"), i.alias("pos"), x.cast("bigint").alias("value"))

    elements = F.concat(*[F.transform(F.coalesce(F.col(n).cast("array<bigint>"), F.array().cast("array<bigint>")),
                                      element(n)) for n in wide])
    multi_ids = registry_df.where(F.col("field").isin(wide)).select("field", "value", "id")
    exploded = (df.select(*_KEY, F.explode(elements).alias("e")).select(*_KEY, "e.field", "e.pos", "e.value")
                .join(F.broadcast(multi_ids), ["field", "value"], "left"))
    regrouped = exploded.groupBy(*_KEY).agg(*[
        F.array_sort(F.collect_list(F.when(F.col("field") == n, F.struct("pos", "id")))).alias(f"_l_{n}")
        for n in wide])
    df = df.join(regrouped, list(_KEY), "left")
    for n in wide:
        df = df.withColumn(stable_column(n), F.when(F.col(n).isNull(), F.lit(None)).otherwise(
            F.transform(F.coalesce(F.col(f"_l_{n}"), F.array().cast("array<struct<pos:int,id:bigint>>")),
                        lambda s: s["id"])))
    return df.drop("_ad_key", *[f"_l_{n}" for n in wide])


def timed_register(spark: SparkSession, paths: Paths, joined_df: DataFrame) -> dict[str, int]:
    """`register`, logging the ids added per field and the time it took."""
    started = time.monotonic()
    added = register(spark, paths, joined_df)
    log.info("id registry: %s new id(s) in %.1f s%s", sum(added.values()), time.monotonic() - started,
             f" ({', '.join(f'{k} {v}' for k, v in added.items())})" if added else "")
    return added
