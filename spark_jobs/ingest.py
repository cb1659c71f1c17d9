"""Ingest: landing days -> bronze Delta tables, contract violations -> quarantine.

    python spark_jobs/ingest.py --date 2026-02-02 [--end-date 2026-02-08] [--config FILE] [--set k=v]

Bronze tables (Paths.bronze_*):
  impressions  contract IMPRESSION_FIELDS + dt, partitioned by dt (replaceWhere on the days ingested)
  ads          contract AD_FIELDS + dt: each day's catalog snapshot, partitioned by dt
  images       IMAGE_FIELDS + image_uri + first_seen_dt, one row per ad (MERGE on ad_id)
Quarantine (Paths.quarantine): dt, source, reason, key, record (the raw row as JSON),
partitioned by dt. Ingest runs (Paths.ingest_runs): one row per dt, the record `run` returns.

`run` ingests one day (the DAG's daily task); `run_range` ingests a date range with one Delta
commit per table (a history backfill), and gives exactly the tables and per-day records that
running `run` day after day gives, apart from the Delta versions and seconds the records name.
Every day is judged on its own: duplicates, the catalog an impression is checked against and
"outside the day" all hold per dt. Images are decode-checked once per URI across the range.

Idempotent per date: re-ingesting D replaces D's rows, never duplicates them. Each row that
breaks the contract lands in quarantine with exactly one reason (the first that applies, in the
order of IMPRESSION_RULES and AD_RULES), so landing rows = bronze rows + quarantined rows, per
table and day; the job checks that equation and fails if it does not hold. Delta's atomic
commits mean a crash mid-write leaves every table at its previous version.

pandas (~1 s of imports) is imported only where images are decode-checked, in Spark's Python
worker, so that a bad argument is answered without it (tests/test_cli_errors.py).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import json
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

from PIL import Image
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from core import contract, storage
from core.cli import (config_from_args, date_arg, parse_date, run_cli, setup_logging, stage_parser,
                      timing_record_path)
from core.config import PipelineConfig
from core.delta import delta_exists, latest_version, merge_into, replace_where
from core.exit_codes import BAD_DATA, BadDataError
from core.paths import Paths, is_local, local_path
from core.spark import get_spark
from core.timing import stage_timing, timed

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import Column, SparkSession

log = logging.getLogger("ingest")

IMPRESSION_RULES = ("bad_type", "null_required", "bad_label", "bad_time_fields", "ts_outside_day", "unknown_ad",
                    "ad_of_bad_catalog_row", "duplicate_id")
AD_RULES = ("bad_type", "null_required", "duplicate_id", "negative_price", "review_count_negative", "image_uri_escapes",
            "image_missing", "image_corrupt")


class LandingError(RuntimeError):
    """The landing drop for a day is absent, incomplete or unreadable."""


class LandingContractError(LandingError, BadDataError):
    """The landing files break the contract as a whole (a missing required column, an unconvertible type)."""


# --------------------------------------------------------------------------- pure transforms


def with_contract_columns(df: "DataFrame", fields: tuple[contract.Field, ...]) -> tuple["DataFrame", dict]:
    """Project `df` onto the contract: cast each field, add missing optional ones as null.

    Returns the projected frame and the schema drift found ({'extra': [...], 'missing': [...]}).
    A value that does not convert to its contract type (say "north" in an int column) becomes
    null, and its row gets `_bad_type` (the offending field names) and `_raw_record` (the raw
    landing row as JSON) so that ingest quarantines it with reason `bad_type`; both columns are
    null on every other row. A missing required field is an error: nothing about those rows
    could be trusted.
    """
    present = set(df.columns)
    wanted = contract.names(fields)
    missing = [f.name for f in fields if f.name not in present]
    missing_required = [f.name for f in fields if f.required and f.name not in present]
    if missing_required:
        raise LandingContractError(f"landing file lacks required column(s) {missing_required}; "
                                   f"the contract (docs/CONTRACT.md) requires {contract.required(fields)}")
    extra = sorted(present - set(wanted))
    landed = dict(df.dtypes)
    # Only columns landed with another type than the contract's can hold unconvertible values.
    retyped = [f for f in fields if f.name in present and landed[f.name] != f.type]
    cols = [(F.col(f.name).try_cast(f.type) if f in retyped else
             F.col(f.name).cast(f.type) if f.name in present else F.lit(None).cast(f.type)).alias(f.name)
            for f in fields]
    if retyped:
        failed = [F.when(F.col(f.name).isNotNull() & F.col(f.name).try_cast(f.type).isNull(), F.lit(f.name))
                  for f in retyped]
        bad_type = F.concat_ws(",", *failed)
        cols += [F.when(bad_type != "", bad_type).alias("_bad_type"),
                 F.when(bad_type != "", F.to_json(F.struct(*[F.col(c) for c in df.columns]))).alias("_raw_record")]
    else:
        cols += [F.lit(None).cast("string").alias("_bad_type"), F.lit(None).cast("string").alias("_raw_record")]
    try:
        return df.select(*cols), {"extra": extra, "missing": missing}
    except AnalysisException as err:  # a type no value of which converts (an array landed as an int...)
        shown = ", ".join(f"{f.name} is {landed[f.name]}, the contract says {f.type}" for f in retyped)
        raise LandingContractError(f"landing file has columns of an unconvertible type ({shown}): "
                                   f"{str(err).splitlines()[0]}") from None


def _bad_type(df: "DataFrame") -> "Column":
    """True on rows with_contract_columns flagged as holding an unconvertible value."""
    return F.col("_bad_type").isNotNull() if "_bad_type" in df.columns else F.lit(False)


def _first_reason(checks: list[tuple[str, "Column"]]) -> "Column":
    """A column holding the first rule name whose condition is true, else null."""
    expr = F.lit(None).cast("string")
    for name, cond in reversed(checks):
        expr = F.when(cond, F.lit(name)).otherwise(expr)
    return expr


def _any_null(names: list[str]) -> "Column":
    cond = F.lit(False)
    for n in names:
        cond = cond | F.col(n).isNull()
    return cond


def with_uri_escape_flag(ads_df: "DataFrame") -> "DataFrame":
    """Flag image URIs that could leave the landing area: schemes, absolute paths, '..' parts."""
    uri = F.col("image_uri")
    escapes = (uri.rlike(r"^[A-Za-z][A-Za-z0-9+.-]*:") | uri.startswith("/") | uri.startswith("\\")
               | uri.rlike(r"(^|[/\\])\.\.([/\\]|$)") | uri.contains("\x00"))
    return ads_df.withColumn("_uri_escapes", F.coalesce(escapes, F.lit(False)))


def with_ad_reason(ads_df: "DataFrame", image_status_df: "DataFrame") -> "DataFrame":
    """Add `_reason` to catalog rows of one or more days (column `dt`, duplicates judged per day);
    `image_status_df` has (image_uri, _image_ok, _image_exists, _image_escapes)."""
    w = Window.partitionBy("dt", "ad_id").orderBy(F.col("image_uri").asc_nulls_last(), F.col("category_id"))
    df = (ads_df.transform(with_uri_escape_flag)
          .join(image_status_df, on="image_uri", how="left")
          .withColumn("_dup_rank", F.when(F.col("ad_id").isNull(), F.lit(1)).otherwise(F.row_number().over(w))))
    checks = [
        ("bad_type", _bad_type(df)),
        ("null_required", _any_null(contract.required(contract.AD_FIELDS))),
        ("duplicate_id", F.col("_dup_rank") > 1),
        ("negative_price", F.coalesce(F.col("price") < 0, F.lit(False))),
        ("review_count_negative", F.coalesce(F.col("review_count") < 0, F.lit(False))),
        ("image_uri_escapes", F.col("_uri_escapes") | F.coalesce(F.col("_image_escapes"), F.lit(False))),
        ("image_missing", ~F.coalesce(F.col("_image_exists"), F.lit(False))),
        ("image_corrupt", ~F.coalesce(F.col("_image_ok"), F.lit(False))),
    ]
    return df.withColumn("_reason", _first_reason(checks)).drop("_uri_escapes", "_dup_rank")


def with_impression_reason(imp_df: "DataFrame", ads_reason_df: "DataFrame") -> "DataFrame":
    """Add `_reason` to impression rows, each judged against its own day's (`dt`) catalog and reasons."""
    catalog = (ads_reason_df.where(F.col("ad_id").isNotNull())
               .groupBy("dt", "ad_id")
               .agg(F.max(F.when(F.col("_reason").isNull(), 1).otherwise(0)).alias("_ad_ok"))
               .withColumn("_in_catalog", F.lit(True)))
    # Exact duplicates are kept once: the first by event time, then by the whole row's hash.
    w = Window.partitionBy("dt", "impression_id").orderBy(F.col("event_ts").asc_nulls_last(),
                                                    F.xxhash64(*contract.names(contract.IMPRESSION_FIELDS)))
    df = (imp_df.join(F.broadcast(catalog), on=["dt", "ad_id"], how="left")
          .withColumn("_dup_rank", F.when(F.col("impression_id").isNull(), F.lit(1))
                      .otherwise(F.row_number().over(w))))
    checks = [
        ("bad_type", _bad_type(df)),
        ("null_required", _any_null(contract.required(contract.IMPRESSION_FIELDS))),
        ("bad_label", ~F.col("click").isin(0, 1)),
        ("bad_time_fields", ~F.col("weekday").between(0, 6) | ~F.col("hour").between(0, 23)),
        ("ts_outside_day", F.to_date(F.col("event_ts")) != F.col("dt")),
        ("unknown_ad", F.col("_in_catalog").isNull()),
        ("ad_of_bad_catalog_row", F.col("_ad_ok") == 0),
        ("duplicate_id", F.col("_dup_rank") > 1),
    ]
    return (df.withColumn("_reason", _first_reason(checks))
            .drop("_in_catalog", "_ad_ok", "_dup_rank"))


def to_quarantine(df: "DataFrame", source: str, key: str, fields: tuple[contract.Field, ...]) -> "DataFrame":
    """Rows with a `_reason` as quarantine records (dt, source, reason, key, record JSON).

    A `bad_type` row keeps its raw landing row (`_raw_record`), the unconvertible value included.
    """
    contract_json = F.to_json(F.struct(*[F.col(n) for n in contract.names(fields)]))
    return (df.where(F.col("_reason").isNotNull())
            .select(F.col("dt"), F.lit(source).alias("source"), F.col("_reason").alias("reason"),
                    F.col(key).cast("string").alias("key"),
                    (F.coalesce(F.col("_raw_record"), contract_json) if "_raw_record" in df.columns
                     else contract_json).alias("record")))


# --------------------------------------------------------------------------- images


def _image_uri_abs(landing: str, rel: str) -> str:
    return f"{landing.rstrip('/')}/{rel}"


IMAGE_STATUS_SCHEMA = ("image_uri string, _image_exists boolean, _image_escapes boolean, _image_ok boolean, "
                       "image_bytes binary, width int, height int, sha256 string")


class _PathRefused(Exception):
    """An image path that is not plainly below the landing root: a symlink (or '..') on it."""


def read_inside(root_fd: int, rel: str) -> bytes | None:
    """The bytes of the regular file `rel` below the open folder `root_fd`, following no symlink.

    None when it is absent (or a part of its path is not a folder, or it is not a regular file);
    _PathRefused when any part of the path is a symlink, wherever it points, or '..': a target is
    never opened, so what a sender links to (an image, any other file, nothing) cannot change
    the outcome. O_NOFOLLOW on every part keeps a symlink swapped in meanwhile out as well.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise _PathRefused(rel)  # not below the root; the URI check quarantines these first
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                raise _PathRefused(rel)
            if not (stat.S_ISREG(st.st_mode) if last else stat.S_ISDIR(st.st_mode)):
                return None
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ELOOP:  # became a symlink since the stat
                    raise _PathRefused(rel) from None
                if err.errno in (errno.ENOENT, errno.ENOTDIR):
                    return None
                raise
            os.close(fd)
            fd = child
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _decode_check(content: bytes) -> tuple[bool, int | None, int | None]:
    """(whether `content` decodes as an image, width, height)."""
    try:
        with Image.open(io.BytesIO(content)) as im:
            im.load()  # forces a full decode: verify() alone misses truncated data
            w, h = im.size
        return True, w, h
    except Exception:  # any decoder error means the file is not a usable image
        return False, None, None


def _image_status_frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd  # in the Spark Python worker that decodes images (see the module docstring)

    cols = [c.split(" ")[0] for c in IMAGE_STATUS_SCHEMA.split(", ")]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("width", "height"):
        df[c] = pd.array(df[c], dtype="Int32")
    return df


def read_local_images(spark: "SparkSession", landing_dir: str, rel_uris: list[str]) -> "DataFrame":
    """Read and decode-check images of a local landing folder on the executors (see read_inside).

    A path with a symlink on it is `_image_escapes` (quarantined as image_uri_escapes), never read.
    """
    def read_batches(batches):
        root_fd = os.open(landing_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for pdf in batches:
                rows = []
                for rel in pdf["image_uri"]:
                    row = dict(image_uri=rel, _image_exists=False, _image_escapes=False, _image_ok=False,
                               image_bytes=None, width=None, height=None, sha256=None)
                    try:
                        content = read_inside(root_fd, rel)
                    except _PathRefused:
                        row["_image_escapes"] = True
                        content = None
                    if content is not None:
                        ok, w, h = _decode_check(content)
                        row.update(_image_exists=True, _image_ok=ok, image_bytes=content, width=w, height=h,
                                   sha256=hashlib.sha256(content).hexdigest())
                    rows.append(row)
                yield _image_status_frame(rows)
        finally:
            os.close(root_fd)

    n_parts = max(1, min(len(rel_uris) // 64 + 1, int(spark.conf.get("spark.sql.shuffle.partitions"))))
    uris_df = spark.createDataFrame([(u,) for u in rel_uris], "image_uri string").repartition(n_parts)
    return uris_df.mapInPandas(read_batches, IMAGE_STATUS_SCHEMA)


def read_new_images(spark: "SparkSession", landing: str, candidates_df: "DataFrame") -> "DataFrame":
    """Decode-check the images of candidate catalog rows (ad_id, image_uri; URIs already safe).

    Returns (image_uri, _image_exists, _image_escapes, _image_ok, image_bytes, width, height, sha256).
    A local landing area is read with read_local_images, so no symlink below it is followed;
    other file systems (s3a://) have no symlinks and are read with Spark's binaryFile source.
    """
    rel_uris = [r.image_uri for r in candidates_df.select("image_uri").distinct().collect()]
    if is_local(landing):
        return read_local_images(spark, local_path(landing), rel_uris)
    abs_of = {_image_uri_abs(landing, u): u for u in rel_uris}
    present = storage.existing(list(abs_of))  # from this process: a Connect client has no Hadoop FileSystem
    missing_rows = [(abs_of[a], False, False, False, None, None, None, None) for a in abs_of if a not in present]
    missing_df = spark.createDataFrame(missing_rows, IMAGE_STATUS_SCHEMA)
    if not present:
        return missing_df

    def decode(batches):
        for pdf in batches:
            rows = []
            for path, content in zip(pdf["path"], pdf["content"]):
                ok, w, h = _decode_check(content)
                rows.append(dict(image_uri=path, _image_exists=True, _image_escapes=False, _image_ok=ok,
                                 image_bytes=content, width=w, height=h, sha256=hashlib.sha256(content).hexdigest()))
            yield _image_status_frame(rows)

    files_df = spark.read.format("binaryFile").load(sorted(present)).select("path", "content")
    decoded_df = files_df.mapInPandas(decode, IMAGE_STATUS_SCHEMA)
    # binaryFile reports file: URIs; map them back to the catalog's relative URIs.
    norm = {}
    for a, rel in abs_of.items():
        norm[a] = rel
        norm["file:" + a] = rel
        norm["file://" + a] = rel
    map_df = spark.createDataFrame(list(norm.items()), "path string, rel_uri string")
    found_df = (decoded_df.join(F.broadcast(map_df), decoded_df.image_uri == map_df.path, how="inner")
                .drop("image_uri", "path").withColumnRenamed("rel_uri", "image_uri"))
    return found_df.select(*[c.split(" ")[0] for c in IMAGE_STATUS_SCHEMA.split(", ")]).unionByName(missing_df)


# --------------------------------------------------------------------------- I/O


def _days_predicate(days: list[dt.date]) -> str:
    """The replaceWhere predicate selecting exactly `days` (consecutive dates, in order)."""
    if len(days) == 1:
        return f"dt = '{days[0].isoformat()}'"
    return f"dt >= '{days[0].isoformat()}' AND dt <= '{days[-1].isoformat()}'"


def _replace_partitions(df: "DataFrame", uri: str, days: list[dt.date]) -> None:
    """Overwrite exactly the rows of `days` in one commit (creating the table on first write)."""
    replace_where(df, uri, ["dt"], _days_predicate(days))


def _require_complete(spark: "SparkSession", paths: Paths, days: list[dt.date]) -> None:
    """Fail, naming the days, unless every day's landing drop carries its _SUCCESS marker."""
    markers = {day: paths.landing_success(day) for day in days}
    present = storage.existing(list(markers.values()))
    missing = [day for day, marker in markers.items() if marker not in present]
    if not missing:
        return
    first = missing[0]
    also = f" (also incomplete: {', '.join(map(str, missing[1:]))})" if len(missing) > 1 else ""
    raise LandingError(f"landing drop for {first} is not complete: {markers[first]} is missing{also} "
                       f"(generate it with `python -m simworld --start {first} --end {missing[-1]}` "
                       "or wait for upstream)")


def read_landing_days(spark: "SparkSession", paths: Paths,
                      days: list[dt.date]) -> tuple["DataFrame", "DataFrame", dict[dt.date, dict]]:
    """Every day's drop projected onto the contract with its `dt`: (impressions_df, ads_df, drift).

    drift[day] = {"impressions": {"extra": [...], "missing": [...]}, "ads": {...}}, per day because
    each day's files may drift differently. All markers are checked before any file is read.
    """
    _require_complete(spark, paths, days)
    parts: dict[str, list[DataFrame]] = {"impressions": [], "ads": []}
    drift: dict[dt.date, dict] = {}
    for day in days:
        drift[day] = {}
        for name, uri, fields in (("impressions", paths.landing_impressions(day), contract.IMPRESSION_FIELDS),
                                  ("ads", paths.landing_ads(day), contract.AD_FIELDS)):
            try:
                df, found = with_contract_columns(spark.read.parquet(uri), fields)
            except LandingError as err:
                raise LandingError(f"{uri}: {err}") from None
            if found["extra"] or found["missing"]:
                log.warning("%s schema drift on %s: extra columns %s (not kept in bronze), missing optional %s "
                            "(null in bronze)", name, day, found["extra"], found["missing"])
            parts[name].append(df.withColumn("dt", F.lit(day)))
            drift[day][name] = found
    return reduce(DataFrame.unionByName, parts["impressions"]), reduce(DataFrame.unionByName, parts["ads"]), drift


@dataclass
class _Batch:
    """Consecutive landing days judged together; the frames are cached until the batch is written."""

    days: list[dt.date]
    drift: dict[dt.date, dict]
    ads_df: "DataFrame"
    new_images_df: "DataFrame"  # decode results of the URIs not in bronze images before the batch
    ads_reason_df: "DataFrame"
    imp_reason_df: "DataFrame"
    known_ads_df: "DataFrame | None"  # ad_id of bronze images before the batch (None: no table yet)
    started: float

    def release(self) -> None:
        for df in (self.ads_df, self.new_images_df, self.ads_reason_df, self.imp_reason_df):
            df.unpersist()


def _prepare(spark: "SparkSession", paths: Paths, days: list[dt.date]) -> _Batch:
    """Read the days' drops and give every row its reason (null: it goes to bronze)."""
    started = time.time()
    imp_df, ads_df, drift = read_landing_days(spark, paths, days)

    # Images: decode-check only those not already in bronze with the same URI, each URI once.
    ads_df = ads_df.cache()
    safe_df = ads_df.transform(with_uri_escape_flag).where(~F.col("_uri_escapes") & F.col("image_uri").isNotNull())
    known_df = known_ads_df = None
    if delta_exists(spark, paths.bronze_images):
        images_df = spark.read.format("delta").load(paths.bronze_images)
        known_df, known_ads_df = images_df.select("image_uri"), images_df.select("ad_id")
        candidates_df = safe_df.join(known_df, on="image_uri", how="left_anti")
    else:
        candidates_df = safe_df
    new_images_df = read_new_images(spark, paths.landing, candidates_df.select("ad_id", "image_uri")).cache()
    status_df = new_images_df.select("image_uri", "_image_exists", "_image_ok", "_image_escapes")
    if known_df is not None:
        status_df = status_df.unionByName(known_df.select("image_uri", F.lit(True).alias("_image_exists"),
                                                          F.lit(True).alias("_image_ok"),
                                                          F.lit(False).alias("_image_escapes")).distinct())
    ads_reason_df = with_ad_reason(ads_df, status_df).cache()
    imp_reason_df = with_impression_reason(imp_df, ads_reason_df).cache()
    return _Batch(days, drift, ads_df, new_images_df, ads_reason_df, imp_reason_df, known_ads_df, started)


def _image_conflicts(batch: _Batch) -> list[str]:
    """Why merging a multi-day batch's new images at once could differ from merging them day by day.

    At once, a URI counts as known when bronze images held it before the batch, and each new
    image is inserted once, first seen on the first day its ad was accepted with it. Day by day
    gives the same unless an ad is accepted with several new URIs (its row would be updated and
    the old URI forgotten), an ad already in bronze images gets a new URI, or a new URI belongs to
    several ads (a later day would find it known). Returns up to three examples; empty: no conflict.
    """
    accepted_new_df = (batch.ads_reason_df.where(F.col("_reason").isNull()).select("ad_id", "image_uri")
                       .join(batch.new_images_df.select("image_uri"), on="image_uri", how="left_semi"))
    checks = [
        (accepted_new_df.groupBy("ad_id").agg(F.countDistinct("image_uri").alias("n")).where(F.col("n") > 1)
         .select(F.format_string("ad %d is accepted with %d new image URIs", "ad_id", "n").alias("why"))),
        (accepted_new_df.groupBy("image_uri").agg(F.countDistinct("ad_id").alias("n")).where(F.col("n") > 1)
         .select(F.format_string("new image URI %s belongs to %d ads", "image_uri", "n").alias("why"))),
    ]
    if batch.known_ads_df is not None:
        checks.append(accepted_new_df.join(batch.known_ads_df, on="ad_id", how="left_semi")
                      .select(F.format_string("ad %d, already in bronze images, gets the new image URI %s",
                                              "ad_id", "image_uri").alias("why")))
    return [r.why for r in reduce(DataFrame.unionByName, checks).limit(3).collect()]


def _counts_by_source_day(frames: dict[str, "DataFrame"], by_reason: bool = False) -> list[Any]:
    """Rows (source, dt[, _reason], count) of the frames {source: frame with dt[, _reason]}, in one job."""
    keys = ["dt", "_reason"] if by_reason else ["dt"]
    tagged = [df.select(F.lit(source).alias("source"), *keys) for source, df in frames.items()]
    return reduce(DataFrame.unionByName, tagged).groupBy("source", *keys).count().collect()


def _commit(spark: "SparkSession", paths: Paths, batch: _Batch) -> list[dict[str, Any]]:
    """Write a prepared batch (one commit per table) and its per-day ingest-run records."""
    days, first, last = batch.days, batch.days[0], batch.days[-1]
    try:
        bronze_ads_df = (batch.ads_reason_df.where(F.col("_reason").isNull())
                         .select(*contract.names(contract.AD_FIELDS), "dt"))
        bronze_imp_df = (batch.imp_reason_df.where(F.col("_reason").isNull())
                         .select(*contract.names(contract.IMPRESSION_FIELDS), "dt"))
        quarantine_df = (to_quarantine(batch.ads_reason_df, "ads", "ad_id", contract.AD_FIELDS)
                         .unionByName(to_quarantine(batch.imp_reason_df, "impressions", "impression_id",
                                                    contract.IMPRESSION_FIELDS)))
        # Landing rows per day and the quarantine's reasons, from one job over the judged rows.
        landing_rows: dict[str, dict[dt.date, int]] = {"impressions": {}, "ads": {}}
        reasons: dict[dt.date, dict[str, dict[str, int]]] = {day: {"impressions": {}, "ads": {}} for day in days}
        for r in _counts_by_source_day({"impressions": batch.imp_reason_df, "ads": batch.ads_reason_df},
                                       by_reason=True):
            landing_rows[r["source"]][r["dt"]] = landing_rows[r["source"]].get(r["dt"], 0) + int(r["count"])
            if r["_reason"] is not None:
                reasons[r["dt"]][r["source"]][r["_reason"]] = int(r["count"])

        _replace_partitions(bronze_imp_df, paths.bronze_impressions, days)
        _replace_partitions(bronze_ads_df, paths.bronze_ads, days)
        _replace_partitions(quarantine_df, paths.quarantine, days)
        merged_images = _merge_images(spark, paths, batch.new_images_df, batch.ads_reason_df)
    finally:
        batch.release()

    bronze_rows = {name: _rows_now(spark, uri, days) for name, uri in
                   (("impressions", paths.bronze_impressions), ("ads", paths.bronze_ads))}
    versions = {name: latest_version(spark, uri) for name, uri in
                (("impressions", paths.bronze_impressions), ("ads", paths.bronze_ads),
                 ("images", paths.bronze_images), ("quarantine", paths.quarantine))}
    seconds = round(time.time() - batch.started, 2)
    records = []
    for day in days:
        q_imp, q_ads = sum(reasons[day]["impressions"].values()), sum(reasons[day]["ads"].values())
        record = {
            "dt": day.isoformat(),
            "landing_impressions": landing_rows["impressions"].get(day, 0),
            "bronze_impressions": bronze_rows["impressions"].get(day, 0), "quarantined_impressions": q_imp,
            "landing_ads": landing_rows["ads"].get(day, 0), "bronze_ads": bronze_rows["ads"].get(day, 0),
            "quarantined_ads": q_ads,
            "new_images": merged_images.get(day, 0),
            "reasons": reasons[day], "schema_drift": batch.drift[day],
            "versions": versions, "range": [first.isoformat(), last.isoformat()], "seconds": seconds,
        }
        for table in ("impressions", "ads"):
            landing, bronze, quarantined = (record[f"landing_{table}"], record[f"bronze_{table}"],
                                            record[f"quarantined_{table}"])
            if landing != bronze + quarantined:
                raise RuntimeError(f"ingest of {day}: {table} do not reconcile: landing {landing} != "
                                   f"bronze {bronze} + quarantine {quarantined}")
        records.append(record)
    runs_df = spark.createDataFrame([(dt.date.fromisoformat(r["dt"]), json.dumps(r, sort_keys=True))
                                     for r in records], "dt date, record string")
    _replace_partitions(runs_df, paths.ingest_runs, days)
    for record in records:
        storage.write_json(paths.ingest_record(record["dt"]), record)
        log.info("ingested %s: impressions %d = bronze %d + quarantine %d; ads %d = %d + %d", record["dt"],
                 record["landing_impressions"], record["bronze_impressions"], record["quarantined_impressions"],
                 record["landing_ads"], record["bronze_ads"], record["quarantined_ads"])
    log.info("ingested %s..%s (%d day(s)) in %.1f s", first, last, len(days), seconds)
    return records


def _rows_now(spark: "SparkSession", uri: str, days: list[dt.date]) -> dict[dt.date, int]:
    """What the table at `uri` holds now for each of `days`: the row counts of its live files'
    statistics in the Delta log (no Spark job), or a count by Spark where a file has none."""
    from core.delta_log import partition_rows  # pyarrow: not at import (a bad argument is answered without it)

    counted = partition_rows(uri, "dt", [day.isoformat() for day in days])
    if counted is not None:
        return {day: counted[day.isoformat()] for day in days}
    in_batch = F.col("dt").between(F.lit(days[0]), F.lit(days[-1]))
    rows = dict.fromkeys(days, 0)
    for r in spark.read.format("delta").load(uri).where(in_batch).groupBy("dt").count().collect():
        rows[r["dt"]] = int(r["count"])
    return rows


@timed("writes")
def _merge_images(spark: "SparkSession", paths: Paths, new_images_df: "DataFrame",
                  ads_reason_df: "DataFrame") -> dict[dt.date, int]:
    """Insert decodable new images of accepted ads, first seen on the first day their ad was accepted
    with them; an ad already in bronze images is updated when its image's sha256 differs.
    Returns the rows merged per first-seen day."""
    first_seen_df = (ads_reason_df.where(F.col("_reason").isNull()).select("ad_id", "image_uri", "dt")
                     .groupBy("ad_id", "image_uri").agg(F.min("dt").alias("first_seen_dt")))
    good_df = (first_seen_df.join(new_images_df.where(F.col("_image_ok")), on="image_uri", how="inner")
               .select("ad_id", "image_bytes", "width", "height", "sha256", "image_uri", "first_seen_dt"))
    per_day = {r["first_seen_dt"]: int(r["count"]) for r in good_df.groupBy("first_seen_dt").count().collect()}
    if not delta_exists(spark, paths.bronze_images):
        good_df.write.format("delta").mode("overwrite").save(paths.bronze_images)
        return per_day
    if not per_day:
        return per_day
    updated = ", ".join(f"t.{c} = s.{c}" for c in ("image_bytes", "width", "height", "sha256", "image_uri"))
    merge_into(spark, paths.bronze_images, good_df,
               f"ON t.ad_id = s.ad_id WHEN MATCHED AND t.sha256 <> s.sha256 THEN UPDATE SET {updated} "
               "WHEN NOT MATCHED THEN INSERT *")
    return per_day


def run(cfg: PipelineConfig, spark: "SparkSession", day: dt.date) -> dict[str, Any]:
    """Ingest one landing day; returns the run record (counts, reasons, drift, table versions)."""
    paths = Paths.of(cfg)
    return _commit(spark, paths, _prepare(spark, paths, [day]))[0]


def run_range(cfg: PipelineConfig, spark: "SparkSession", first: dt.date, last: dt.date) -> list[dict[str, Any]]:
    """Ingest every landing day in [first, last] with one Delta commit per table; the records in date order.

    The tables and records equal those of `run` called day after day (only the records'
    `versions`, `range` and `seconds` tell the difference). If the days' new images could merge
    differently at once than day by day (see `_image_conflicts`), it says why and runs `run` per day.
    A day without a complete drop fails before anything is written.
    """
    if last < first:
        raise ValueError(f"end date {last} is before start date {first}")
    paths = Paths.of(cfg)
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    batch = _prepare(spark, paths, days)
    if len(days) > 1:
        conflicts = _image_conflicts(batch)
        if conflicts:
            log.warning("ingesting %s..%s one day at a time: its new images must merge in day order (%s)",
                        first, last, "; ".join(conflicts))
            batch.release()
            return [run(cfg, spark, day) for day in days]
    return _commit(spark, paths, batch)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = stage_parser("Ingest landing days into the bronze Delta tables.")
    ap.add_argument("--end-date", type=date_arg, help="ingest every day from --date to this date (inclusive) "
                                                      "with one Delta commit per table")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    start = parse_date(args.date)
    try:
        with stage_timing(timing_record_path(cfg, start, "ingest_day"), "ingest_day", start.isoformat()):
            spark = get_spark(cfg.spark)
            records = (run_range(cfg, spark, start, parse_date(args.end_date)) if args.end_date
                       else [run(cfg, spark, start)])
    except BadDataError as err:
        log.error("%s", err)
        return BAD_DATA
    for record in records:
        print(json.dumps({k: record[k] for k in ("dt", "landing_impressions", "bronze_impressions",
                                                 "quarantined_impressions", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
