"""The features stage's Delta tables: their names under the warehouse and their readers.

The build_window stage (spark_jobs/build_window.py) writes, per run date D, under the warehouse:

  features/day_rows          one bronze day's impressions joined to that day's catalog (dt partitions)
  features/daily_counts      raw value counts of one day's rows (dt partitions)
  features/vocab             run_date, field, value, id, count, stable_id: the run's vocabularies
  features/bins              run_date, field, edges: the run's numeric bin edges
  features/ad_window_counts  run_date, ad_id, impressions: every ad's impressions in the window
  features/examples/<D>      the run date's encoded examples (features/examples.py)
  features/runs              run_date, the feature spec, bronze versions read, window and metadata
  features/id_registry       field, value, id, first_dt: every value's permanent id (spark_jobs/id_registry.py)

The readers take a SparkSession and return what the stages, training and serving share: the
feature spec, the run's metadata, its FeatureEncoder and its examples.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession

from core.config import PipelineConfig
from core.delta import delta_exists
from core.paths import Paths
from features.encoder import VOCAB_FIELDS, FeatureEncoder
from features.examples import EXAMPLE_COLUMNS, SPLITS, examples_location, read_example_files
from features.spec import FeatureSpec

if TYPE_CHECKING:
    import pandas as pd  # pyarrow's to_pandas loads it where a table becomes a frame

DAY_ROWS_TABLE = "features/day_rows"
DAILY_COUNTS_TABLE = "features/daily_counts"
VOCAB_TABLE = "features/vocab"
BINS_TABLE = "features/bins"
AD_COUNTS_TABLE = "features/ad_window_counts"
EXAMPLES_TABLE = "features/examples"
RUNS_TABLE = "features/runs"
ID_REGISTRY_TABLE = "features/id_registry"


class FeaturesError(RuntimeError):
    """The features stage cannot run for a date (missing days, missing tables, bad settings)."""


def read_encoder(spark: SparkSession, paths: Paths, run_date: dt.date) -> FeatureEncoder:
    """The FeatureEncoder of a run date from its stored vocabularies, bins and window ad counts."""
    vocab_uri, bins_uri = paths.table(VOCAB_TABLE), paths.table(BINS_TABLE)
    if not (delta_exists(spark, vocab_uri) and delta_exists(spark, bins_uri)):
        raise FeaturesError(f"no feature vocabularies/bins under {paths.table('features')}; "
                            f"run the features job for {run_date} first")
    day = f"run_date = DATE'{run_date.isoformat()}'"
    vocab_df = spark.read.format("delta").load(vocab_uri).where(day)
    has_stable = "stable_id" in vocab_df.columns  # vocabularies stored before the id registry lack it
    vocab_tbl = vocab_df.select("field", "value", "id", *(["stable_id"] if has_stable else [])).toArrow()
    bins_rows = spark.read.format("delta").load(bins_uri).where(day).select("field", "edges").collect()
    if not bins_rows:
        raise FeaturesError(f"no bin edges stored for run date {run_date}; run the features job for it first")
    vocab_pd = vocab_tbl.to_pandas()
    # A run date built before the registry, in a table that has gained the column since, has none.
    has_stable = has_stable and not vocab_pd["stable_id"].isna().any()
    entries: dict[str, dict[int, int]] = {name: {} for name in VOCAB_FIELDS}
    stable: dict[str, dict[int, int]] = {name: {} for name in VOCAB_FIELDS}
    for name, part in vocab_pd.groupby("field"):
        entries[str(name)] = dict(zip(part["value"].tolist(), part["id"].tolist()))
        if has_stable:
            stable[str(name)] = dict(zip(part["value"].tolist(), part["stable_id"].astype("int64").tolist()))
    ad_counts: dict[int, int] = {}
    ad_counts_uri = paths.table(AD_COUNTS_TABLE)
    if delta_exists(spark, ad_counts_uri):
        ads_df = (spark.read.format("delta").load(ad_counts_uri).where(day)
                  .select("ad_id", "impressions").toArrow().to_pandas())
        ad_counts = dict(zip(ads_df["ad_id"].tolist(), ads_df["impressions"].tolist()))
    return FeatureEncoder.from_entries(entries, {r["field"]: list(r["edges"] or []) for r in bins_rows}, ad_counts,
                                       stable_ids=stable if has_stable else None)


def _run_row(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date):
    uri = Paths.of(cfg).table(RUNS_TABLE)
    rows = (spark.read.format("delta").load(uri).where(f"run_date = DATE'{run_date.isoformat()}'").collect()
            if delta_exists(spark, uri) else [])
    if not rows:
        raise FeaturesError(f"no features run stored for {run_date} in {uri}; run the features job for it first")
    return rows[0]


def load_feature_spec(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date) -> FeatureSpec:
    """The FeatureSpec (vocabulary sizes) of a run date's encoded examples."""
    return FeatureSpec.from_json(_run_row(cfg, spark, run_date)["feature_spec"])


def load_run_metadata(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date) -> dict[str, Any]:
    """The metadata dict a run date's features run returned (bronze versions, rates, sizes)."""
    return json.loads(_run_row(cfg, spark, run_date)["metadata"])


def load_encoder(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date) -> FeatureEncoder:
    """The run date's FeatureEncoder, for encoding raw rows outside Spark (serving, inference)."""
    return read_encoder(spark, Paths.of(cfg), run_date)


def examples_uri(cfg: PipelineConfig, run_date: dt.date) -> str:
    """The Delta table of a run date's encoded examples (partitioned by split)."""
    return examples_location(Paths.of(cfg).table(EXAMPLES_TABLE), run_date)


def read_examples(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date) -> DataFrame:
    """A run date's encoded examples (both splits) as a Spark DataFrame of EXAMPLE_COLUMNS."""
    _run_row(cfg, spark, run_date)  # a clear error when the date was never built
    return spark.read.format("delta").load(examples_uri(cfg, run_date)).select(*EXAMPLE_COLUMNS)


def load_examples(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date, split: str) -> pd.DataFrame:
    """A split's encoded examples of a run date as pandas (EXAMPLE_COLUMNS), in training order (row_idx)."""
    if split not in SPLITS:
        raise FeaturesError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    _run_row(cfg, spark, run_date)  # a clear error when the date was never built
    df = read_example_files(examples_uri(cfg, run_date), split).to_pandas()
    df.insert(1, "split", split)
    return df[list(EXAMPLE_COLUMNS)]
