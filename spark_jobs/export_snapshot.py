"""Export one run date's training snapshot (the DAG's `export_training_snapshot` stage).

    python spark_jobs/export_snapshot.py --date 2026-02-02 [--config FILE] [--set k=v]

Writes the ad images and the feature spec beside the run date's examples, once they passed
check_examples_quality. The trainer (spark_jobs/train_model.py, launched by models.launch,
possibly on a GPU worker without Spark) reads this snapshot with pyarrow instead of Delta:

    <artifacts>/runs/D/snapshot/images/*.parquet    ad_id, image_bytes of every ad in either split
    <artifacts>/runs/D/snapshot/feature_spec.json   the FeatureSpec of the run date
    <artifacts>/runs/D/snapshot/encoder.npz         the run date's encoder (features/encoder.py), which
                                                    the warm start remaps rows by value through
    <artifacts>/runs/D/snapshot/_SUCCESS            written last: row counts and `examples`, the
                                                    run date's examples table (features/examples/D)

The examples are not copied: the trainer reads the live parquet files of the run date's examples
table (split=train, split=holdout) named by its Delta log (features.examples.read_example_files).
The snapshot is derived data: re-exporting replaces it. <artifacts> may be a local folder or
object storage (core.storage).
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.cli import run_cli, run_stage
from core.config import PipelineConfig
from core import storage
from core.paths import Paths
from core.spark import get_spark
from features.examples import SPLITS
from features.encoder import ENCODER_FILE, encoder_bytes
from features.tables import examples_uri, load_encoder, load_feature_spec


def export_training_snapshot(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date) -> dict[str, Any]:
    """Write the snapshot of `run_date` (see module docstring); returns its row counts."""
    paths = Paths.of(cfg)
    out = paths.snapshot(run_date)
    storage.remove_tree(out)
    uri = examples_uri(cfg, run_date)
    examples_df = spark.read.format("delta").load(uri)
    counts: dict[str, Any] = {r["split"]: int(r["count"]) for r in examples_df.groupBy("split").count().collect()}
    for split in SPLITS:
        if not counts.get(split):
            raise FileNotFoundError(f"no {split} examples in the table at {uri}; run build_window for {run_date}")
    # The ads of either split, found and joined by Spark: no per-row data reaches this process.
    ads_df = examples_df.where(F.col("ad_id").isNotNull()).select("ad_id").distinct()
    images_df = (spark.read.format("delta").load(paths.bronze_images)
                 .join(ads_df, on="ad_id", how="left_semi").select("ad_id", "image_bytes"))
    images_df.coalesce(1).write.mode("overwrite").parquet(f"{out}/images")
    counts["images"] = images_df.count()
    counts["examples"] = uri
    spec = load_feature_spec(cfg, spark, run_date)
    storage.write_text(storage.join(out, "feature_spec.json"), spec.to_json())
    storage.write_bytes(storage.join(out, ENCODER_FILE), encoder_bytes(load_encoder(cfg, spark, run_date)))
    storage.write_json(storage.join(out, "_SUCCESS"), counts, indent=None, sort_keys=False)  # last: complete
    return counts


def main(argv: list[str] | None = None) -> int:
    return run_stage("Export one run date's training snapshot (images, feature spec) for the trainer.",
                     lambda cfg, run_date, args: export_training_snapshot(cfg, get_spark(cfg.spark), run_date), argv,
                     log_name="export_snapshot",
                     task="export_training_snapshot")


if __name__ == "__main__":
    sys.exit(run_cli(main))
