"""Published versions, the atomic `current` pointer, the registry table and rollback.

    python -m serving.registry list [--config FILE]
    python -m serving.registry rollback --to-version N [--config FILE]

Layout under <artifacts>/published/:

    v<N>-<D>/           an immutable version: model/ (model.pt, manifest.json), lookup/ (serving
                        files, manifest.json), validation.json, version.json
    current.json        {"version": N, "run_date": D, "dir": "v<N>-<D>", ...}: the live version

A version folder is staged under a hidden temporary name and renamed into place, so a
`v<N>-<D>` folder is always complete. `current.json` is replaced with os.replace (atomic on a
local filesystem): a reader sees the old pointer or the new one, never a mix, and the folder it
names never changes. A crash after the folder is written and before the pointer moves leaves
the previous version live; the orphan folder is never reused (numbers only grow).

On an object store (s3a://) there is no atomic rename; there the pointer is the registry Delta
table's latest row (a Delta commit is atomic) and readers resolve `current` from it. This module
implements the local-filesystem pointer, which the default layout and the tests use.

Registry table (Paths.registry, Delta, append-only): one row per publish or rollback with
version, run_date, action, dir, metrics, gates, input Delta versions, config hash, code version,
model version and published_at.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import PipelineConfig
from core.paths import Paths, local_path

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

CURRENT_FILE = "current.json"
VERSION_FILE = "version.json"
_VERSION_DIR = re.compile(r"^v(\d+)-(\d{4}-\d{2}-\d{2})$")
REGISTRY_DDL = ("version int, run_date date, action string, dir string, model_version string, "
                "metrics string, gates string, input_versions string, config_hash string, "
                "code_version string, published_at timestamp")


class PublishError(RuntimeError):
    """Publishing or rolling back is refused (gates not passed, unknown version, ...)."""


def published_root(cfg: PipelineConfig) -> Path:
    """The local folder of published versions (the pointer needs a local filesystem; see module doc)."""
    return Path(local_path(Paths.of(cfg).published))


def version_dir(cfg: PipelineConfig, entry: dict[str, Any]) -> Path:
    """The folder of a pointer/registry entry."""
    return published_root(cfg) / entry["dir"]


def read_current(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The live version's pointer entry, or None when nothing is published."""
    path = published_root(cfg) / CURRENT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def switch_current(cfg: PipelineConfig, entry: dict[str, Any]) -> None:
    """Point `current` at ``entry`` atomically (temporary file + os.replace)."""
    root = published_root(cfg)
    if not (root / entry["dir"]).is_dir():
        raise PublishError(f"cannot point current at {entry['dir']!r}: no such version folder in {root}")
    tmp = root / f"{CURRENT_FILE}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(entry, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT_FILE)


def list_version_dirs(cfg: PipelineConfig) -> list[tuple[int, str, str]]:
    """(version, run date, folder name) of every complete version folder, oldest first."""
    root = published_root(cfg)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _VERSION_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), m.group(2), p.name))
    return sorted(out)


def code_version() -> str:
    """`git describe --always --dirty` of the repository, else the package version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=repo, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version
        return version("cscnn-pipeline")
    except Exception:  # not installed as a package
        return "unknown"


def stage_version(cfg: PipelineConfig, run_date: dt.date, sources: dict[str, Path],
                  metadata: dict[str, Any]) -> dict[str, Any]:
    """Copy ``sources`` (name in the version -> file or folder) into a new immutable version folder.

    Returns the pointer entry of the new version (not yet live)."""
    root = published_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    existing = [v for v, _, _ in list_version_dirs(cfg)]
    number = max(existing, default=0) + 1
    name = f"v{number}-{run_date.isoformat()}"
    staging = root / f".staging-{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for rel, src in sources.items():
            if src.is_dir():
                shutil.copytree(src, staging / rel)
            else:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, staging / rel)
        entry = {"version": number, "run_date": run_date.isoformat(), "dir": name, **metadata}
        (staging / VERSION_FILE).write_text(json.dumps(entry, indent=2, sort_keys=True))
        os.rename(staging, root / name)  # fails if the name exists: folders are never overwritten
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return entry


def append_registry(spark: "SparkSession", cfg: PipelineConfig, entry: dict[str, Any], action: str) -> None:
    """Append one row (publish or rollback) to the registry Delta table."""
    row = (int(entry["version"]), dt.date.fromisoformat(entry["run_date"]), action, entry["dir"],
           entry.get("model_version"), json.dumps(entry.get("metrics", {}), sort_keys=True),
           json.dumps(entry.get("gates", []), sort_keys=True),
           json.dumps(entry.get("input_versions", {}), sort_keys=True), entry.get("config_hash"),
           entry.get("code_version"), dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    (spark.createDataFrame([row], REGISTRY_DDL).write.format("delta").mode("append")
     .save(Paths.of(cfg).registry))


def read_registry(spark: "SparkSession", cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Registry rows, oldest first ([] when the table does not exist yet)."""
    from delta.tables import DeltaTable

    uri = Paths.of(cfg).registry
    if not DeltaTable.isDeltaTable(spark, uri):
        return []
    return [r.asDict() for r in spark.read.format("delta").load(uri).orderBy("published_at").collect()]


def promote(spark: "SparkSession", cfg: PipelineConfig, entry: dict[str, Any], action: str) -> None:
    """Make ``entry`` live and record it; if recording fails the previous pointer is restored."""
    previous = read_current(cfg)
    switch_current(cfg, entry)
    try:
        append_registry(spark, cfg, entry, action)
    except BaseException:
        if previous is not None:
            switch_current(cfg, previous)
        else:
            (published_root(cfg) / CURRENT_FILE).unlink(missing_ok=True)
        raise
    log.info("%s: v%s (%s) is live", action, entry["version"], entry["run_date"])


def rollback(spark: "SparkSession", cfg: PipelineConfig, to_version: int) -> dict[str, Any]:
    """Point `current` at an earlier published version and record the rollback."""
    dirs = {v: name for v, _, name in list_version_dirs(cfg)}
    if to_version not in dirs:
        raise PublishError(f"no published version {to_version} in {published_root(cfg)}; "
                           f"available: {sorted(dirs) or 'none'}")
    entry = json.loads((published_root(cfg) / dirs[to_version] / VERSION_FILE).read_text())
    current = read_current(cfg)
    if current is not None and current["version"] == to_version:
        log.info("version %d is already live; recording nothing", to_version)
        return entry
    promote(spark, cfg, entry, "rollback")
    return entry


def main(argv: list[str] | None = None) -> int:
    """`list` and `rollback --to-version N` (see module docstring)."""
    from core.cli import setup_logging
    from core.config import load_config, parse_overrides

    setup_logging()
    ap = argparse.ArgumentParser(description="Published versions of the CTR model + lookup table.")
    ap.add_argument("--config", help="config file (.toml or .json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="published versions, the live one marked with *")
    rb = sub.add_parser("rollback", help="make an earlier published version live")
    rb.add_argument("--to-version", type=int, required=True, help="version number N of a v<N>-<date> folder")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, parse_overrides(args.set))
    if args.command == "list":
        current = read_current(cfg)
        for number, day, name in list_version_dirs(cfg):
            mark = "*" if current and current["version"] == number else " "
            info = json.loads((published_root(cfg) / name / VERSION_FILE).read_text())
            print(f"{mark} v{number}  run_date {day}  auc {info.get('metrics', {}).get('auc')}  "
                  f"model {info.get('model_version')}  published {info.get('published_at')}")
        return 0
    from core.spark import get_spark

    try:
        entry = rollback(get_spark(cfg.spark), cfg, args.to_version)
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"live": entry["dir"], "version": entry["version"], "run_date": entry["run_date"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
