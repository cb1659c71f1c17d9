"""Simulated world -> ingest -> features for a few tiny days (window_days = 3)."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import functions as F

from core.paths import Paths
from features import tables
from features.spec import COLD_MAX_IMPRESSIONS, SINGLE_FIELDS
from simworld.generate import generate_range
from spark_jobs import build_window, ingest


def test_simworld_ingest_features(spark, tmp_cfg):
    cfg = tmp_cfg.replace({"features.window_days": 3})
    days = [dt.date.fromisoformat(cfg.world.epoch) + dt.timedelta(days=k) for k in range(4)]
    generate_range(cfg, days[0], days[-1])
    for day in days:
        ingest.run(cfg, spark, day)

    meta = build_window.run(cfg, spark, days[-1])
    paths = Paths.of(cfg)
    bronze = spark.read.format("delta").load(paths.bronze_impressions)
    per_day = {r["dt"]: r["count"] for r in bronze.groupBy("dt").count().collect()}
    assert meta["rows"] == {"train": sum(per_day[d] for d in days[:3]), "holdout": per_day[days[-1]]}
    assert meta["counted_days"] == [d.isoformat() for d in days[:3]]
    assert 0 < meta["label_rate"]["train"] < 0.5
    spec = tables.load_feature_spec(cfg, spark, days[-1])
    assert 2 <= spec.n_categories <= cfg.world.n_categories + 1

    examples = tables.read_examples(cfg, spark, days[-1])
    groups = examples.groupBy("split", "group_id").agg(F.count(F.lit(1)).alias("n"),
                                                        F.countDistinct("ad_id").alias("ads"))
    assert groups.where((F.col("n") > cfg.features.group_size) | (F.col("ads") != 1)).count() == 0
    train = tables.load_examples(cfg, spark, days[-1], "train")
    assert train["impression_id"].is_unique and train["row_idx"].tolist() == list(range(len(train)))
    for name in SINGLE_FIELDS:
        assert train[f"f_{name}"].between(0, spec.single[name] - 1).all(), name
    ad_rows = train.groupby("ad_id")["is_cold"].agg(["size", "first"])
    assert ((ad_rows["size"] < COLD_MAX_IMPRESSIONS) == ad_rows["first"]).all()

    again = build_window.run(cfg, spark, days[-1])  # idempotent: same outputs, nothing recounted
    assert again["counted_days"] == [] and again["rows"] == meta["rows"]
    assert again["row_days_written"] == []
    assert tables.read_examples(cfg, spark, days[-1]).count() == sum(meta["rows"].values())
