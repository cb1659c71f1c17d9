"""A split of an examples table read incrementally, in row order, as chunks of whole ad groups.

    stream = ExampleStream(uri, "train", chunk_rows=65_536)
    for chunk in stream:          # pa.Table, FILE_SCHEMA columns, rows in row_idx order
        ...

The trainer's way to read a run date's examples without holding them: its memory is a few
chunks (the one being used, `prefetch` read ahead on a thread), whatever the window's size.

* The files are the table's live files (core/delta_log.py), local or on S3. Each holds one sorted
  row range (spark_jobs/example_assembly.py); they are visited in the order of their first row_idx,
  read from the parquet footer's statistics, and read `chunk_rows` rows at a time.
* A chunk ends at an ad-group boundary: the rows of a group cut by a file or read boundary are
  carried into the next chunk, so a chunk never splits a group (a group larger than chunk_rows
  makes a larger chunk).
* `keep`, when given, maps a chunk (with its impression_id) to a boolean mask of the rows to keep
  (the validation hash, features.examples.validation_mask); the filter runs on the reading thread
  and keeps row order. A chunk it empties is skipped.
* Rows must come in strictly increasing row_idx across the whole split; a table that breaks this
  (not written by the examples job) is refused with an error naming the file, never trained on
  in another order.

`table_chunks` cuts an in-memory table the same way, so that the trainer has one path for both.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from typing import Callable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.delta_log import DataFile, filesystem
from features.examples import checked_columns, file_schema, split_files

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 65_536
DEFAULT_PREFETCH = 2
_DONE = object()
T = TypeVar("T")


def group_cut(group_id: np.ndarray) -> int:
    """Rows before the start of the last group of `group_id` (0 when it holds one group)."""
    if len(group_id) == 0:
        return 0
    changes = np.flatnonzero(group_id[1:] != group_id[:-1])
    return int(changes[-1]) + 1 if len(changes) else 0


def table_chunks(table: pa.Table, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pa.Table]:
    """`table` in consecutive slices of about chunk_rows rows, each ending at a group boundary."""
    group_id = np.asarray(table.column("group_id").to_numpy(), np.int64) if table.num_rows else np.zeros(0, np.int64)
    start, n = 0, table.num_rows
    while start < n:
        end = min(start + chunk_rows, n)
        if end < n and group_id[end] == group_id[end - 1]:
            cut = group_cut(group_id[start:end])
            if cut:
                end = start + cut
            else:  # one group longer than chunk_rows: take it whole
                later = np.flatnonzero(group_id[end:] != group_id[start])
                end = end + int(later[0]) if len(later) else n
        yield table.slice(start, end - start)
        start = end


class ExampleStream:
    """One split of the examples table at `uri`, as chunks of whole groups (module docstring)."""

    def __init__(self, uri: str, split: str, columns: list[str] | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, prefetch: int = DEFAULT_PREFETCH,
                 keep: Callable[[pa.Table], np.ndarray] | None = None) -> None:
        if chunk_rows < 1:
            raise ValueError(f"bad chunk_rows {chunk_rows}; allowed: an integer >= 1")
        if prefetch < 1:
            raise ValueError(f"bad prefetch {prefetch}; allowed: an integer >= 1")
        wanted = checked_columns(columns)
        self.uri, self.split, self.columns = uri, split, wanted
        self.chunk_rows, self.prefetch, self.keep = chunk_rows, prefetch, keep
        # row_idx orders and checks the files; group_id cuts the chunks
        self._read = list(dict.fromkeys([*wanted, "row_idx", "group_id", *(["impression_id"] if keep else [])]))
        self._schema = file_schema(self._read)
        self._fs = filesystem(uri)[0]
        self._files = self._in_row_order(split_files(uri, split))  # [(first row_idx, rows, file)]
        self.num_rows = sum(rows for _, rows, _ in self._files)

    def filtered(self, keep: Callable[[pa.Table], np.ndarray]) -> "ExampleStream":
        """The same stream (files already found and ordered) with `keep` as its row mask."""
        other = copy.copy(self)
        other.keep = keep
        other._read = list(dict.fromkeys([*self._read, "impression_id"]))
        other._schema = file_schema(other._read)
        return other

    def _in_row_order(self, files: list[DataFile]) -> list[tuple[int, int, DataFile]]:
        out = []
        for f in files:
            meta = pq.ParquetFile(f.path, filesystem=self._fs).metadata
            if meta.num_rows == 0:
                continue
            first = _first_row_idx(meta)
            if first is None:  # no statistics: read the first value
                first = pq.ParquetFile(f.path, filesystem=self._fs).read_row_group(0, columns=["row_idx"]) \
                    .column("row_idx")[0].as_py()
            out.append((int(first), meta.num_rows, f))
        out.sort(key=lambda t: t[0])
        return out

    def __iter__(self) -> Iterator[pa.Table]:
        """The chunks, read ahead on a thread; closing the iterator early stops the reader."""
        return prefetched(self._chunks, self.prefetch, f"examples-{self.split}")

    def _chunks(self) -> Iterator[pa.Table]:
        """The chunks, read on the calling thread."""
        carry: list[pa.Table] = []
        carried = 0
        last_row = -1
        for _, _, f in self._files:
            pf = pq.ParquetFile(f.path, filesystem=self._fs)
            for batch in pf.iter_batches(batch_size=self.chunk_rows, columns=self._read, use_threads=False):
                if batch.num_rows == 0:
                    continue
                part = pa.Table.from_batches([batch]).cast(self._schema)
                row_idx = np.asarray(part.column("row_idx").to_numpy(), np.int64)
                if row_idx[0] <= last_row or (len(row_idx) > 1 and not np.all(row_idx[1:] > row_idx[:-1])):
                    raise ValueError(f"{self.uri}: the {self.split} rows of {f.path} are not in increasing row_idx "
                                     "order after the files before it; was the table written by the examples job?")
                last_row = int(row_idx[-1])
                carry.append(part)
                carried += part.num_rows
                if carried < self.chunk_rows:
                    continue
                whole = pa.concat_tables(carry)
                cut = group_cut(np.asarray(whole.column("group_id").to_numpy(), np.int64))
                if cut == 0:  # one group so far: keep reading
                    carry, carried = [whole], whole.num_rows
                    continue
                done = self._finish(whole.slice(0, cut))
                if done.num_rows:
                    yield done
                carry = [whole.slice(cut)]
                carried = carry[0].num_rows
        if carried:
            done = self._finish(pa.concat_tables(carry))
            if done.num_rows:
                yield done

    def _finish(self, chunk: pa.Table) -> pa.Table:
        chunk = chunk.combine_chunks()
        if self.keep is not None:
            chunk = chunk.filter(pa.array(self.keep(chunk)))
        return chunk.select(self.columns)


def prefetched(produce: Callable[[], Iterator[T]], depth: int, name: str) -> Iterator[T]:
    """The items of `produce()`, computed up to `depth` ahead on a thread named `name`.

    An exception on the thread is raised to the consumer; closing the returned generator early
    stops the thread (it notices within 0.1 s) and joins it."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            put(_Failed(e))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _first_row_idx(meta: pq.FileMetaData) -> int | None:
    """row_idx's minimum in the first row group, from the footer's statistics (None without them)."""
    rg = meta.row_group(0)
    for i in range(rg.num_columns):
        col = rg.column(i)
        if col.path_in_schema == "row_idx":
            stats = col.statistics
            return int(stats.min) if stats is not None and stats.has_min_max else None
    raise ValueError(f"examples file without a row_idx column: {meta}")
