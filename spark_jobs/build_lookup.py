"""Offline inference: run date D's trained visual tower -> the ad_id -> x_v lookup table.

    python spark_jobs/build_lookup.py --date 2026-02-02 [--config FILE | --config-json JSON] [--set k=v]

Candidates are the ads with a bronze image, each with its latest catalog category (catalog days
<= D) and its impressions in the training window (features/ad_window_counts of D; 0 for ads not
seen in the window, e.g. ads born on D). Frequency control keeps the most-shown ads first (ties by
ad id) within inference.budget_ads rows and inference.budget_bytes bytes (serving.lookup.select_ads).
The kept ads' images are embedded by the trained tower (models.train.embed_images, category-aware
for CSCNN), reduced (inference.reduction: none, float16 or pca to inference.pca_dims) and written:

  <warehouse>/lookup_candidates       Delta: run_date, ad_id, category_id (raw), category_idx
                                      (encoded), embedding array<float> (the stored row; for pca the
                                      k-dim z), partitioned by run_date, replaced per date. Not gated
                                      yet: the validate stage checks it; consumers never read it
  <artifacts>/runs/D/lookup/          the memory-mappable serving files + encoder.npz + manifest.json
                                      (serving.lookup module docstring)

The published lookup table (<warehouse>/lookup_table, the Airflow Asset) is written by publish,
from the published version's files, only after every gate passed (serving.registry).

Images are decoded on the driver for the kept ads only, and embedded in inference.batch_size chunks.

torch (models.train) is imported inside the functions that embed, so that a bad argument is
reported without loading it (tests/test_cli_errors.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from PIL import Image
from pyspark.sql import Window
from pyspark.sql import functions as F

from core import storage
from core.cli import run_cli, run_stage
from core.config import PipelineConfig
from core.delta import latest_version
from core.paths import Paths
from core.spark import get_spark
from core.timing import phase
from features.encoder import ENCODER_FILE, save_encoder
from features.tables import AD_COUNTS_TABLE, load_encoder
from serving.lookup import (CATEGORY_IDS_FILE, bytes_per_ad, make_reduction, select_ads, sha256_file,
                            write_lookup_files)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("build_lookup")

MODEL_FILE = "model.pt"
CANDIDATES_TABLE = "lookup_candidates"


class BuildLookupError(RuntimeError):
    """The lookup table cannot be built for a date (no model, no images, bad images)."""


# --------------------------------------------------------------------------- pure transforms


def with_latest_catalog(ads_df: "DataFrame", run_date: dt.date) -> Callable[["DataFrame"], "DataFrame"]:
    """Add category_id, parent_category_id, brand_id and shop_id (the fields CSCNN priors may be
    keyed by) from each ad's latest catalog row on a day <= run_date (inner join)."""
    def inner(df: "DataFrame") -> "DataFrame":
        latest_df = (ads_df.where(F.col("dt") <= F.lit(run_date)).where(F.col("ad_id").isNotNull())
                     .withColumn("_rank", F.row_number().over(Window.partitionBy("ad_id").orderBy(F.col("dt").desc())))
                     .where(F.col("_rank") == 1)
                     .select("ad_id", "category_id", "parent_category_id", "brand_id", "shop_id"))
        return df.join(latest_df, on="ad_id", how="inner")
    return inner


def with_window_impressions(counts_df: "DataFrame") -> Callable[["DataFrame"], "DataFrame"]:
    """Add impressions (in the training window; 0 when the ad was not shown there)."""
    def inner(df: "DataFrame") -> "DataFrame":
        return (df.join(counts_df.select("ad_id", "impressions"), on="ad_id", how="left")
                .withColumn("impressions", F.coalesce(F.col("impressions"), F.lit(0)).cast("bigint")))
    return inner


# --------------------------------------------------------------------------- helpers


def candidates_uri(cfg: PipelineConfig) -> str:
    """The Delta table of each run date's lookup rows before the gates (module docstring)."""
    return Paths.of(cfg).table(CANDIDATES_TABLE)


@contextlib.contextmanager
def model_files(cfg: PipelineConfig, run_date: dt.date) -> Iterator[tuple[Path, Path]]:
    """(model.pt, its manifest.json) of run date D's trained model as local files for the block
    (downloaded when the artifacts are on object storage); either may not exist."""
    with storage.reading_files(Paths.of(cfg).run_model_dir(run_date), (MODEL_FILE, "manifest.json")) as folder:
        yield folder / MODEL_FILE, folder / "manifest.json"


def model_version(model_path: Path, manifest_path: Path, run_date: dt.date, model_sha256: str) -> str:
    """The train stage's model_version when its manifest names one, else '<D>-<sha256 prefix>'."""
    if manifest_path.is_file():
        try:
            name = json.loads(manifest_path.read_text()).get("model_version")
            if name:
                return str(name)
        except (json.JSONDecodeError, AttributeError):
            log.warning("model manifest %s is not a JSON object; deriving the model version", manifest_path)
    return f"{run_date.isoformat()}-{model_sha256[:12]}"


def decode_png(data: bytes, ad_id: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of an image file's bytes."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises several types for broken files
        raise BuildLookupError(f"bronze image of ad {ad_id} cannot be decoded: {e}") from None


def read_images(spark: "SparkSession", paths: Paths, ad_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Decoded bronze images (ad_id -> uint8 (H, W, 3)) of the given ads (absent ones are skipped)."""
    wanted = np.unique(np.asarray(ad_ids, dtype=np.int64))
    if wanted.size == 0:
        return {}
    ids_df = spark.createDataFrame([(int(a),) for a in wanted], "ad_id bigint")
    tbl = (spark.read.format("delta").load(paths.bronze_images).join(F.broadcast(ids_df), "ad_id")
           .select("ad_id", "image_bytes").toArrow())
    ids = tbl.column("ad_id").to_pylist()
    blobs = tbl.column("image_bytes").to_pylist()
    return {int(a): decode_png(b, int(a)) for a, b in zip(ids, blobs)}


def stack_images(images: dict[int, np.ndarray], ad_ids: np.ndarray, blank_missing: bool = False) -> np.ndarray:
    """uint8 (n, H, W, 3) in the order of ``ad_ids``, all of one shape.

    An ad without an image is an error, or with ``blank_missing`` gets the mid-grey image that
    training and models.train.predict give it (models.batching.ImageTable)."""
    ad_list = np.asarray(ad_ids).tolist()
    shape = next((images[int(a)].shape for a in ad_list if int(a) in images), None)
    arrays = []
    for a in ad_list:
        img = images.get(int(a))
        if img is None:
            if not blank_missing or shape is None:
                raise BuildLookupError(f"ad {a} has no bronze image")
            img = np.full(shape, 128, np.uint8)
        if img.shape != shape:
            raise BuildLookupError(f"image of ad {a} has shape {img.shape}, others {shape}; "
                                   "the tower needs one image size (world.image_size)")
        arrays.append(img)
    return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)  # (n, H, W, 3)


def embed_ads(model: Any, images: np.ndarray, categories: np.ndarray, batch_size: int,
              keys: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """x_v (n, visual_dim) of uint8 images (n, H, W, 3) with encoded categories (n,) and, for CSCNN
    priors beyond the category, the encoded ids of the model's key_fields (name -> (n,))."""
    from models.train import embed_images

    return embed_images(model, images, categories, batch_size=batch_size, keys=keys)


# --------------------------------------------------------------------------- the job


def run(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> dict[str, Any]:
    """Embed the kept ads of run date D and write the lookup table and serving files; returns metadata."""
    with phase("imports"):
        from models.train import load_model

    started = time.monotonic()
    ic = cfg.inference
    paths = Paths.of(cfg)
    with model_files(cfg, run_date) as (model_path, manifest_path):
        if not model_path.is_file():
            raise BuildLookupError(f"no trained model for {run_date} at "
                                   f"{storage.join(paths.run_model_dir(run_date), MODEL_FILE)}; run the train stage first")
        model = load_model(model_path)
        model_sha = sha256_file(model_path)
        version = model_version(model_path, manifest_path, run_date, model_sha)
    if model.tower is None:
        raise BuildLookupError(f"the model of {run_date} is variant {model.cfg.variant!r}, which has no visual "
                               "tower; a lookup table needs a visual variant (cnn_fixed, cnn_finetune, cbam, cscnn)")
    encoder = load_encoder(cfg, spark, run_date)

    day = f"run_date = DATE'{run_date.isoformat()}'"
    counts_df = spark.read.format("delta").load(paths.table(AD_COUNTS_TABLE)).where(day)
    candidates_df = (spark.read.format("delta").load(paths.bronze_images).select("ad_id").distinct()
                     .transform(with_latest_catalog(spark.read.format("delta").load(paths.bronze_ads), run_date))
                     .transform(with_window_impressions(counts_df)))
    cand = candidates_df.toArrow()
    cand_ads = np.asarray(cand.column("ad_id").to_numpy(), dtype=np.int64)
    cand_imps = np.asarray(cand.column("impressions").to_numpy(), dtype=np.int64)
    cand_cat = cand.column("category_id")
    if cand_ads.size == 0:
        raise BuildLookupError(f"no ad has both a bronze image and a catalog row on or before {run_date}")
    visual_dim = model.cfg.visual_dim
    row_bytes = bytes_per_ad(visual_dim, ic.reduction, ic.pca_dims)
    keep = select_ads(cand_ads, cand_imps, ic.budget_ads, ic.budget_bytes, row_bytes)
    ad_ids = cand_ads[keep]
    cat_valid = ~np.asarray(cand_cat.is_null().to_numpy(zero_copy_only=False), dtype=bool)[keep]
    raw_cat = np.asarray(cand_cat.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)[keep]
    category_idx = np.asarray(encoder.encode_single("category_id", raw_cat, cat_valid), dtype=np.int64)
    key_idx = {}
    for name in model.key_fields:  # parent_category_id, brand_id, shop_id: what the priors need
        col = cand.column(name)
        valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)[keep]
        raw = np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)[keep]
        key_idx[name] = np.asarray(encoder.encode_single(name, raw, valid), dtype=np.int64)
    log.info("build_lookup %s: %d candidate ads, keeping %d (budget_ads=%d, budget_bytes=%d, %d bytes/ad)",
             run_date, len(cand_ads), len(ad_ids), ic.budget_ads, ic.budget_bytes, row_bytes)

    images = stack_images(read_images(spark, paths, ad_ids), ad_ids)  # (n, H, W, 3)
    t0 = time.monotonic()
    x_v = embed_ads(model, images, category_idx, ic.batch_size, key_idx)  # (n, visual_dim)
    embed_s = time.monotonic() - t0
    if not np.isfinite(x_v).all():
        raise BuildLookupError(f"the tower of {run_date} produced NaN/Inf embeddings for "
                               f"{int((~np.isfinite(x_v)).any(axis=1).sum())} ads; the model is broken")
    reduction = make_reduction(x_v, ic.reduction, ic.pca_dims)

    window_impressions = int(cand_imps.sum())
    covered_impressions = int(cand_imps[keep].sum())
    # A re-run replaces the date's folder whole (no stale files of another reduction).
    with storage.writing_folder(paths.run_lookup_dir(run_date)) as lookup_dir:
        save_encoder(encoder, lookup_dir / ENCODER_FILE)
        order = np.argsort(ad_ids, kind="stable")  # the serving files' row order (sorted ad ids)
        np.save(lookup_dir / CATEGORY_IDS_FILE, np.where(cat_valid, raw_cat, -1)[order].astype(np.int64),
                allow_pickle=False)
        manifest = write_lookup_files(
            lookup_dir, ad_ids, category_idx, x_v, reduction, run_date=run_date.isoformat(), model_version=version,
            model_sha256=model_sha, extra_files={ENCODER_FILE: str(lookup_dir / ENCODER_FILE),
                                                  CATEGORY_IDS_FILE: str(lookup_dir / CATEGORY_IDS_FILE)},
            extra={"candidates": int(len(cand_ads)), "budget_ads": ic.budget_ads, "budget_bytes": ic.budget_bytes,
                   "window_impression_share": covered_impressions / window_impressions if window_impressions
                   else None})

    stored = reduction.encode(x_v)  # (n, dims), the rows the serving file holds
    rows = [(run_date, int(a), int(c) if v else None, int(ci), [float(x) for x in row])
            for a, c, v, ci, row in zip(ad_ids.tolist(), raw_cat.tolist(), cat_valid.tolist(),
                                        category_idx.tolist(), stored.astype(np.float32))]
    table_df = spark.createDataFrame(
        rows, "run_date date, ad_id bigint, category_id int, category_idx int, embedding array<float>")
    candidates = candidates_uri(cfg)
    with phase("writes"):
        (table_df.write.format("delta").mode("overwrite").partitionBy("run_date")
         .option("replaceWhere", day).save(candidates))
    delta_version = latest_version(spark, candidates)
    meta = {
        "run_date": run_date.isoformat(), "rows": int(len(ad_ids)), "candidates": int(len(cand_ads)),
        "reduction": reduction.method, "dims": manifest["dims"], "bytes_per_ad": manifest["bytes_per_ad"],
        "model_version": version, "embed_seconds": embed_s,
        "ads_per_second": len(ad_ids) / embed_s if embed_s > 0 else None,
        "lookup_dir": str(lookup_dir), "lookup_candidates": candidates, "lookup_candidates_version": delta_version,
        "window_impression_share": manifest["window_impression_share"],
        "seconds": time.monotonic() - started,
    }
    log.info("build_lookup %s: %d ads embedded (%.0f ads/s), %s, written to %s and %s", run_date, meta["rows"],
             meta["ads_per_second"] or 0, reduction.method, lookup_dir, candidates)
    return meta


def main(argv: list[str] | None = None) -> int:
    return run_stage("Embed the kept ads of a run date into the lookup table and serving files.",
                     lambda cfg, run_date, args: run(cfg, get_spark(cfg.spark), run_date), argv, log_name="build_lookup",
                     task="build_lookup_table")


if __name__ == "__main__":
    sys.exit(run_cli(main))
