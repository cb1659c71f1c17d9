"""Export one run date's training snapshot: the ad images and feature spec beside its examples.

The trainer (models/train_job.py, launched by torchrun, possibly on a GPU worker without Spark)
reads this snapshot with pyarrow instead of Delta through Spark:

    <artifacts>/runs/D/snapshot/images/*.parquet    ad_id, image_bytes of every ad in either split
    <artifacts>/runs/D/snapshot/feature_spec.json   the FeatureSpec of the run date
    <artifacts>/runs/D/snapshot/_SUCCESS            written last: row counts and `examples`, the
                                                    run date's examples table (features/examples/D)

The examples are not copied: the features job writes each run date's examples table whole and
never updates it in place, so the trainer reads its parquet files (split=train, split=holdout)
directly. The snapshot is derived data: re-exporting replaces it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from typing import TYPE_CHECKING, Any

from core.config import PipelineConfig
from core.paths import Paths, is_local, local_path

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession


def export_training_snapshot(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> dict[str, Any]:
    """Write the snapshot of `run_date` (see module docstring); returns its row counts."""
    import pandas as pd
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    from spark_jobs.examples import read_example_files
    from spark_jobs.features import examples_uri, load_feature_spec

    paths = Paths.of(cfg)
    out = paths.snapshot(run_date)
    if is_local(out) and os.path.exists(local_path(out)):
        shutil.rmtree(local_path(out))
    uri = examples_uri(cfg, run_date)
    counts: dict[str, Any] = {}
    ad_ids = set()
    for split in ("train", "holdout"):
        ads = read_example_files(uri, split, columns=["ad_id"]).column("ad_id")
        counts[split] = len(ads)
        ad_ids.update(x for x in pc.unique(ads).to_pylist() if x is not None)
    ads_df = spark.createDataFrame(pd.DataFrame({"ad_id": sorted(ad_ids)}, dtype="int64"))
    images_df = (spark.read.format("delta").load(paths.bronze_images)
                 .join(F.broadcast(ads_df), on="ad_id", how="inner").select("ad_id", "image_bytes"))
    images_df.coalesce(1).write.mode("overwrite").parquet(f"{out}/images")
    counts["images"] = images_df.count()
    counts["examples"] = uri
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
