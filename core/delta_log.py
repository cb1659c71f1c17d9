"""The live data files of a Delta table, read from its transaction log without Spark.

A reader that is not Spark (the trainer, with pyarrow) must not list a table's folder: an
overwrite leaves the files it replaced there (tombstoned in the log) until VACUUM removes them.
This module replays the log the way the Delta protocol defines it: the newest complete classic
checkpoint (single- or multi-part parquet), then every JSON commit after it, in version order;
`add` makes a file live and `remove` retires it.

Supported: what this project's writers produce (Spark and Delta 4 with default table features).
A table whose files carry deletion vectors, or that only has a V2 checkpoint, is refused with
an error that names it, never read wrong.

Local paths and file:// URIs are read from the local filesystem; s3a:// and s3:// through
pyarrow's S3 filesystem, with credentials and endpoint from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.storage import filesystem, path_in_filesystem

__all__ = ["DataFile", "DeltaLogError", "filesystem", "latest_version", "live_files", "partition_rows"]

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet$")
_V2_CHECKPOINT = re.compile(r"^\d{20}\.checkpoint\.[0-9a-f-]{36}\.(?:json|parquet)$")


class DeltaLogError(ValueError):
    """The table's log is missing, has a gap, or uses a feature this reader does not support."""


@dataclass(frozen=True)
class DataFile:
    path: str  # absolute: a local path, or a URI with the table's scheme
    partition: dict[str, str | None] = field(default_factory=dict)
    size: int = 0
    stats: str | None = field(default=None, repr=False)  # the log's statistics (JSON), parsed only when asked

    @property
    def records(self) -> int | None:
        """The file's row count from its statistics; None when the writer collected none."""
        records = json.loads(self.stats).get("numRecords") if self.stats else None
        return int(records) if records is not None else None


def _join(table_path: str, file_path: str) -> str:
    """A log entry's file as a path in the table's filesystem (relative entries are URL-encoded)."""
    if "://" in file_path:
        return path_in_filesystem(file_path)
    return f"{table_path.rstrip('/')}/{unquote(file_path)}"


def live_files(uri: str) -> list[DataFile]:
    """The table's current data files (sorted by path), from its Delta log."""
    fs, root = filesystem(uri)
    log_dir = f"{root.rstrip('/')}/_delta_log"
    infos = fs.get_file_info(pafs.FileSelector(log_dir, allow_not_found=True))
    names = {os.path.basename(i.path): i.path for i in infos if i.type == pafs.FileType.File}
    commits = {int(m.group(1)): p for n, p in names.items() if (m := _COMMIT.match(n))}
    if not commits and not any(_CHECKPOINT.match(n) for n in names):
        raise DeltaLogError(f"no Delta table at {uri} (no commit in {log_dir})")
    checkpoint, parts = _latest_checkpoint(names)
    if checkpoint is None and any(_V2_CHECKPOINT.match(n) for n in names) and 0 not in commits:
        raise DeltaLogError(f"{uri}: only a V2 checkpoint describes this table's early versions; not supported here")
    live: dict[str, DataFile] = {}
    start = 0
    if checkpoint is not None:
        start = checkpoint + 1
        for part in parts:
            table = pq.read_table(part, columns=["add"], filesystem=fs)
            for entry in table.column("add").to_pylist():
                if entry is not None:
                    _add(uri, root, live, entry)
    versions = sorted(v for v in commits if v >= start)
    expected = list(range(start, start + len(versions)))
    if versions != expected:
        raise DeltaLogError(f"{uri}: the Delta log has a gap: commits {versions[:5]}... after version {start - 1}")
    for version in versions:
        with fs.open_input_stream(commits[version]) as f:
            for line in f.read().decode().splitlines():
                if not line.strip():
                    continue
                action = json.loads(line)
                if "add" in action:
                    _add(uri, root, live, action["add"])
                elif "remove" in action:
                    live.pop(_join(root, action["remove"]["path"]), None)
    return sorted(live.values(), key=lambda f: f.path)


def _add(uri: str, root: str, live: dict[str, DataFile], entry: dict) -> None:
    if entry.get("deletionVector"):
        raise DeltaLogError(f"{uri}: file {entry['path']} has a deletion vector; this reader does not apply them")
    partition = entry.get("partitionValues") or {}
    if isinstance(partition, list):  # a checkpoint's map column comes back as (key, value) pairs
        partition = dict(partition)
    path = _join(root, entry["path"])
    live[path] = DataFile(path, dict(partition), int(entry.get("size") or 0), entry.get("stats"))


def latest_version(uri: str) -> int | None:
    """The table's latest version from its log's file names (the highest commit or checkpoint:
    Delta writes a commit whole, under its version's name); None when there is no table."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/_delta_log", allow_not_found=True))
    versions = [int(m.group(1)) for i in infos if i.type == pafs.FileType.File
                and (m := _COMMIT.match(i.base_name) or _CHECKPOINT.match(i.base_name))]
    return max(versions) if versions else None


def partition_rows(uri: str, column: str, values: list[str]) -> dict[str, int] | None:
    """Rows of the table at `uri` per value of its partition column `column`, for `values` (a
    value with no live file counts 0), summed from the live files' statistics; None when a file of
    those values has no row count in the log (its writer collected no statistics)."""
    wanted = set(values)
    rows = dict.fromkeys(values, 0)
    for f in live_files(uri):
        value = f.partition.get(column)
        if value in wanted:
            if f.records is None:
                return None
            rows[value] += f.records
    return rows


def _latest_checkpoint(names: dict[str, str]) -> tuple[int | None, list[str]]:
    """(version, part paths) of the newest classic checkpoint with every part present."""
    found: dict[int, dict[int, str]] = {}
    totals: dict[int, int] = {}
    for name, path in names.items():
        m = _CHECKPOINT.match(name)
        if m is None:
            continue
        version = int(m.group(1))
        part, total = (int(m.group(2)), int(m.group(3))) if m.group(2) else (1, 1)
        found.setdefault(version, {})[part] = path
        totals[version] = total
    for version in sorted(found, reverse=True):
        if len(found[version]) == totals[version]:
            return version, [found[version][k] for k in sorted(found[version])]
    return None, []
