"""Ingest: landing day D -> bronze Delta tables, contract violations -> quarantine.

    python spark_jobs/ingest.py --date 2026-02-02 [--config FILE] [--set k=v]

Bronze tables (Paths.bronze_*):
  impressions  contract IMPRESSION_FIELDS + dt, partitioned by dt (replaceWhere dt = D)
  ads          contract AD_FIELDS + dt: the day's catalog snapshot, partitioned by dt
  images       IMAGE_FIELDS + image_uri + first_seen_dt, one row per ad (MERGE on ad_id)
Quarantine (Paths.quarantine): dt, source, reason, key, record (the raw row as JSON),
partitioned by dt (replaceWhere dt = D). Ingest runs (Paths.ingest_runs): one row per dt.

Idempotent per date: re-ingesting D replaces D's rows, never duplicates them. Each row that
breaks the contract lands in quarantine with exactly one reason (the first that applies, in
the order of RULE_ORDER), so landing rows = bronze rows + quarantined rows, per table; the
job checks that equation and fails if it does not hold. Delta's atomic commits mean a crash
mid-write leaves every table at its previous version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # spark-submit runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import contract
from core.config import PipelineConfig
from core.files import write_json_local
from core.paths import Paths

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("ingest")

IMPRESSION_RULES = ("null_required", "bad_label", "bad_time_fields", "ts_outside_day", "unknown_ad",
                    "ad_of_bad_catalog_row", "duplicate_id")
AD_RULES = ("null_required", "duplicate_id", "negative_price", "review_count_negative", "image_uri_escapes",
            "image_missing", "image_corrupt")


class LandingError(RuntimeError):
    """The landing drop for a day is absent, incomplete or unreadable."""


# --------------------------------------------------------------------------- pure transforms


def with_contract_columns(df: "DataFrame", fields: tuple[contract.Field, ...]) -> tuple["DataFrame", dict]:
    """Project `df` onto the contract: cast each field, add missing optional ones as null.

    Returns the projected frame and the schema drift found ({'extra': [...], 'missing': [...]}).
    A missing required field is an error: nothing about those rows could be trusted.
    """
    from pyspark.sql import functions as F

    present = set(df.columns)
    wanted = contract.names(fields)
    missing = [f.name for f in fields if f.name not in present]
    missing_required = [f.name for f in fields if f.required and f.name not in present]
    if missing_required:
        raise LandingError(f"landing file lacks required column(s) {missing_required}; "
                           f"the contract (docs/CONTRACT.md) requires {contract.required(fields)}")
    extra = sorted(present - set(wanted))
    cols = [(F.col(f.name).cast(f.type) if f.name in present else F.lit(None).cast(f.type)).alias(f.name)
            for f in fields]
    return df.select(*cols), {"extra": extra, "missing": missing}


def _first_reason(checks: list[tuple[str, "Column"]]) -> "Column":
    """A column holding the first rule name whose condition is true, else null."""
    from pyspark.sql import functions as F

    expr = F.lit(None).cast("string")
    for name, cond in reversed(checks):
        expr = F.when(cond, F.lit(name)).otherwise(expr)
    return expr


def _any_null(names: list[str]) -> "Column":
    from pyspark.sql import functions as F

    cond = F.lit(False)
    for n in names:
        cond = cond | F.col(n).isNull()
    return cond


def with_uri_escape_flag(ads_df: "DataFrame") -> "DataFrame":
    """Flag image URIs that could leave the landing area: schemes, absolute paths, '..' parts."""
    from pyspark.sql import functions as F

    uri = F.col("image_uri")
    escapes = (uri.rlike(r"^[A-Za-z][A-Za-z0-9+.-]*:") | uri.startswith("/") | uri.startswith("\\")
               | uri.rlike(r"(^|[/\\])\.\.([/\\]|$)") | uri.contains("\x00"))
    return ads_df.withColumn("_uri_escapes", F.coalesce(escapes, F.lit(False)))


def with_ad_reason(ads_df: "DataFrame", image_status_df: "DataFrame") -> "DataFrame":
    """Add `_reason` to catalog rows; `image_status_df` has (image_uri, _image_ok, _image_exists)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("ad_id").orderBy(F.col("image_uri").asc_nulls_last(), F.col("category_id"))
    df = (ads_df.transform(with_uri_escape_flag)
          .join(image_status_df, on="image_uri", how="left")
          .withColumn("_dup_rank", F.when(F.col("ad_id").isNull(), F.lit(1)).otherwise(F.row_number().over(w))))
    checks = [
        ("null_required", _any_null(contract.required(contract.AD_FIELDS))),
        ("duplicate_id", F.col("_dup_rank") > 1),
        ("negative_price", F.coalesce(F.col("price") < 0, F.lit(False))),
        ("review_count_negative", F.coalesce(F.col("review_count") < 0, F.lit(False))),
        ("image_uri_escapes", F.col("_uri_escapes")),
        ("image_missing", ~F.coalesce(F.col("_image_exists"), F.lit(False))),
        ("image_corrupt", ~F.coalesce(F.col("_image_ok"), F.lit(False))),
    ]
    return df.withColumn("_reason", _first_reason(checks)).drop("_uri_escapes", "_dup_rank")


def with_impression_reason(imp_df: "DataFrame", ads_reason_df: "DataFrame", day: dt.date) -> "DataFrame":
    """Add `_reason` to impression rows, judged against the day's catalog (with its reasons)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    catalog = (ads_reason_df.where(F.col("ad_id").isNotNull())
               .groupBy("ad_id")
               .agg(F.max(F.when(F.col("_reason").isNull(), 1).otherwise(0)).alias("_ad_ok"))
               .withColumn("_in_catalog", F.lit(True)))
    # Exact duplicates are kept once: the first by event time, then by the whole row's hash.
    w = Window.partitionBy("impression_id").orderBy(F.col("event_ts").asc_nulls_last(),
                                                    F.xxhash64(*contract.names(contract.IMPRESSION_FIELDS)))
    df = (imp_df.join(F.broadcast(catalog), on="ad_id", how="left")
          .withColumn("_dup_rank", F.when(F.col("impression_id").isNull(), F.lit(1))
                      .otherwise(F.row_number().over(w))))
    checks = [
        ("null_required", _any_null(contract.required(contract.IMPRESSION_FIELDS))),
        ("bad_label", ~F.col("click").isin(0, 1)),
        ("bad_time_fields", ~F.col("weekday").between(0, 6) | ~F.col("hour").between(0, 23)),
        ("ts_outside_day", F.to_date(F.col("event_ts")) != F.lit(day)),
        ("unknown_ad", F.col("_in_catalog").isNull()),
        ("ad_of_bad_catalog_row", F.col("_ad_ok") == 0),
        ("duplicate_id", F.col("_dup_rank") > 1),
    ]
    return (df.withColumn("_reason", _first_reason(checks))
            .drop("_in_catalog", "_ad_ok", "_dup_rank"))


def to_quarantine(df: "DataFrame", source: str, key: str, fields: tuple[contract.Field, ...],
                  day: dt.date) -> "DataFrame":
    """Rows with a `_reason` as quarantine records (dt, source, reason, key, record JSON)."""
    from pyspark.sql import functions as F

    return (df.where(F.col("_reason").isNotNull())
            .select(F.lit(day).alias("dt"), F.lit(source).alias("source"), F.col("_reason").alias("reason"),
                    F.col(key).cast("string").alias("key"),
                    F.to_json(F.struct(*[F.col(n) for n in contract.names(fields)])).alias("record")))


# --------------------------------------------------------------------------- images


def _hadoop_fs(spark: "SparkSession", uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def existing_files(spark: "SparkSession", uris: list[str]) -> set[str]:
    """Which of `uris` exist (through Hadoop's FileSystem, so s3a:// works too)."""
    from core.paths import is_local, local_path

    if all(is_local(u) for u in uris):  # one stat per file, without a JVM round trip each
        return {u for u in uris if os.path.isfile(local_path(u))}
    found = set()
    for uri in uris:
        fs, path = _hadoop_fs(spark, uri)
        if fs.exists(path) and fs.getFileStatus(path).isFile():
            found.add(uri)
    return found


def _image_uri_abs(landing: str, rel: str) -> str:
    return f"{landing.rstrip('/')}/{rel}"


def read_new_images(spark: "SparkSession", landing: str, candidates_df: "DataFrame") -> "DataFrame":
    """Decode-check the images of candidate catalog rows (ad_id, image_uri; URIs already safe).

    Returns (image_uri, _image_exists, _image_ok, image_bytes, width, height, sha256).
    """
    import pandas as pd
    from pyspark.sql import functions as F

    rel_uris = [r.image_uri for r in candidates_df.select("image_uri").distinct().collect()]
    abs_of = {_image_uri_abs(landing, u): u for u in rel_uris}
    present = existing_files(spark, list(abs_of))
    schema = "image_uri string, _image_exists boolean, _image_ok boolean, image_bytes binary, " \
             "width int, height int, sha256 string"
    missing_rows = [(abs_of[a], False, False, None, None, None, None) for a in abs_of if a not in present]
    missing_df = spark.createDataFrame(missing_rows, schema)
    if not present:
        return missing_df

    def decode(batches):
        import hashlib
        import io

        from PIL import Image

        for pdf in batches:
            ok, widths, heights, shas = [], [], [], []
            for content in pdf["content"]:
                try:
                    with Image.open(io.BytesIO(content)) as im:
                        im.load()  # forces a full decode: verify() alone misses truncated data
                        w, h = im.size
                    ok.append(True), widths.append(w), heights.append(h)
                except Exception:  # any decoder error means the file is not a usable image
                    ok.append(False), widths.append(None), heights.append(None)
                shas.append(hashlib.sha256(content).hexdigest())
            yield pd.DataFrame({"path": pdf["path"], "_image_ok": ok, "image_bytes": pdf["content"],
                                "width": pd.array(widths, dtype="Int32"), "height": pd.array(heights, dtype="Int32"),
                                "sha256": shas})

    files_df = spark.read.format("binaryFile").load(sorted(present)).select("path", "content")
    decoded_df = files_df.mapInPandas(decode, "path string, _image_ok boolean, image_bytes binary, width int, "
                                              "height int, sha256 string")
    # binaryFile reports file: URIs; map them back to the catalog's relative URIs.
    norm = {}
    for a, rel in abs_of.items():
        norm[a] = rel
        norm["file:" + a] = rel
        norm["file://" + a] = rel
    map_df = spark.createDataFrame(list(norm.items()), "path string, image_uri string")
    found_df = (decoded_df.join(F.broadcast(map_df), on="path", how="inner").drop("path")
                .withColumn("_image_exists", F.lit(True)))
    return found_df.select(*[c.split(" ")[0] for c in schema.split(", ")]).unionByName(missing_df)


# --------------------------------------------------------------------------- I/O


def _delta_exists(spark: "SparkSession", uri: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, uri)


def _replace_partition(df: "DataFrame", uri: str, day: dt.date) -> None:
    """Overwrite exactly the rows of dt = day (creating the table on first write)."""
    (df.write.format("delta").mode("overwrite").partitionBy("dt")
     .option("replaceWhere", f"dt = '{day.isoformat()}'").save(uri))


def table_version(spark: "SparkSession", uri: str) -> int | None:
    from delta.tables import DeltaTable

    if not _delta_exists(spark, uri):
        return None
    return int(DeltaTable.forPath(spark, uri).history(1).select("version").collect()[0][0])


def read_landing(spark: "SparkSession", paths: Paths, day: dt.date) -> tuple["DataFrame", "DataFrame"]:
    marker = paths.landing_success(day)
    fs, p = _hadoop_fs(spark, marker)
    if not fs.exists(p):
        raise LandingError(f"landing drop for {day} is not complete: {marker} is missing "
                           f"(generate it with `python -m simworld --start {day} --end {day}` or wait for upstream)")
    return (spark.read.parquet(paths.landing_impressions(day)), spark.read.parquet(paths.landing_ads(day)))


def run(cfg: PipelineConfig, spark: "SparkSession", day: dt.date) -> dict[str, Any]:
    """Ingest one landing day; returns the run record (counts, reasons, drift, table versions)."""
    from pyspark.sql import functions as F

    t0 = time.time()
    paths = Paths.of(cfg)
    raw_imp_df, raw_ads_df = read_landing(spark, paths, day)
    imp_df, imp_drift = with_contract_columns(raw_imp_df, contract.IMPRESSION_FIELDS)
    ads_df, ads_drift = with_contract_columns(raw_ads_df, contract.AD_FIELDS)
    for name, drift in (("impressions", imp_drift), ("ads", ads_drift)):
        if drift["extra"] or drift["missing"]:
            log.warning("%s schema drift on %s: extra columns %s (not kept in bronze), missing optional %s "
                        "(null in bronze)", name, day, drift["extra"], drift["missing"])

    # Images: decode-check only those not already in bronze with the same URI.
    ads_df = ads_df.cache()
    safe_df = ads_df.transform(with_uri_escape_flag).where(~F.col("_uri_escapes") & F.col("image_uri").isNotNull())
    known_df = None
    if _delta_exists(spark, paths.bronze_images):
        known_df = spark.read.format("delta").load(paths.bronze_images).select("image_uri", "width", "height")
        candidates_df = safe_df.join(known_df.select("image_uri"), on="image_uri", how="left_anti")
    else:
        candidates_df = safe_df
    new_images_df = read_new_images(spark, paths.landing, candidates_df.select("ad_id", "image_uri")).cache()
    status_df = new_images_df.select("image_uri", "_image_exists", "_image_ok")
    if known_df is not None:
        status_df = status_df.unionByName(known_df.select("image_uri", F.lit(True).alias("_image_exists"),
                                                          F.lit(True).alias("_image_ok")).distinct())
    ads_reason_df = with_ad_reason(ads_df, status_df).cache()
    imp_reason_df = with_impression_reason(imp_df, ads_reason_df, day).cache()

    bronze_ads_df = (ads_reason_df.where(F.col("_reason").isNull())
                     .select(*contract.names(contract.AD_FIELDS)).withColumn("dt", F.lit(day)))
    bronze_imp_df = (imp_reason_df.where(F.col("_reason").isNull())
                     .select(*contract.names(contract.IMPRESSION_FIELDS)).withColumn("dt", F.lit(day)))
    quarantine_df = (to_quarantine(ads_reason_df, "ads", "ad_id", contract.AD_FIELDS, day)
                     .unionByName(to_quarantine(imp_reason_df, "impressions", "impression_id",
                                                contract.IMPRESSION_FIELDS, day)))

    counts = {
        "landing_impressions": imp_reason_df.count(),
        "landing_ads": ads_reason_df.count(),
    }
    reason_rows = (quarantine_df.groupBy("source", "reason").count().collect())
    reasons: dict[str, dict[str, int]] = {"impressions": {}, "ads": {}}
    for r in reason_rows:
        reasons[r["source"]][r["reason"]] = int(r["count"])

    _replace_partition(bronze_imp_df, paths.bronze_impressions, day)
    _replace_partition(bronze_ads_df, paths.bronze_ads, day)
    _replace_partition(quarantine_df, paths.quarantine, day)
    merged_images = _merge_images(spark, paths, new_images_df, ads_reason_df, day)

    bronze_imp = spark.read.format("delta").load(paths.bronze_impressions).where(F.col("dt") == F.lit(day)).count()
    bronze_ads = spark.read.format("delta").load(paths.bronze_ads).where(F.col("dt") == F.lit(day)).count()
    q_imp, q_ads = sum(reasons["impressions"].values()), sum(reasons["ads"].values())
    record = {
        "dt": day.isoformat(),
        "landing_impressions": counts["landing_impressions"], "bronze_impressions": bronze_imp,
        "quarantined_impressions": q_imp,
        "landing_ads": counts["landing_ads"], "bronze_ads": bronze_ads, "quarantined_ads": q_ads,
        "new_images": merged_images,
        "reasons": reasons, "schema_drift": {"impressions": imp_drift, "ads": ads_drift},
        "versions": {name: table_version(spark, uri) for name, uri in
                     (("impressions", paths.bronze_impressions), ("ads", paths.bronze_ads),
                      ("images", paths.bronze_images), ("quarantine", paths.quarantine))},
        "seconds": round(time.time() - t0, 2),
    }
    for table in ("impressions", "ads"):
        landing, bronze, quarantined = (record[f"landing_{table}"], record[f"bronze_{table}"],
                                        record[f"quarantined_{table}"])
        if landing != bronze + quarantined:
            raise RuntimeError(f"ingest of {day}: {table} do not reconcile: landing {landing} != "
                               f"bronze {bronze} + quarantine {quarantined}")
    runs_df = spark.createDataFrame([(day, json.dumps(record, sort_keys=True))], "dt date, record string")
    _replace_partition(runs_df, paths.ingest_runs, day)
    write_json_local(f"{paths.run_dir(day)}/ingest.json", record)
    for df in (ads_df, new_images_df, ads_reason_df, imp_reason_df):
        df.unpersist()
    log.info("ingested %s: impressions %d = bronze %d + quarantine %d; ads %d = %d + %d; %.1f s", day,
             record["landing_impressions"], bronze_imp, q_imp, record["landing_ads"], bronze_ads, q_ads,
             record["seconds"])
    return record


def _merge_images(spark: "SparkSession", paths: Paths, new_images_df: "DataFrame", ads_reason_df: "DataFrame",
                  day: dt.date) -> int:
    """Insert decodable images of accepted ads not yet in bronze images; returns rows inserted."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    good_df = (ads_reason_df.where(F.col("_reason").isNull()).select("ad_id", "image_uri")
               .join(new_images_df.where(F.col("_image_ok")), on="image_uri", how="inner")
               .select("ad_id", "image_bytes", "width", "height", "sha256", "image_uri",
                       F.lit(day).alias("first_seen_dt")))
    n = good_df.count()
    if not _delta_exists(spark, paths.bronze_images):
        good_df.write.format("delta").mode("overwrite").save(paths.bronze_images)
        return n
    if n == 0:
        return 0
    (DeltaTable.forPath(spark, paths.bronze_images).alias("t")
     .merge(good_df.alias("s"), "t.ad_id = s.ad_id")
     .whenMatchedUpdate(condition="t.sha256 <> s.sha256",
                        set={c: f"s.{c}" for c in ("image_bytes", "width", "height", "sha256", "image_uri")})
     .whenNotMatchedInsertAll()
     .execute())
    return n


def main(argv: list[str] | None = None) -> int:
    from core.cli import config_from_args, parse_date, setup_logging, stage_parser
    from core.spark import get_spark

    setup_logging()
    ap = stage_parser("Ingest one landing day into the bronze Delta tables.")
    ap.add_argument("--end-date", help="ingest every day from --date to this date (inclusive), one session")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    start = parse_date(args.date)
    end = parse_date(args.end_date) if args.end_date else start
    spark = get_spark(cfg.spark)
    day = start
    while day <= end:
        record = run(cfg, spark, day)
        print(json.dumps({k: record[k] for k in ("dt", "landing_impressions", "bronze_impressions",
                                                 "quarantined_impressions", "seconds")}))
        day += dt.timedelta(days=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
