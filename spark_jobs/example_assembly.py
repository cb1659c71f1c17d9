"""A run date's encoded examples, assembled by Spark from the stored day rows.

The features job keeps every bronze day's joined rows once, in `features/day_rows` (partitioned
by dt, vocabulary fields as stable ids, rewritten only when that day's bronze files change). A
run date's examples are then a filter, a layout and an encoding of those rows, all Spark work
that runs on the executors (the driver holds no per-row data):

  1. read the day rows of the window days (split "train") and the holdout day ("holdout");
  2. lay each split out in ad groups (`with_layout`): the rows of an ad, in (day, ad_pos) order,
     are cut into consecutive groups of at most group_size; the groups are ordered by a seeded
     hash (`group_shuffle_keys`) and numbered 0.. (group_id); each row's row_idx is its group's
     offset plus its place in the group, so row_idx numbers a split's rows 0..n-1 in training
     order and every group is a contiguous row range;
  3. range-partition by (split, row_idx), so that each task holds one contiguous row range;
  4. encode the vocabulary fields from stable ids to the run's ids and bin the numeric fields
     (`mapInArrow` with the run's FeatureEncoder, the same code serving uses);
  5. write the Delta table `features/examples/<run date>`, partitioned by split, each file one
     sorted row range. A re-run overwrites the table in one Delta commit.

Readers that do not use Spark (the trainer) take the table's live files from its Delta log
(features/examples.py), never by listing the folder: an overwrite leaves the replaced files
behind until VACUUM.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from features.encoder import VOCAB_FIELDS, FeatureEncoder, stable_column
from features.examples import FILE_COLUMNS, FILE_SCHEMA, SPLITS
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

log = logging.getLogger("features")

NULL_AD_KEY = -(2**63)  # groups impressions whose ad_id is null (never a real id)
# Columns of a day-rows file (day_store.DAY_ROW_COLUMNS without dt) that the assembly reads: the
# vocabulary fields as stable ids (spark_jobs/id_registry.py), the ad id and numeric fields raw.
DAY_ROW_READ_COLUMNS: tuple[str, ...] = ("impression_id", "event_ts", "click", "ad_id", *NUMERIC_FIELDS,
                                         *[stable_column(n) for n in VOCAB_FIELDS], "ad_pos")
ROWS_PER_FILE = 1 << 20  # about this many rows per examples file
_POS_BITS = 32  # within-ad order key: day number << 32 | position of the row within its ad and day
AD_KEY, WITHIN = "_ad_key", "_within"  # layout inputs: the ad (nulls as NULL_AD_KEY) and the within-ad order
_LAYOUT_OUTPUT = ("group_id", "row_idx")
_SIGN = np.uint64(1 << 63)

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def group_shuffle_keys(seed: int, run_date: dt.date, ad_key: np.ndarray, group_no: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random uint64 sort keys of groups (seed, run date, ad, group number)."""
    with np.errstate(over="ignore"):
        base = _mix64(np.array([np.uint64(seed & (2**64 - 1)) ^ (np.uint64(run_date.toordinal()) << np.uint64(40))]))
        k = _mix64(base ^ ad_key.astype(np.int64).view(np.uint64))
        return _mix64(k ^ group_no.astype(np.uint64))


def within_ad_keys(days: np.ndarray, ad_pos: np.ndarray) -> np.ndarray:
    """The within-ad order key of rows: day (int, e.g. days since epoch), then position in it."""
    if ad_pos.size and (ad_pos.min() < 0 or ad_pos.max() >= 2**_POS_BITS):
        raise ValueError(f"ad_pos out of [0, 2^{_POS_BITS}): {ad_pos.min()}..{ad_pos.max()}")
    return (days.astype(np.int64) << _POS_BITS) | ad_pos.astype(np.int64)


# --------------------------------------------------------------------------- Spark


def layout_inputs(df: "DataFrame", run_date: dt.date) -> "DataFrame":
    """Day rows (dt, ad_id, ad_pos, ...) with split (dt = run date: "holdout", else "train") and
    the layout's inputs: AD_KEY (ad_id, nulls as NULL_AD_KEY) and WITHIN (day << 32 | ad_pos)."""
    from pyspark.sql import functions as F

    day_no = F.datediff(F.col("dt"), F.lit(dt.date(1970, 1, 1))).cast("bigint")
    return (df.withColumn("split", F.when(F.col("dt") == F.lit(run_date), F.lit("holdout")).otherwise(F.lit("train")))
            .withColumn(AD_KEY, F.coalesce(F.col("ad_id").cast("bigint"), F.lit(NULL_AD_KEY)))
            .withColumn(WITHIN, F.shiftleft(day_no, _POS_BITS).bitwiseOR(F.col("ad_pos").cast("bigint"))))


def _shuffle_keys(seed: int, run_date: dt.date, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow: groups (AD_KEY, _group_no, ...) plus `_skey`, group_shuffle_keys as a signed
    long whose signed order is the keys' unsigned order (the sign bit flipped)."""
    for batch in batches:
        ads = np.asarray(batch.column(AD_KEY).to_numpy(zero_copy_only=False), np.int64)
        nos = np.asarray(batch.column("_group_no").to_numpy(zero_copy_only=False), np.int64)
        keys = (group_shuffle_keys(seed, run_date, ads, nos) ^ _SIGN).view(np.int64)
        yield batch.append_column("_skey", pa.array(keys, pa.int64()))


def with_layout(df: "DataFrame", group_size: int, seed: int, run_date: dt.date) -> "DataFrame":
    """`df` (with split, AD_KEY and WITHIN, unique per ad) plus group_id and row_idx (bigint); the
    helper columns are dropped. See the module docstring for the layout.

    Shuffles the rows once, by (split, ad): a row's place in its ad is a window row_number. The
    groups (one row per group: rows / group_size at most) get their ids and row offsets from a
    window per split, and reach the rows as one array per ad, joined on the same (split, ad)
    keys, so the rows are not shuffled again.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    g = F.lit(group_size).cast("bigint")
    rows = df.withColumn("_pos", F.row_number().over(Window.partitionBy("split", AD_KEY).orderBy(WITHIN)) - 1)
    ads = df.groupBy("split", AD_KEY).agg(F.count(F.lit(1)).alias("_n"))
    groups = (ads.select("split", AD_KEY, "_n",
                         F.explode(F.sequence(F.lit(0).cast("bigint"),
                                              F.floor((F.col("_n") - 1) / g).cast("bigint"))).alias("_group_no"))
              .withColumn("_size", F.least(g, F.col("_n") - F.col("_group_no") * g))
              .drop("_n"))
    groups = groups.mapInArrow(functools.partial(_shuffle_keys, seed, run_date),
                               f"split string, {AD_KEY} bigint, _group_no bigint, _size bigint, _skey bigint")
    in_split = Window.partitionBy("split").orderBy("_skey", AD_KEY, "_group_no")
    numbered = groups.select(
        "split", AD_KEY, "_group_no", (F.row_number().over(in_split) - 1).cast("bigint").alias("_gid"),
        (F.sum("_size").over(in_split.rowsBetween(Window.unboundedPreceding, Window.currentRow)) - F.col("_size"))
        .alias("_offset"))
    per_ad = numbered.groupBy("split", AD_KEY).agg(
        F.sort_array(F.collect_list(F.struct("_group_no", "_gid", "_offset"))).alias("_groups"))
    mine = F.element_at(F.col("_groups"), (F.floor(F.col("_pos") / g) + 1).cast("int"))
    keep = [c for c in df.columns if c not in (AD_KEY, WITHIN, *_LAYOUT_OUTPUT)]
    return (rows.join(per_ad, ["split", AD_KEY])
            .select(*keep, mine["_gid"].alias("group_id"),
                    (mine["_offset"] + F.col("_pos") % g).alias("row_idx")))


# Columns the encoding step emits: the examples' file columns (run_date comes later) and split.
_ENCODED_SCHEMA = pa.schema([f for f in FILE_SCHEMA if f.name != "run_date"] + [pa.field("split", pa.string())])


def _encode(encoder: FeatureEncoder, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow: laid-out day rows -> _ENCODED_SCHEMA (the run's ids, an inactive id as 0)."""
    for batch in batches:
        enc = encoder.encode_batch(batch, stable=True)
        cols = {name: enc.column(name) for name in enc.schema.names}
        cols["row_idx"], cols["group_id"] = batch.column("row_idx"), batch.column("group_id")
        yield pa.RecordBatch.from_arrays([cols[f.name].cast(f.type) for f in _ENCODED_SCHEMA], schema=_ENCODED_SCHEMA)


def examples_frame(day_rows: "DataFrame", encoder: FeatureEncoder, run_date: dt.date, group_size: int, seed: int,
                   n_files: int) -> "DataFrame":
    """The run date's examples (FILE_COLUMNS and split) from its day rows (dt and
    DAY_ROW_READ_COLUMNS of the window and holdout days), range-partitioned into `n_files` tasks
    of contiguous rows, each sorted by (split, row_idx)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    laid = with_layout(layout_inputs(day_rows.select("dt", *DAY_ROW_READ_COLUMNS), run_date), group_size, seed,
                       run_date)
    ordered = laid.repartitionByRange(max(1, n_files), "split", "row_idx").sortWithinPartitions("split", "row_idx")
    encoded = ordered.mapInArrow(functools.partial(_encode, encoder), from_arrow_schema(_ENCODED_SCHEMA))
    return (encoded.select(F.lit(run_date).alias("run_date"), *[c for c in FILE_COLUMNS if c != "run_date"], "split")
            .sortWithinPartitions("split", "row_idx"))  # already so: this states it to the writer


def write_examples(df: "DataFrame", uri: str) -> None:
    """Write examples (FILE_COLUMNS and split) as the Delta table at `uri`, partitioned by split,
    replacing the table whole in one commit (a re-run never adds rows to it)."""
    unknown = sorted(set(df.columns) - {*FILE_COLUMNS, "split"})
    if unknown:
        raise ValueError(f"examples frame has unexpected columns {unknown}")
    # static: the sessions overwrite partitions dynamically by default (core/spark.py), which would
    # keep the rows of a split this frame does not hold.
    (df.select(*FILE_COLUMNS, "split").write.format("delta").mode("overwrite")
     .option("partitionOverwriteMode", "static").option("overwriteSchema", "true")
     .partitionBy("split").save(uri))


def _stats_columns(split: str) -> list:
    """Aggregates of one split's statistics over an examples frame, named "<split>:<key>"."""
    from pyspark.sql import functions as F

    mine = F.col("split") == F.lit(split)

    def count(cond) -> "Any":
        return F.coalesce(F.sum(F.when(mine & cond, 1).otherwise(0)), F.lit(0)).cast("bigint")

    def total(value) -> "Any":
        return F.coalesce(F.sum(F.when(mine, value).otherwise(0)), F.lit(0)).cast("bigint")

    cols = {"rows": count(F.lit(True)), "clicks": total(F.col("label")),
            "groups": F.coalesce(F.max(F.when(mine, F.col("group_id"))) + 1, F.lit(0)).cast("bigint"),
            "cold_rows": count(F.col("is_cold"))}
    cols |= {f"oov_{n}": count(F.col(f"f_{n}") == 0) for n in SINGLE_FIELDS}
    cols |= {f"oov_{n}": total(F.size(F.filter(F.col(f"m_{n}"), lambda v: v == 0))) for n in MULTI_FIELDS}
    cols |= {f"len_{n}": total(F.size(F.col(f"m_{n}"))) for n in MULTI_FIELDS}
    return [c.alias(f"{split}:{k}") for k, c in cols.items()]


def _split_stats_of(values: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{split: {key: n}} of the "<split>:<key>" aggregates (_stats_columns): rows, clicks, groups,
    cold rows and OOV (id 0) occurrences per field, the keys build_window._split_summary reads. A
    split without rows is left out."""
    out: dict[str, dict[str, int]] = {}
    for key, value in values.items():
        split, name = key.split(":", 1)
        out.setdefault(split, {})[name] = int(value or 0)
    return {split: stats for split, stats in out.items() if stats["rows"]}


def assemble(day_rows: "DataFrame", encoder: FeatureEncoder, uri: str, run_date: dt.date, group_size: int,
             seed: int, rows_estimate: int) -> dict[str, Any]:
    """Lay out, encode and write both splits of a run date from its day rows; `rows_estimate`
    (both splits) sets the number of files. Returns {"rows": {split: n}, "stats": {split: stats}
    (_split_stats_of), "seconds": s}; the statistics are observed by the writing job itself."""
    from pyspark.sql import Observation

    started = time.monotonic()
    n_files = max(1, -(-int(rows_estimate) // ROWS_PER_FILE))
    observed = Observation("example_stats")  # the statistics, gathered by the writing job itself
    frame = examples_frame(day_rows, encoder, run_date, group_size, seed, n_files)
    write_examples(frame.observe(observed, *[c for split in SPLITS for c in _stats_columns(split)]), uri)
    stats = _split_stats_of(observed.get)
    rows = {s: stats[s]["rows"] if s in stats else 0 for s in SPLITS}
    log.info("features %s: examples table %s written in %.1f s (%d range(s) of rows), %s rows", run_date, uri,
             time.monotonic() - started, n_files, rows)
    return {"rows": rows, "stats": stats, "seconds": round(time.monotonic() - started, 2)}
