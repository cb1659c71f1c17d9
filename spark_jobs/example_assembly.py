"""A run date's encoded examples, assembled from the stored day rows without a Spark pass.

The features job keeps every bronze day's joined rows once, in `features/day_rows`
(partitioned by dt, rewritten only when that day's bronze files change). A run date then
reads the files of its window days and holdout day with pyarrow and, in numpy,

  1. maps their stable ids (written once per day by spark_jobs/id_registry.py) to the run's ids
     with the run's FeatureEncoder, inactive ids to 0, and bins the numeric fields,
  2. lays each split out in ad groups (`ad_group_layout`),
  3. writes them in training order as one Delta table per run date,
     `features/examples/<run date>` partitioned by split: the parquet files are written here
     and registered with Delta's CONVERT TO DELTA, which reads only the files' footers.

So a daily run costs one new day of Spark work plus this pass over the window's rows at file
speed, instead of encoding, shuffling and writing the whole window in Spark again. A re-run of
a date builds the table beside the old one and then swaps it in whole; the table is never
updated in place, which is what lets the trainer read its parquet files directly.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.paths import is_local, local_path
from features.encoder import VOCAB_FIELDS, FeatureEncoder, stable_column
from features.examples import FILE_COLUMNS, FILE_SCHEMA, SPLITS, in_row_order, take_columns, workers
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger("features")

NULL_AD_KEY = -(2**63)  # groups impressions whose ad_id is null (never a real id)
# Columns of a day-rows file (day_store.DAY_ROW_COLUMNS without dt) that the assembly reads: the
# vocabulary fields as stable ids (spark_jobs/id_registry.py), the ad id and numeric fields raw.
DAY_ROW_READ_COLUMNS: tuple[str, ...] = ("impression_id", "event_ts", "click", "ad_id", *NUMERIC_FIELDS,
                                         *[stable_column(n) for n in VOCAB_FIELDS], "ad_pos")
ROWS_PER_FILE = 1 << 20  # at least this many rows per examples file (a split may use fewer files)
_POS_BITS = 32  # within-ad order key: day number << 32 | position of the row within its ad and day

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


def ad_order(ad_key: np.ndarray, within_ad: np.ndarray) -> np.ndarray:
    """Row indices sorted by (ad_key, within_ad), ties in input order: np.lexsort's answer.

    Faster path: when the spans of both keys fit in 63 bits together (ad ids of up to about
    2^26 with a 32-day window) and no two rows share both, one argsort of the packed key
    (SIMD-accelerated in numpy) replaces the two-key lexsort; with unique keys any sort
    algorithm gives the same order. The null-ad key sorts first either way.
    """
    if ad_key.size > 1:
        real = ad_key != NULL_AD_KEY
        if real.any():
            everyone_real = bool(real.all())
            lo_ad = int(ad_key[real].min()) - (0 if everyone_real else 1)  # null ads just below the real ones
            ads = ad_key if everyone_real else np.where(real, ad_key, lo_ad)
            ad_bits = (int(ads.max()) - lo_ad).bit_length()
            lo, hi = int(within_ad.min()), int(within_ad.max())
            within_bits = (hi - lo).bit_length()
            if ad_bits + within_bits <= 63:
                key = ((ads.astype(np.int64) - lo_ad) << within_bits) | (within_ad.astype(np.int64) - lo)
                order = np.argsort(key)
                packed = key[order]
                if not np.any(packed[1:] == packed[:-1]):
                    return order
    return np.lexsort((within_ad, ad_key))


def ad_group_layout(ad_key: np.ndarray, within_ad: np.ndarray, group_size: int, seed: int,
                    run_date: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """(group_id, row_idx) of every row, both int64 and aligned with the input.

    The rows of an ad, ordered by `within_ad`, are cut into consecutive groups of at most
    `group_size`; groups are ordered by `group_shuffle_keys` (ties by ad, then group number),
    numbered 0.. in that order, and laid out contiguously: row_idx = the group's offset + the
    row's position in it. Every row gets exactly one row_idx in 0..n-1.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = int(ad_key.size)
    if within_ad.shape != ad_key.shape:
        raise ValueError(f"ad_key and within_ad differ in shape: {ad_key.shape} vs {within_ad.shape}")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = ad_order(ad_key, within_ad)
    ads = ad_key[order]
    new_ad = np.empty(n, dtype=bool)
    new_ad[0] = True
    np.not_equal(ads[1:], ads[:-1], out=new_ad[1:])
    ad_start = np.flatnonzero(new_ad)
    pos = np.arange(n, dtype=np.int64) - np.repeat(ad_start, np.diff(np.append(ad_start, n)))
    pos_in_group = pos % group_size
    starts = np.flatnonzero(pos_in_group == 0)
    sizes = np.diff(np.append(starts, n))
    g_ad, g_no = ads[starts], pos[starts] // group_size
    g_order = np.lexsort((g_no, g_ad, group_shuffle_keys(seed, run_date, g_ad, g_no)))
    group_id = np.empty(starts.size, dtype=np.int64)
    group_id[g_order] = np.arange(starts.size, dtype=np.int64)
    offset = np.empty(starts.size, dtype=np.int64)
    ordered_sizes = sizes[g_order]
    offset[g_order] = np.cumsum(ordered_sizes) - ordered_sizes
    row_group = np.cumsum(pos_in_group == 0) - 1
    out_group, out_idx = np.empty(n, np.int64), np.empty(n, np.int64)
    out_group[order] = group_id[row_group]
    out_idx[order] = offset[row_group] + pos_in_group
    return out_group, out_idx


def within_ad_keys(days: np.ndarray, ad_pos: np.ndarray) -> np.ndarray:
    """The within-ad order key of rows: day (int, e.g. days since epoch), then position in it."""
    if ad_pos.size and (ad_pos.min() < 0 or ad_pos.max() >= 2**_POS_BITS):
        raise ValueError(f"ad_pos out of [0, 2^{_POS_BITS}): {ad_pos.min()}..{ad_pos.max()}")
    return (days.astype(np.int64) << _POS_BITS) | ad_pos.astype(np.int64)


def encode_day_rows(encoder: FeatureEncoder, table: pa.Table, day: dt.date,
                    split: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Encode one day's rows: (encoded columns, ad keys, within-ad keys).

    `table` holds a day-rows file's columns (DAY_ROW_READ_COLUMNS: the vocabulary fields as stable
    ids, which the run's encoder maps to its ids, inactive ones to 0). The encoded table has
    FILE_COLUMNS except run_date, row_idx, group_id.
    """
    n = table.num_rows
    batch_table = table.append_column("split", pa.repeat(pa.scalar(split, pa.string()), n))
    batches = batch_table.combine_chunks().to_batches() or [pa.RecordBatch.from_pylist([], schema=batch_table.schema)]
    enc = pa.Table.from_batches([encoder.encode_batch(b, stable=True) for b in batches])
    ad = table.column("ad_id").combine_chunks()
    ad_key = np.asarray(pc.fill_null(ad.cast(pa.int64()), NULL_AD_KEY).to_numpy(zero_copy_only=False), np.int64)
    ad_pos = np.asarray(table.column("ad_pos").to_numpy(), np.int64)
    keys = within_ad_keys(np.full(n, (day - dt.date(1970, 1, 1)).days, np.int64), ad_pos)
    keep = [c for c in FILE_COLUMNS if c not in ("run_date", "row_idx", "group_id")]
    return enc.select(keep), ad_key, keys


def assemble_split(encoder: FeatureEncoder, files: Iterable[tuple[dt.date, str]], split: str, run_date: dt.date,
                   group_size: int, seed: int) -> pa.Table:
    """One split's examples from day-rows files [(day, local parquet path)], in row_idx order.

    Files are read and encoded on a few threads (pyarrow and numpy release the GIL); the parts
    keep the order of `files`, so the result does not depend on the threads.
    """
    files = list(files)
    if not files:
        raise ValueError(f"no day-rows files for the {split} split of {run_date}")

    def encode(item: tuple[dt.date, str]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        day, path = item
        return encode_day_rows(encoder, pq.read_table(path, columns=list(DAY_ROW_READ_COLUMNS)), day, split)

    with ThreadPoolExecutor(workers()) as pool:
        parts = list(pool.map(encode, files))
    table = pa.concat_tables([p[0] for p in parts])
    group_id, row_idx = ad_group_layout(np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
                                        group_size, seed, run_date)
    del parts
    n = table.num_rows
    order = np.empty(n, dtype=np.int64)
    order[row_idx] = np.arange(n, dtype=np.int64)  # row_idx is a permutation of 0..n-1: invert it
    columns, schema = table.columns, table.schema
    del table  # take_columns then frees each input column once it is reordered
    table = take_columns(columns, schema, order)
    table = (table.append_column("run_date", pa.repeat(pa.scalar(run_date, pa.date32()), n))
             .append_column("row_idx", pa.array(row_idx[order]))
             .append_column("group_id", pa.array(group_id[order])))
    return table.select(list(FILE_COLUMNS))


def write_examples_table(spark: "SparkSession", uri: str, splits: dict[str, pa.Table]) -> dict[str, int]:
    """Write {split: table} as the Delta table at `uri` (partitioned by split), replacing it whole.

    Returns rows per split. Each split is written in row_idx order as consecutive row ranges in
    numbered files (on a few threads). The new table is built beside the old one and swapped in
    by renames; the table is never appended to or updated, so a re-run cannot duplicate rows.
    """
    if not is_local(uri):
        raise ValueError(f"examples table {uri!r} is not on a local filesystem; the examples writer needs one "
                         "(storage.root must be a local path)")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; allowed: {', '.join(SPLITS)}")
    started = time.monotonic()
    final = local_path(uri)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    # Not a hidden name: Spark's file listing skips paths that start with "." or "_".
    staging = os.path.join(parent, f"{os.path.basename(final)}.staging-{uuid.uuid4().hex[:8]}")
    counts: dict[str, int] = {}
    jobs: list[tuple[pa.Table, str]] = []
    retired = None
    try:
        for split, table in splits.items():
            os.makedirs(os.path.join(staging, f"split={split}"))
            table = in_row_order(table.select(list(FILE_SCHEMA.names)).cast(FILE_SCHEMA))
            counts[split] = table.num_rows
            n_files = max(1, min(workers(), -(-table.num_rows // ROWS_PER_FILE)))
            step = max(1, -(-table.num_rows // n_files))
            folder = os.path.join(staging, f"split={split}")
            jobs += [(table.slice(k * step, step), os.path.join(folder, f"part-{k:05d}.parquet"))
                     for k in range(n_files)]
        with ThreadPoolExecutor(workers()) as pool:
            list(pool.map(lambda job: pq.write_table(job[0], job[1], row_group_size=1 << 20), jobs))
        written = time.monotonic()
        spark.sql(f"CONVERT TO DELTA parquet.`{staging}` NO STATISTICS PARTITIONED BY (split STRING)")
        if os.path.exists(final):
            retired = os.path.join(parent, f"{os.path.basename(final)}.retired-{uuid.uuid4().hex[:8]}")
            os.rename(final, retired)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired and not os.path.exists(final):
            os.rename(retired, final)  # put the previous table back
        raise
    if retired:
        shutil.rmtree(retired, ignore_errors=True)
    _forget_cached_delta_logs(spark)
    log.info("examples table %s: %s rows in %d files written in %.1f s, registered with Delta in %.1f s", uri,
             counts, len(jobs), written - started, time.monotonic() - written)
    return counts


def _forget_cached_delta_logs(spark: "SparkSession") -> None:
    """Drop Delta's cached table logs: a table swapped in at the same path restarts at version 0,
    which a cached log of the old table would otherwise take for unchanged."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is not None:
        jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


def assemble(spark: "SparkSession", encoder: FeatureEncoder, files: dict[str, list[tuple[dt.date, str]]],
             uri: str, run_date: dt.date, group_size: int, seed: int) -> dict[str, Any]:
    """Encode, group and write both splits of a run date.

    Returns {"rows": {split: n}, "stats": {split: split_stats}, "seconds": s}.
    """
    started = time.monotonic()
    tables = {}
    for split in SPLITS:
        tables[split] = assemble_split(encoder, files[split], split, run_date, group_size, seed)
        log.info("features %s: %s split encoded and grouped, %d rows (%.1f s)", run_date, split,
                 tables[split].num_rows, time.monotonic() - started)
    stats = {split: split_stats(t) for split, t in tables.items()}
    log.info("features %s: example statistics in %.1f s", run_date, time.monotonic() - started)
    counts = write_examples_table(spark, uri, tables)
    return {"rows": counts, "stats": stats, "seconds": round(time.monotonic() - started, 2)}


def split_stats(table: pa.Table) -> dict[str, int]:
    """Rows, clicks, groups, cold rows and OOV (id 0) occurrences per field of one split's examples
    (the keys build_window._split_summary reads)."""
    def total(arr) -> int:
        value = pc.sum(arr).as_py()
        return int(value or 0)

    stats = {"rows": table.num_rows, "clicks": total(table.column("label")),
             "groups": (int(pc.max(table.column("group_id")).as_py()) + 1) if table.num_rows else 0,
             "cold_rows": total(pc.cast(table.column("is_cold"), pa.int64()))}
    for n in SINGLE_FIELDS:
        stats[f"oov_{n}"] = total(pc.cast(pc.equal(table.column(f"f_{n}"), 0), pa.int64()))
    for n in MULTI_FIELDS:
        flat = pc.list_flatten(table.column(f"m_{n}"))
        stats[f"oov_{n}"] = total(pc.cast(pc.equal(flat, 0), pa.int64()))
        stats[f"len_{n}"] = len(flat)
    return stats
