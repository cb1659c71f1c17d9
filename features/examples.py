"""The encoded examples table of a run date: its schema, location and file reader (no Spark).

One Delta table per run date, `features/examples/<D>` under the warehouse, partitioned by split
(SPLITS); its columns are EXAMPLE_COLUMNS (features/spec.py says what they mean). The features
job writes it whole, each file one sorted row range (spark_jobs/example_assembly.py), and a
re-run replaces it in one commit; the trainer and the stages read its live parquet files with
`read_example_files`, without Spark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.delta_log import DataFile, filesystem, live_files
from features.spec import MULTI_FIELDS, SINGLE_FIELDS

SPLITS = ("train", "holdout")
EXAMPLE_COLUMNS: tuple[str, ...] = (
    "run_date", "split", "row_idx", "group_id", "impression_id", "ad_id", "category_idx", "label", "is_cold",
    *[f"f_{n}" for n in SINGLE_FIELDS], *[f"m_{n}" for n in MULTI_FIELDS],
)
# Columns of a split's parquet files (split itself is the table's partition column).
FILE_COLUMNS: tuple[str, ...] = tuple(c for c in EXAMPLE_COLUMNS if c != "split")
# Arrow types of FILE_COLUMNS (Spark reads them back as date, bigint, string, int, boolean, array<int>).
FILE_SCHEMA = pa.schema([
    ("run_date", pa.date32()), ("row_idx", pa.int64()), ("group_id", pa.int64()), ("impression_id", pa.string()),
    ("ad_id", pa.int64()), ("category_idx", pa.int32()), ("label", pa.int32()), ("is_cold", pa.bool_()),
    *[(f"f_{n}", pa.int32()) for n in SINGLE_FIELDS], *[(f"m_{n}", pa.list_(pa.int32())) for n in MULTI_FIELDS],
])


def examples_location(table_root: str, run_date: dt.date) -> str:
    """The Delta table of a run date's examples under `features/examples` of the warehouse."""
    return f"{table_root.rstrip('/')}/{run_date.isoformat()}"


def read_example_files(uri: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """A split's examples straight from the table's live parquet files (no Spark), in row_idx order.

    The live files come from the table's Delta log (core/delta_log.py), not from a folder
    listing: a re-run overwrites the table and leaves the replaced files behind until VACUUM.
    Each file holds a sorted row range, so ordering the files by their first row_idx usually
    leaves nothing to sort. Types are FILE_SCHEMA's, whoever wrote the files.
    """
    wanted = checked_columns(columns)
    files = split_files(uri, split)
    fs = filesystem(uri)[0]
    read = wanted if "row_idx" in wanted else [*wanted, "row_idx"]

    def one(f: DataFile) -> pa.Table:
        return pq.read_table(f.path, columns=read, filesystem=fs)

    with ThreadPoolExecutor(workers()) as pool:
        parts = [p for p in pool.map(one, files) if p.num_rows]
    if not parts:
        return file_schema(read).empty_table().select(wanted)
    parts.sort(key=lambda t: t.column("row_idx")[0].as_py())
    table = in_row_order(pa.concat_tables(parts, promote_options="permissive").cast(file_schema(read)))
    return table.select(wanted)


def checked_columns(columns: list[str] | None) -> list[str]:
    """`columns` (None: all FILE_COLUMNS), each checked to be an examples file column."""
    wanted = list(FILE_COLUMNS) if columns is None else list(columns)
    unknown = sorted(set(wanted) - set(FILE_COLUMNS))
    if unknown:
        raise ValueError(f"unknown examples column(s) {unknown}; allowed: {', '.join(FILE_COLUMNS)}")
    return wanted


def split_files(uri: str, split: str) -> list[DataFile]:
    """The live files of one split of the examples table at `uri` (an error when it has none)."""
    files = [f for f in live_files(uri) if f.partition.get("split") == split]
    if not files:
        raise FileNotFoundError(f"no {split} examples in the table at {uri}")
    return files


def file_schema(names: list[str]) -> pa.Schema:
    """The FILE_SCHEMA fields of `names`, in that order."""
    return pa.schema([FILE_SCHEMA.field(n) for n in names])


def in_row_order(table: pa.Table) -> pa.Table:
    """`table` sorted by row_idx (written that way already: then only checked)."""
    row_idx = np.asarray(table.column("row_idx").to_numpy(), np.int64)
    if row_idx.size > 1 and not np.all(row_idx[1:] > row_idx[:-1]):
        table = take_rows(table, np.argsort(row_idx, kind="stable"))
    return table


def validation_split(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table | None]:
    """(rows to fit, validation rows) of a train split: a seeded hash sample of `fraction` of its rows.

    A row is a validation row when `validation_mask` says so, so the sample is the same in every
    process (each DDP rank, a resumed run, a streamed read: features.example_stream) and does not
    depend on the row order. Both parts keep the table's row order, so ad groups stay contiguous.
    `fraction` 0, or a sample that holds no row: (table, None).
    """
    if fraction <= 0 or table.num_rows == 0:
        return table, None
    valid = validation_mask(table, fraction, seed)
    if not valid.any():
        return table, None
    return table.filter(pa.array(~valid)), table.filter(pa.array(valid))


def validation_mask(table: pa.Table, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool: the rows of `table` whose keyed BLAKE2b hash of impression_id (key: `seed`) falls
    in the lowest `fraction` of the hash range."""
    if fraction <= 0 or table.num_rows == 0:
        return np.zeros(table.num_rows, bool)
    key = int(seed).to_bytes(8, "little", signed=True)
    ids = table.column("impression_id").to_pylist()
    hashed = np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=key).digest(), "little") >> 11
                          for i in ids), np.uint64, len(ids))
    return hashed < np.uint64(int(fraction * 2 ** 53))


def workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def take_rows(table: pa.Table, indices: np.ndarray) -> pa.Table:
    """table.take(indices), one column per thread (Arrow's take releases the GIL)."""
    return take_columns(table.columns, table.schema, indices)


def take_columns(columns: list[pa.ChunkedArray], schema: pa.Schema, indices: np.ndarray) -> pa.Table:
    """The table of `columns` (emptied as it goes) reordered by `indices`.

    Each column is released as soon as its reordered copy exists, so with no other reference
    to the input the peak is one copy of the table plus a column per thread, not two copies.
    """
    idx = pa.array(indices)
    columns.reverse()  # pop() from the end hands out the first column first
    with ThreadPoolExecutor(workers()) as pool:
        # A finished task drops its input column: the pool keeps no reference to a work item it ran.
        futures = [pool.submit(pa.ChunkedArray.take, columns.pop(), idx) for _ in range(len(columns))]
    return pa.Table.from_arrays([f.result() for f in futures], schema=schema)
