"""Export one run date's encoded examples and their ad images as plain parquet for the trainer.

The trainer (models/train_job.py, launched by torchrun, possibly on a GPU worker without Spark)
reads this snapshot with pyarrow instead of the Delta tables:

    <artifacts>/runs/D/snapshot/train/*.parquet     encoded training examples, in row_idx order
    <artifacts>/runs/D/snapshot/holdout/*.parquet   encoded holdout examples
    <artifacts>/runs/D/snapshot/images/*.parquet    ad_id, image_bytes of every ad in either split
    <artifacts>/runs/D/snapshot/feature_spec.json   the FeatureSpec of the run date
    <artifacts>/runs/D/snapshot/_SUCCESS            written last

The snapshot is derived data: re-exporting replaces it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.config import PipelineConfig
from core.paths import Paths, is_local, local_path

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession


def export_training_snapshot(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> dict[str, Any]:
    """Write the snapshot of `run_date` (see module docstring); returns its row counts."""
    from pyspark.sql import functions as F

    from spark_jobs.features import load_feature_spec

    paths = Paths.of(cfg)
    out = paths.snapshot(run_date)
    if is_local(out) and os.path.exists(local_path(out)):
        shutil.rmtree(local_path(out))
    examples_df = (spark.read.format("delta").load(paths.table("features/examples"))
                   .where(F.col("run_date") == F.lit(run_date)))
    counts = {}
    for split in ("train", "holdout"):
        split_df = examples_df.where(F.col("split") == split).drop("run_date", "split")
        # One ordered file keeps the ad groups in training order for the trainer.
        split_df.orderBy("row_idx").coalesce(1).write.mode("overwrite").parquet(f"{out}/{split}")
        counts[split] = split_df.count()
    ads_df = examples_df.select("ad_id").distinct()
    images_df = (spark.read.format("delta").load(paths.bronze_images)
                 .join(ads_df, on="ad_id", how="inner").select("ad_id", "image_bytes"))
    images_df.coalesce(1).write.mode("overwrite").parquet(f"{out}/images")
    counts["images"] = images_df.count()
    spec = load_feature_spec(cfg, spark, run_date)
    if is_local(out):
        with open(os.path.join(local_path(out), "feature_spec.json"), "w") as f:
            f.write(spec.to_json())
        with open(os.path.join(local_path(out), "_SUCCESS"), "w") as f:
            json.dump(counts, f)
    else:
        spark.createDataFrame([(spec.to_json(),)], "spec string").coalesce(1).write.mode("overwrite").text(
            f"{out}/feature_spec")
    return counts
