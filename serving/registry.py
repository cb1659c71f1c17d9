"""Published versions, the `current` pointer, the registry table, rollback and recovery.

    python -m serving.registry list     [--config FILE] [--set KEY=VALUE]
    python -m serving.registry rollback --to-version N [--config FILE] [--set KEY=VALUE]
    python -m serving.registry doctor   [--config FILE] [--set KEY=VALUE]

Layout under <artifacts>/published/ (storage.published_uri):

    v<N>-<D>/           an immutable version: model/ (model.pt, manifest.json), lookup/ (serving
                        files, manifest.json), validation.json, and version.json, which lists the
                        sha256 and size of every other file of the folder
    current.json        {"version": N, "run_date": D, "dir": "v<N>-<D>", "version_sha256": ...,
                        "txn": ...}: the live version
    .lock               held (flock) by every publish, rollback and recovery

Chain of trust: `current.json` (and the registry row) records the sha256 of the version's
`version.json`; `version.json` records the sha256 of every file served. ``verify_version`` checks
the whole chain and refuses a file that differs, is missing, or is not listed; the predictor,
warm start and the validate stage's live model go through it. Versions published before
version.json listed files (pointer without `version_sha256`) are "legacy": the predictor still
serves them, checked against their own lookup manifest only and in fp32 only, with a warning
saying how to re-publish (README, "Serving from the lookup table").

A publish is one transaction (id `txn`); its steps, in this order, each durable before the next:

  1. stage    copy the files into .staging-v<N>-<D>-<id>/, fsync every file and folder, write
              version.json, rename the folder to v<N>-<D>/ (so a v<N>-<D> folder is complete)
  2. pending  append the registry row (state "pending", txn, version_sha256)
  3. table    write the version's rows into the published lookup table (Delta, partition
              version = N): only gated versions ever reach that table
  4. pointer  replace current.json (temporary file, fsync, os.replace, fsync of the folder)
  5. live     set the registry row's state to "live" (one Delta commit)

A rollback is steps 2, 4 and 5 for an earlier version. A reader of `current` sees the old
version or the new one, both complete. ``recover`` (run first by every publish and rollback, and
by ``doctor``) makes the registry agree with the pointer after a crash at any point, SIGKILL
included: it removes `.staging-*` folders; rolls a pending row forward (live) when `current`
names its txn, else marks it "abandoned" and, for a publish, deletes its table rows and its
folder; removes version folders no registry row names (a crash between steps 1 and 2); and
records a live row for a pointer the registry does not show as live (pointers written by
earlier code). Version numbers only grow (abandoned numbers are not reused).

Fault injection for the crash tests: with CSCNN_REGISTRY_PAUSE_AT set to one of PAUSE_STEPS the
process stops at that step, writes its pid to the file CSCNN_REGISTRY_PAUSE_READY and waits
forever (a test then kills it with SIGKILL).

On object storage (storage.published_uri on s3a://, e.g. under an S3 storage.root) there is no
rename and no flock, so the same transaction takes another shape:

  1. stage    upload the files straight into v<N>-<D>/, hashing the bytes sent, version.json
              last (a folder without version.json is incomplete; recovery removes it)
  2. pending  as above
  3. table    as above
  4. live     set the registry row's state to "live": this one Delta commit is the pointer (the
              registry table's latest live row is `current`, read from its log without Spark)
  5. copy     write current.json as a copy of that row, for readers without a Delta reader (the
              run report); recovery rewrites it when it is behind

The lock is a lease object, .lock, created with a conditional write (core.object_lock). Delta
commits on S3 are safe from one Spark driver at a time (the stages' shared Spark Connect server);
the lock keeps two publishes or rollbacks from interleaving whichever drivers run them. Readers
(predictor, validate, warm start) verify a local copy of the version (``version_dir``).

Registry table (Paths.registry, Delta): one row per publish or rollback with version, run_date,
action, dir, metrics, gates, input Delta versions, config hash, code version, model version,
published_at, state (pending, live, abandoned; null on rows written before states existed, which
count as live), txn and version_sha256.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
from pyspark.sql import SparkSession

from core import object_lock, storage
from core.cli import CliParser, config_from_args, run_cli, setup_logging
from core.config import PipelineConfig
from core.delta import delete_where, delta_exists, sql_string, update_where
from core.files import locked
from core.paths import Paths, is_local, local_path
from core.spark import get_spark
from core.timing import timed
from serving.lookup import (AD_IDS_FILE, CATEGORIES_FILE, CATEGORY_IDS_FILE, EMBEDDINGS_FILE, IntegrityError,
                            sha256_file)

log = logging.getLogger(__name__)

CURRENT_FILE = "current.json"
VERSION_FILE = "version.json"
LIVE_ENCODER = "lookup/encoder.npz"  # the encoder of the version's run (spark_jobs/build_lookup.py)
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
VERSION_FORMAT = 2  # version.json lists every file's sha256 (1: earlier versions, no list)
_VERSION_DIR = re.compile(r"^v(\d+)-(\d{4}-\d{2}-\d{2})$")
REGISTRY_DDL = ("version int, run_date date, action string, dir string, model_version string, "
                "metrics string, gates string, input_versions string, config_hash string, "
                "code_version string, published_at timestamp, state string, txn string, version_sha256 string")
PUBLISHED_LOOKUP_DDL = ("version int, run_date date, ad_id bigint, category_id int, category_idx int, "
                        "embedding array<float>")
PENDING, LIVE, ABANDONED = "pending", "live", "abandoned"

PAUSE_AT_ENV = "CSCNN_REGISTRY_PAUSE_AT"
PAUSE_READY_ENV = "CSCNN_REGISTRY_PAUSE_READY"
PAUSE_STEPS = ("publish:copy", "publish:staged", "publish:pending", "publish:table", "publish:pointer",
               "rollback:pending", "rollback:pointer")


class PublishError(RuntimeError):
    """Publishing or rolling back is refused (gates not passed, unknown version, ...)."""


# --------------------------------------------------------------------------- files and fsync


def _pause_point(step: str) -> None:
    """Stop here forever when CSCNN_REGISTRY_PAUSE_AT names ``step`` (crash tests; module doc)."""
    if os.environ.get(PAUSE_AT_ENV) != step:
        return
    ready = os.environ.get(PAUSE_READY_ENV)
    log.warning("paused at %s (pid %d) as %s asks; waiting to be killed", step, os.getpid(), PAUSE_AT_ENV)
    if ready:
        Path(ready).write_text(str(os.getpid()))
    while True:
        time.sleep(3600)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durable(src: Path, dst: Path) -> None:
    """Copy a file's bytes and fsync the copy (its folder is fsynced by the caller)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _copy_tree_durable(src: Path, dst: Path) -> None:
    """Copy a folder tree (plain files only: a symlink is refused), fsyncing every file and folder."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        if child.is_symlink():
            raise PublishError(f"refusing to publish the symlink {child}: a version holds plain files only")
        if child.is_dir():
            _copy_tree_durable(child, dst / child.name)
        else:
            _copy_durable(child, dst / child.name)
            _pause_point("publish:copy")
    _fsync_dir(dst)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def registry_lock(cfg: PipelineConfig) -> Iterator[None]:
    """Exclusive lock of the published versions: a flock on a local folder (the kernel releases it
    when the holder dies); on object storage a lease object (core.object_lock)."""
    if on_object_store(cfg):
        with object_lock.held(storage.join(published_uri(cfg), LOCK_FILE)):
            yield
        return
    with locked(published_root(cfg) / LOCK_FILE):
        yield


# --------------------------------------------------------------------------- pointer and folders


def published_uri(cfg: PipelineConfig) -> str:
    """Where the published versions are (storage.published_uri): a local folder or object storage."""
    return Paths.of(cfg).published


def on_object_store(cfg: PipelineConfig) -> bool:
    """Whether the published versions are on object storage (the pointer is then the registry)."""
    return not is_local(published_uri(cfg))


def published_root(cfg: PipelineConfig) -> Path:
    """The local folder of published versions (a local or mounted storage.published_uri only)."""
    uri = published_uri(cfg)
    try:
        return Path(local_path(uri))
    except ValueError:
        raise PublishError(f"storage.published_uri is {uri!r}, on object storage: it has no local folder "
                           "(serving.registry.version_dir gives a verified local copy of a version)") from None


def version_uri(cfg: PipelineConfig, entry: dict[str, Any]) -> str:
    """Where the version of a pointer/registry entry is (its `dir` must be a plain v<N>-<D> name)."""
    name = str(entry.get("dir"))
    if not _VERSION_DIR.match(name):
        raise IntegrityError(f"{CURRENT_FILE}: dir {name!r} is not a version folder name v<N>-<YYYY-MM-DD>")
    return storage.join(published_uri(cfg), name)


def version_dir(cfg: PipelineConfig, entry: dict[str, Any]) -> Path:
    """The version's folder on this machine: itself on a local folder; on object storage a copy
    kept under the scratch folder (core.storage.mirror: files it lacks are downloaded, none is
    trusted: callers check the copy with ``verify_version`` from the registry's checksum down)."""
    uri = version_uri(cfg, entry)
    if is_local(uri):
        return Path(local_path(uri))
    return storage.mirror(uri)


def read_current(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The live version's pointer entry, or None when nothing is published. On object storage the
    registry's live row is the pointer (read from the table's log, without Spark)."""
    if on_object_store(cfg):
        return _pointer(registry_live(_registry_rows(Paths.of(cfg).registry)))
    path = published_root(cfg) / CURRENT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{CURRENT_FILE}: {path} is not valid JSON ({e})") from None


def switch_current(cfg: PipelineConfig, entry: dict[str, Any]) -> None:
    """Point `current` at ``entry`` atomically and durably (temporary file, fsync, os.replace, fsync).
    On object storage current.json is a copy of the registry's live row, for readers without a
    Delta reader (the run report); the registry's commit is what moves the pointer there."""
    if on_object_store(cfg):
        storage.write_json(storage.join(published_uri(cfg), CURRENT_FILE), entry, indent=None)
        return
    root = published_root(cfg)
    if not version_dir(cfg, entry).is_dir():
        raise PublishError(f"cannot point current at {entry['dir']!r}: no such version folder in {root}")
    tmp = root / f"{CURRENT_FILE}.tmp"
    _write_durable(tmp, json.dumps(entry, sort_keys=True).encode())
    os.replace(tmp, root / CURRENT_FILE)
    _fsync_dir(root)


def list_version_dirs(cfg: PipelineConfig) -> list[tuple[int, str, str]]:
    """(version, run date, folder name) of every version folder, oldest first: on a local folder
    each is complete (renamed into place); on object storage one is complete when its version.json
    is there (uploaded last)."""
    if on_object_store(cfg):
        names = storage.children(published_uri(cfg))
    else:
        root = published_root(cfg)
        names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return sorted((int(m.group(1)), m.group(2), name) for name in names if (m := _VERSION_DIR.match(name)))


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
        return importlib.metadata.version("cscnn-pipeline")
    except importlib.metadata.PackageNotFoundError:  # not installed as a package
        return "unknown"


def _file_list(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of every file under ``folder`` except version.json."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != VERSION_FILE:
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def stage_version(cfg: PipelineConfig, run_date: dt.date, sources: dict[str, Path],
                  metadata: dict[str, Any], number: int | None = None,
                  expect: dict[str, str] | None = None) -> dict[str, Any]:
    """Copy ``sources`` (name in the version -> file or folder) into a new immutable version folder.

    Every file and folder is fsynced; version.json lists every file's sha256, and each file named in
    ``expect`` (path in the version -> sha256, e.g. what validation checked) must have that sha256.
    Returns the pointer entry of the new version (not yet live), with the sha256 of its version.json.
    On object storage the files are uploaded straight into v<N>-<D>/ (there is no rename), hashed
    as they are sent, and version.json last: a folder without it is incomplete, and ``recover``
    removes it."""
    if on_object_store(cfg):
        return _stage_on_object_store(cfg, run_date, sources, metadata, number, expect)
    root = published_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    if number is None:
        number = max((v for v, _, _ in list_version_dirs(cfg)), default=0) + 1
    name = f"v{number}-{run_date.isoformat()}"
    staging = root / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    _fsync_dir(root)
    try:
        for rel, src in sources.items():
            if src.is_dir():
                _copy_tree_durable(src, staging / rel)
            else:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                _copy_durable(src, staging / rel)
                _pause_point("publish:copy")
                _fsync_dir((staging / rel).parent)
        files = _file_list(staging)
        _check_expected(files, expect)
        info = {"format": VERSION_FORMAT, "version": number, "run_date": run_date.isoformat(), "dir": name,
                **metadata, "files": files}
        data = json.dumps(info, indent=2, sort_keys=True).encode()
        _write_durable(staging / VERSION_FILE, data)
        _fsync_dir(staging)
        os.rename(staging, root / name)  # fails if the name exists: folders are never overwritten
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    entry = {k: v for k, v in info.items() if k != "files"}
    return {**entry, "version_sha256": _sha256_bytes(data)}


def _check_expected(files: dict[str, dict[str, Any]], expect: dict[str, str] | None) -> None:
    for rel, sha in sorted((expect or {}).items()):
        if files.get(rel, {}).get("sha256") != sha:
            raise PublishError(f"refusing to publish: {rel} changed after validation (sha256 "
                               f"{files.get(rel, {}).get('sha256', 'missing')[:16]}..., validated {sha[:16]}...); "
                               "re-run validate for this date")


def _upload_hashing(src: Path, uri: str) -> dict[str, Any]:
    """Send the file ``src`` to the object ``uri``, hashing the bytes sent; {sha256, bytes}."""
    fs, path = storage.filesystem(uri)
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fin, fs.open_output_stream(path) as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _stage_on_object_store(cfg: PipelineConfig, run_date: dt.date, sources: dict[str, Path],
                           metadata: dict[str, Any], number: int | None,
                           expect: dict[str, str] | None) -> dict[str, Any]:
    """``stage_version`` on object storage (see there)."""
    if number is None:
        number = max((v for v, _, _ in list_version_dirs(cfg)), default=0) + 1
    name = f"v{number}-{run_date.isoformat()}"
    target = storage.join(published_uri(cfg), name)
    if storage.exists(storage.join(target, VERSION_FILE)):
        raise PublishError(f"{target} is a published version already: versions are never overwritten")
    storage.remove_tree(target)  # what an earlier, interrupted upload of this number left
    files: dict[str, dict[str, Any]] = {}
    for rel, src in sources.items():
        members = sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink()) if src.is_dir() else [src]
        for path in members:
            if path.is_symlink():
                raise PublishError(f"refusing to publish the symlink {path}: a version holds plain files only")
            name_in = rel if path == src else f"{rel}/{path.relative_to(src).as_posix()}"
            files[name_in] = _upload_hashing(path, storage.join(target, name_in))
            _pause_point("publish:copy")
    try:
        _check_expected(files, expect)
    except PublishError:
        storage.remove_tree(target)
        raise
    info = {"format": VERSION_FORMAT, "version": number, "run_date": run_date.isoformat(), "dir": name,
            **metadata, "files": dict(sorted(files.items()))}
    data = json.dumps(info, indent=2, sort_keys=True).encode()
    storage.write_bytes(storage.join(target, VERSION_FILE), data)
    entry = {k: v for k, v in info.items() if k != "files"}
    return {**entry, "version_sha256": _sha256_bytes(data)}


# --------------------------------------------------------------------------- the chain of trust


def verify_version(folder: str | os.PathLike, version_sha256: str | None) -> dict[str, Any]:
    """The version.json of a published folder after checking the chain of trust below it.

    ``version_sha256`` (from current.json or the registry) must be the sha256 of version.json;
    every file version.json lists must exist with its size and sha256, and every file in the folder
    must be listed. None marks a legacy pointer: version.json is returned unchecked (the caller
    applies the legacy checks). Raises IntegrityError naming the offending file."""
    folder = Path(folder)
    path = folder / VERSION_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{VERSION_FILE}: missing from {folder}; the folder is not a published version") from None
    try:
        info = json.loads(data)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{VERSION_FILE}: {path} is not valid JSON ({e})") from None
    if version_sha256 is None:
        return info
    if _sha256_bytes(data) != version_sha256:
        raise IntegrityError(f"{VERSION_FILE}: {path} does not match the sha256 its pointer records "
                             f"({version_sha256[:16]}...): the version was modified after publishing; refusing it")
    files = info.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError(f"{VERSION_FILE}: {path} lists no files; refusing the version")
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == VERSION_FILE or path.is_dir() and not path.is_symlink():
            continue
        if rel not in files:
            raise IntegrityError(f"{rel}: present in {folder} but not listed in {VERSION_FILE}; refusing the version")
    for rel, meta in sorted(files.items()):
        path = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise IntegrityError(f"{rel}: not a path inside the version folder ({VERSION_FILE} of {folder})")
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"{rel}: listed in {VERSION_FILE} but missing from {folder} (or not a plain file)")
        if path.stat().st_size != meta.get("bytes") or sha256_file(path) != meta.get("sha256"):
            raise IntegrityError(f"{rel}: checksum mismatch with {VERSION_FILE} in {folder} (expected sha256 "
                                 f"{str(meta.get('sha256'))[:16]}...): the file was modified; refusing to load it")
    return info


def require_listed(info: dict[str, Any], names: list[str], folder: str | os.PathLike) -> None:
    """IntegrityError naming the first of ``names`` (paths inside the version) that version.json does not list."""
    files = info.get("files") or {}
    for name in names:
        if name not in files:
            raise IntegrityError(f"{name}: not listed in {VERSION_FILE} of {folder}; refusing to load it")


def is_legacy(entry: dict[str, Any]) -> bool:
    """A pointer written before version.json listed files (no version_sha256)."""
    return not entry.get("version_sha256")


def legacy_message(entry: dict[str, Any]) -> str:
    return (f"version {entry.get('dir')} was published before published versions carried checksums of every "
            "file; it is checked against its own lookup manifest only and served in fp32 only. Re-publish it: "
            f"python spark_jobs/publish.py --date {entry.get('run_date')} --config FILE (after validate)")


class LiveModel(NamedTuple):
    """The live version's model file and the encoder of its run, with the sha256 each was published with."""

    model: Path
    model_sha256: str
    encoder: Path | None  # lookup/encoder.npz; None for a legacy version, whose files carry no checksums
    encoder_sha256: str | None


def live_model(cfg: PipelineConfig) -> LiveModel | None:
    """The live version's model (and encoder) after verifying its chain; None if nothing is live."""
    current = read_current(cfg)
    if current is None:
        return None
    folder = version_dir(cfg, current)
    info = verify_version(folder, current.get("version_sha256"))
    if is_legacy(current):
        log.warning("%s", legacy_message(current))
        manifest_path = folder / "lookup" / "manifest.json"
        try:
            sha = json.loads(manifest_path.read_text())["model_sha256"]
        except (OSError, ValueError, KeyError) as e:
            raise IntegrityError(f"lookup/manifest.json: {manifest_path} names no model checksum ({e})") from None
        return LiveModel(folder / "model" / "model.pt", sha, None, None)
    require_listed(info, ["model/model.pt"], folder)
    encoder = info["files"].get(LIVE_ENCODER)
    return LiveModel(folder / "model" / "model.pt", info["files"]["model/model.pt"]["sha256"],
                     None if encoder is None else folder / LIVE_ENCODER, None if encoder is None else encoder["sha256"])


# --------------------------------------------------------------------------- registry table


def _registry_row(entry: dict[str, Any], action: str, state: str, txn: str | None) -> tuple:
    return (int(entry["version"]), dt.date.fromisoformat(entry["run_date"]), action, entry["dir"],
            entry.get("model_version"), json.dumps(entry.get("metrics", {}), sort_keys=True),
            json.dumps(entry.get("gates", []), sort_keys=True),
            json.dumps(entry.get("input_versions", {}), sort_keys=True), entry.get("config_hash"),
            entry.get("code_version"), dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), state, txn,
            entry.get("version_sha256"))


def append_registry(spark: SparkSession, cfg: PipelineConfig, entry: dict[str, Any], action: str,
                    state: str = LIVE, txn: str | None = None) -> None:
    """Append one row (publish, rollback or recover) to the registry Delta table (one commit)."""
    (spark.createDataFrame([_registry_row(entry, action, state, txn)], REGISTRY_DDL).write.format("delta")
     .mode("append").option("mergeSchema", "true").save(Paths.of(cfg).registry))


def set_state(spark: SparkSession, cfg: PipelineConfig, txn: str, state: str) -> None:
    """Set the state of transaction ``txn``'s registry row (one Delta commit)."""
    update_where(spark, Paths.of(cfg).registry, {"state": sql_string(state)}, f"txn = {sql_string(txn)}")


def read_registry(spark: SparkSession, cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Registry rows, oldest first ([] when the table does not exist yet); rows written before states
    existed get state "live" and txn None."""
    uri = Paths.of(cfg).registry
    if not delta_exists(spark, uri):
        return []
    return _normalized([r.asDict() for r in spark.read.format("delta").load(uri).orderBy("published_at").collect()])


def _normalized(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for r in rows:
        r.setdefault("txn", None)
        r.setdefault("version_sha256", None)
        r["state"] = r.get("state") or LIVE
    return rows


def _registry_rows(uri: str) -> list[dict[str, Any]]:
    """The registry's rows read from its Delta log's live files with pyarrow (no Spark), oldest
    first; [] when the table does not exist yet."""
    import pyarrow.parquet as pq

    from core.delta_log import live_files

    if not storage.children(storage.join(uri, "_delta_log")):
        return []
    fs, _ = storage.filesystem(uri)  # the files' paths are inside the table's filesystem
    rows: list[dict[str, Any]] = []
    for f in live_files(uri):
        rows += pq.read_table(f.path, filesystem=fs).to_pylist()
    return _normalized(sorted(rows, key=lambda r: r["published_at"]))


def _pointer(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pointer entry (current.json's fields) of a registry row."""
    if row is None:
        return None
    run_date = row["run_date"]
    return {"version": int(row["version"]), "run_date": run_date.isoformat() if hasattr(run_date, "isoformat")
            else str(run_date), "dir": row["dir"], "action": row["action"], "txn": row["txn"],
            "version_sha256": row["version_sha256"], "model_version": row.get("model_version"),
            "metrics": json.loads(row.get("metrics") or "{}"), "gates": json.loads(row.get("gates") or "[]"),
            "input_versions": json.loads(row.get("input_versions") or "{}"), "config_hash": row.get("config_hash"),
            "code_version": row.get("code_version")}


def registry_live(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The registry's live row: the latest row in state live (None when none)."""
    return next((r for r in reversed(rows) if r["state"] == LIVE), None)


def agrees(current: dict[str, Any] | None, rows: list[dict[str, Any]]) -> bool:
    """Whether `current` and the registry name the same live version (and transaction, where recorded)
    and no transaction is pending."""
    live = registry_live(rows)
    if any(r["state"] == PENDING for r in rows):
        return False
    if current is None or live is None:
        return current is None and live is None
    return live["version"] == current["version"] and (not current.get("txn") or live["txn"] == current["txn"])


# --------------------------------------------------------------------------- the published lookup table


def _published_table_has_versions(spark: SparkSession, uri: str) -> bool | None:
    """None: no table; True: the published table (version column); False: a table written by earlier code."""
    if not delta_exists(spark, uri):
        return None
    return "version" in spark.read.format("delta").load(uri).columns


def write_published_lookup(spark: SparkSession, cfg: PipelineConfig, entry: dict[str, Any]) -> None:
    """The version's rows (from its published, checksummed serving files) into the published lookup
    table, partition version = N (replaced: idempotent). A table of the earlier layout (rows written
    before the gates, no version column) is replaced whole."""
    # The lookup files only (on object storage a temporary download, not a kept copy of the version).
    names = (AD_IDS_FILE, EMBEDDINGS_FILE, CATEGORIES_FILE, CATEGORY_IDS_FILE)
    with storage.reading_files(storage.join(version_uri(cfg, entry), "lookup"), names) as folder:
        ad_ids = np.load(folder / AD_IDS_FILE, allow_pickle=False)  # (n,)
        stored = np.asarray(np.load(folder / EMBEDDINGS_FILE, allow_pickle=False), dtype=np.float32)  # (n, dims)
        cat_idx = np.load(folder / CATEGORIES_FILE, allow_pickle=False)  # (n,)
        raw_path = folder / CATEGORY_IDS_FILE
        raw = np.load(raw_path, allow_pickle=False) if raw_path.is_file() else np.full(len(ad_ids), -1)  # (n,)
    version, run_date = int(entry["version"]), dt.date.fromisoformat(entry["run_date"])
    rows = [(version, run_date, int(a), int(c) if c >= 0 else None, int(ci), row)
            for a, c, ci, row in zip(ad_ids.tolist(), raw.tolist(), cat_idx.tolist(), stored.tolist())]
    uri = Paths.of(cfg).lookup_table
    writer = spark.createDataFrame(rows, PUBLISHED_LOOKUP_DDL).write.format("delta").partitionBy("version")
    if _published_table_has_versions(spark, uri) is False:
        log.warning("%s holds rows written before the gates (earlier layout); replacing it with published rows", uri)
        writer.mode("overwrite").option("overwriteSchema", "true").option("partitionOverwriteMode", "static").save(uri)
    else:
        writer.mode("overwrite").option("replaceWhere", f"version = {version}").save(uri)


def delete_published_lookup(spark: SparkSession, cfg: PipelineConfig, version: int) -> None:
    """Remove an abandoned version's rows from the published lookup table (no-op when it has none)."""
    uri = Paths.of(cfg).lookup_table
    if _published_table_has_versions(spark, uri):
        delete_where(spark, uri, f"version = {int(version)}")


def published_lookup(spark: SparkSession, cfg: PipelineConfig):
    """The published lookup table's rows of the live version (what a consumer reads), or None."""
    current = read_current(cfg)
    uri = Paths.of(cfg).lookup_table
    if current is None or not _published_table_has_versions(spark, uri):
        return None
    return spark.read.format("delta").load(uri).where(f"version = {int(current['version'])}")


# --------------------------------------------------------------------------- transactions


def _abandon(spark: SparkSession, cfg: PipelineConfig, row: dict[str, Any]) -> None:
    """Undo a pending transaction that never moved the pointer."""
    if row["action"] == "publish":
        delete_published_lookup(spark, cfg, row["version"])
    set_state(spark, cfg, row["txn"], ABANDONED)
    if row["action"] == "publish":
        _remove_version_folder(cfg, row["dir"])


def _remove_version_folder(cfg: PipelineConfig, name: str) -> None:
    if on_object_store(cfg):
        storage.remove_tree(storage.join(published_uri(cfg), name))
    else:
        shutil.rmtree(published_root(cfg) / name, ignore_errors=True)


def recover(spark: SparkSession, cfg: PipelineConfig) -> dict[str, list]:
    """Make the registry agree with `current` after a crash (see the module docstring); call under
    ``registry_lock``. Returns what was done."""
    done: dict[str, list] = {"removed_staging": [], "rolled_forward": [], "abandoned": [],
                             "removed_orphans": [], "recorded": []}
    remote = on_object_store(cfg)
    root = None if remote else published_root(cfg)
    if root is not None:
        if not root.is_dir():
            return done
        for p in sorted(root.glob(f"{STAGING_PREFIX}*")):
            shutil.rmtree(p, ignore_errors=True)
            done["removed_staging"].append(p.name)
        (root / f"{CURRENT_FILE}.tmp").unlink(missing_ok=True)
    current = read_current(cfg)
    rows = read_registry(spark, cfg)
    for row in [r for r in rows if r["state"] == PENDING]:
        if current is not None and current.get("txn") == row["txn"]:
            set_state(spark, cfg, row["txn"], LIVE)
            done["rolled_forward"].append(row["dir"])
        else:
            _abandon(spark, cfg, row)
            done["abandoned"].append(row["dir"])
    rows = read_registry(spark, cfg)
    named = {r["dir"] for r in rows if r["state"] != ABANDONED} | ({current["dir"]} if current else set())
    # A folder staged but never recorded (a crash between steps 1 and 2) has the highest number:
    # folders numbered at or below a recorded version are kept even when no row names them.
    recorded = max([int(r["version"]) for r in rows] + ([int(current["version"])] if current else []), default=0)
    for number, _, name in list_version_dirs(cfg):
        if name not in named and number > recorded:
            _remove_version_folder(cfg, name)
            done["removed_orphans"].append(name)
    if current is not None and not agrees(current, rows):
        append_registry(spark, cfg, current, "recover", LIVE, current.get("txn"))
        done["recorded"].append(current["dir"])
    if root is not None:
        _fsync_dir(root)
    elif current is not None and (_current_copy(cfg) or {}).get("txn") != current["txn"]:
        switch_current(cfg, current)  # the copy for readers without Delta, behind after a crash
    if any(done.values()):
        log.warning("registry recovery: %s", {k: v for k, v in done.items() if v})
    return done


def _current_copy(cfg: PipelineConfig) -> dict[str, Any] | None:
    """current.json on object storage (a copy of the registry's live row), None when absent or unreadable."""
    try:
        return storage.read_json(storage.join(published_uri(cfg), CURRENT_FILE))
    except (FileNotFoundError, ValueError):
        return None


def _next_number(cfg: PipelineConfig, rows: list[dict[str, Any]]) -> int:
    return max([v for v, _, _ in list_version_dirs(cfg)] + [int(r["version"]) for r in rows], default=0) + 1


@timed("writes")
def _commit(spark: SparkSession, cfg: PipelineConfig, entry: dict[str, Any], action: str,
            before_pointer: Any = None) -> dict[str, Any]:
    """Steps 2, (3,) 4 and 5 of a transaction for a complete version folder; returns the live pointer."""
    txn = uuid.uuid4().hex
    pointer = {**entry, "txn": txn, "action": action}
    append_registry(spark, cfg, pointer, action, PENDING, txn)
    _pause_point(f"{action}:pending")
    remote = on_object_store(cfg)
    try:
        if before_pointer is not None:
            before_pointer(pointer)
            _pause_point(f"{action}:table")
        if remote:
            set_state(spark, cfg, txn, LIVE)  # the pointer on object storage: one Delta commit
        else:
            switch_current(cfg, pointer)
    except BaseException:
        # Undo unless the pointer did move (then the next start rolls the transaction forward);
        # if the undo fails too, recovery on the next start redoes it.
        with contextlib.suppress(Exception):
            moved = (read_current(cfg) or {}).get("txn") == txn
            if not moved:
                _abandon(spark, cfg, pointer)
        raise
    _pause_point(f"{action}:pointer")
    if remote:
        switch_current(cfg, pointer)
    else:
        set_state(spark, cfg, txn, LIVE)
    log.info("%s: v%s (%s) is live", action, entry["version"], entry["run_date"])
    return pointer


def publish_version(spark: SparkSession, cfg: PipelineConfig, run_date: dt.date, sources: dict[str, Path],
                    metadata: dict[str, Any], expect: dict[str, str] | None = None) -> dict[str, Any]:
    """Publish ``sources`` as a new version and make it live (the five steps of the module docstring);
    ``expect``: see ``stage_version``."""
    with registry_lock(cfg):
        recover(spark, cfg)
        number = _next_number(cfg, read_registry(spark, cfg))
        entry = stage_version(cfg, run_date, sources, metadata, number, expect)
        _pause_point("publish:staged")
        return _commit(spark, cfg, entry, "publish", lambda e: write_published_lookup(spark, cfg, e))


def rollback(spark: SparkSession, cfg: PipelineConfig, to_version: int) -> dict[str, Any]:
    """Point `current` at an earlier published version (verified first) and record the rollback."""
    with registry_lock(cfg):
        recover(spark, cfg)
        rows = read_registry(spark, cfg)
        published = {int(r["version"]): r for r in rows if r["state"] == LIVE}  # the latest live row of each
        dirs = {v: name for v, _, name in list_version_dirs(cfg)}
        if to_version not in dirs or to_version not in published:
            raise PublishError(f"no published version {to_version} in {published_uri(cfg)}; "
                               f"available: {sorted(set(dirs) & set(published)) or 'none'}")
        current = read_current(cfg)
        folder = version_dir(cfg, {"dir": dirs[to_version]})
        sha = published[to_version].get("version_sha256")
        try:
            info = verify_version(folder, sha)
        except IntegrityError as e:
            raise PublishError(f"refusing to roll back to version {to_version}: {e}") from None
        entry = {k: v for k, v in info.items() if k != "files"}
        if sha:
            entry["version_sha256"] = sha
        else:
            log.warning("%s", legacy_message(entry))
        if current is not None and current["version"] == to_version:
            log.info("version %d is already live; recording nothing", to_version)
            return current
        return _commit(spark, cfg, entry, "rollback")


def doctor(spark: SparkSession, cfg: PipelineConfig) -> dict[str, Any]:
    """Recover, then check that `current` and the registry agree and that the live version verifies."""
    with registry_lock(cfg):
        done = recover(spark, cfg)
        current = read_current(cfg)
        live = registry_live(read_registry(spark, cfg))
        problems, notes = [], []
        if current is None and live is not None:
            problems.append(f"{CURRENT_FILE} is missing while the registry records {live['dir']} as live; restore "
                            f"it with: python -m serving.registry rollback --to-version {live['version']}")
        if current is not None:
            try:
                verify_version(version_dir(cfg, current), current.get("version_sha256"))
                if is_legacy(current):
                    notes.append(legacy_message(current))
            except IntegrityError as e:
                problems.append(f"the live version does not verify: {e}")
    return {**done, "live": None if current is None else current["dir"], "problems": problems, "notes": notes}


# --------------------------------------------------------------------------- command line


def _config_options() -> argparse.ArgumentParser:
    """--config / --config-json / --set / --debug after the command, as every stage takes them
    (core.cli.config_from_args reads them; each subcommand's parser adds --debug)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--config", help="config file (.toml or .json)")
    ap.add_argument("--config-json", help="the whole config as JSON (overrides --config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, e.g. storage.root=/data (repeatable)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """`list`, `rollback --to-version N` and `doctor` (see module docstring)."""
    setup_logging()
    ap = CliParser(description="Published versions of the CTR model + lookup table.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=CliParser)
    options = _config_options()
    sub.add_parser("list", parents=[options], help="published versions, the live one marked with *")
    rb = sub.add_parser("rollback", parents=[options], help="make an earlier published version live")
    rb.add_argument("--to-version", type=int, required=True, help="version number N of a v<N>-<date> folder")
    sub.add_parser("doctor", parents=[options],
                   help="reconcile current.json and the registry after a crash, remove abandoned staging folders")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)  # a bad config: one line and exit code 2 (core.cli.run_cli)
    if args.command == "list":
        current = read_current(cfg)
        for number, day, name in list_version_dirs(cfg):
            mark = "*" if current and current["version"] == number else " "
            try:
                info = storage.read_json(storage.join(published_uri(cfg), name, VERSION_FILE))
            except FileNotFoundError:  # an upload to object storage that never finished
                print(f"  v{number}  run_date {day}  (incomplete: no {VERSION_FILE}; `doctor` removes it)")
                continue
            legacy = "" if "files" in info else "  (legacy: no file checksums)"
            print(f"{mark} v{number}  run_date {day}  auc {info.get('metrics', {}).get('auc')}  "
                  f"model {info.get('model_version')}  published {info.get('published_at')}{legacy}")
        return 0
    spark = get_spark(cfg.spark)
    if args.command == "doctor":
        report = doctor(spark, cfg)
        print(json.dumps(report, indent=2))
        for note in report["notes"]:
            print(f"note: {note}", file=sys.stderr)
        for problem in report["problems"]:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if report["problems"] else 0
    try:
        entry = rollback(spark, cfg, args.to_version)
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"live": entry["dir"], "version": entry["version"], "run_date": entry["run_date"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
