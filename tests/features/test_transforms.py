"""Pure DataFrame transformations of the features job on 3-10 row inline DataFrames."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from core.config import FeaturesConfig, load_config
from core.paths import Paths
from features.encoder import FeatureEncoder
from features.tables import FeaturesError
from spark_jobs import id_registry
from spark_jobs.build_window import min_count_thresholds
from spark_jobs.example_assembly import AD_KEY, NULL_AD_KEY, WITHIN, examples_frame, layout_inputs, with_layout
from tests.features.layout_reference import ad_group_layout
from spark_jobs.feature_transforms import (agg_bin_edges, agg_daily_value_counts, agg_vocabulary,
                                           agg_window_counts, with_ad_positions)
from tests.features.bronze_fixture import D0, JOINED_DDL, as_tuples, impression, joined

COUNTS_DDL = "field string, value bigint, num_value double, count bigint"


def test_agg_daily_value_counts_counts_nulls_and_array_elements(spark):
    rows = joined([impression(0, D0, ad_id=1, user_id=7, hist_shops=[3, 3]),
                   impression(1, D0, ad_id=2, user_id=7, hist_shops=None,
                              _catalog={"price": None, "title_words": [None, 7]}),
                   impression(2, D0 + dt.timedelta(days=1), ad_id=1, user_id=None, hist_shops=[],
                              _catalog={"price": float("nan")})])
    df = spark.createDataFrame(as_tuples(rows, JOINED_DDL), JOINED_DDL)
    got = (df.transform(agg_daily_value_counts)
           .where(F.col("field").isin("user_id", "price", "title_words", "hist_shops")))
    d1 = D0 + dt.timedelta(days=1)
    expected = spark.createDataFrame([
        (D0, "user_id", 7, None, 2), (d1, "user_id", None, None, 1),
        (D0, "price", None, 10.0, 1), (D0, "price", None, None, 1), (d1, "price", None, None, 1),
        (D0, "title_words", 7, None, 2), (D0, "title_words", 1, None, 1), (D0, "title_words", None, None, 1),
        (d1, "title_words", 7, None, 1), (d1, "title_words", 1, None, 1),
        (D0, "hist_shops", 3, None, 2),
    ], "dt date, " + COUNTS_DDL)
    assertDataFrameEqual(got, expected)


def test_agg_window_counts_sums_days(spark):
    daily = spark.createDataFrame([(D0, "user_id", 7, None, 2), (D0 + dt.timedelta(days=1), "user_id", 7, None, 3),
                                   (D0, "user_id", None, None, 1), (D0, "price", None, 2.5, 4)],
                                  "dt date, " + COUNTS_DDL)
    expected = spark.createDataFrame([("user_id", 7, None, 5), ("user_id", None, None, 1), ("price", None, 2.5, 4)],
                                     COUNTS_DDL)
    assertDataFrameEqual(daily.transform(agg_window_counts), expected)


def test_agg_vocabulary_thresholds_and_id_order(spark):
    counts = spark.createDataFrame([
        ("user_id", 7, None, 5), ("user_id", 8, None, 9), ("user_id", 9, None, 4), ("user_id", 3, None, 5),
        ("user_id", None, None, 50),  # nulls never enter a vocabulary
        ("title_words", 1, None, 2), ("title_words", 2, None, 1),  # per-field threshold 2
        ("price", None, 9.5, 100),  # numeric fields are binned, not in vocabularies
    ], COUNTS_DDL)
    thresholds = min_count_thresholds(FeaturesConfig(min_count=5, min_count_per_field={"title_words": 2}))
    expected = spark.createDataFrame([("user_id", 8, 1, 9), ("user_id", 3, 2, 5), ("user_id", 7, 3, 5),
                                      ("title_words", 1, 1, 2)], "field string, value bigint, id int, count bigint")
    assertDataFrameEqual(counts.transform(agg_vocabulary(thresholds)), expected)


def test_min_count_per_field_rejects_unknown_and_numeric_fields():
    with pytest.raises(FeaturesError, match="'title_wrds'"):
        min_count_thresholds(FeaturesConfig(min_count_per_field={"title_wrds": 3}))
    with pytest.raises(FeaturesError, match="binned"):
        min_count_thresholds(FeaturesConfig(min_count_per_field={"price": 3}))


def test_agg_bin_edges_exact_weighted_quantiles(spark):
    counts = spark.createDataFrame([
        ("price", None, 1.0, 4), ("price", None, 2.0, 2), ("price", None, 3.0, 1), ("price", None, 5.0, 1),
        ("price", None, None, 3),  # nulls get bin 0 and do not shift the quantiles
        ("review_count", None, 0.0, 1), ("review_count", None, 10.0, 1), ("review_count", None, 20.0, 1),
        ("review_count", None, 30.0, 1),
        ("user_id", 4, None, 10),
    ], COUNTS_DDL)
    expected = spark.createDataFrame([("price", [1.0, 2.0]), ("review_count", [0.0, 10.0, 20.0])],
                                     "field string, edges array<double>")
    assertDataFrameEqual(counts.transform(agg_bin_edges(4)), expected)


@pytest.mark.parametrize("lookup_max_span", [id_registry.LOOKUP_MAX_SPAN, 0])  # id arrays, or joins and regroup
def test_encode_day_rows_oov_and_bins(spark, tmp_path, lookup_max_span):
    """Joined rows -> registered and stored as stable ids (Spark) -> the run's ids (numpy)."""
    rows = joined([impression(0, D0, ad_id=1, user_id=100, click=1),
                   impression(1, D0, ad_id=2, user_id=555),  # unseen user, rare ad
                   impression(2, D0, ad_id=3, user_id=None,  # null user, ad unseen in the window
                              _catalog={"price": None, "review_count": None, "title_words": None,
                                        "category_id": None}),
                   impression(3, D0, ad_id=1, user_id=101, _catalog={"price": 99.0, "title_words": [None, 7, 8]})])
    day_rows = spark.createDataFrame(as_tuples(rows, JOINED_DDL), JOINED_DDL).transform(with_ad_positions)
    paths = Paths.of(load_config(overrides={"storage.root": str(tmp_path)}))
    added = id_registry.register(spark, paths, day_rows)
    assert added["user_id"] == 3 and added["title_words"] == 4  # users 100, 101, 555; words 1, 2, 7, 8
    registry = id_registry.read_registry(spark, paths).toPandas()
    stable = {f: dict(zip(part["value"], part["id"])) for f, part in registry.groupby("field")}
    assert stable["user_id"] == {100: 1, 101: 2, 555: 3}  # by (first day, value)
    assert id_registry.register(spark, paths, day_rows) == {}  # registered values keep their ids
    vocab = {"user_id": {101: 1, 100: 2}, "ad_id": {1: 1}, "category_id": {11: 1}, "title_words": {7: 1}}
    encoder = FeatureEncoder.from_entries(
        vocab, {"price": [10.0, 20.0], "review_count": [1.0]}, ad_window_counts={1: 30, 2: 2},
        stable_ids={f: {v: stable[f][v] for v in entries} for f, entries in vocab.items()})
    stored = id_registry.encode_days(day_rows, id_registry.read_registry(spark, paths), lookup_max_span)
    examples = examples_frame(stored, encoder, D0, group_size=25, seed=1, n_files=1)
    got = examples.select("impression_id", "ad_id", "label", "is_cold", "category_idx", "f_user_id", "f_ad_id",
                          "f_price", "f_review_count", "m_title_words", "m_hist_shops")
    expected = spark.createDataFrame([
        ("0301-0", 1, 1, False, 1, 2, 1, 1, 1, [1, 0], []),
        ("0301-1", 2, 0, True, 0, 0, 0, 2, 2, [1, 0], []),  # category 10 is not in the vocabulary
        ("0301-2", 3, 0, True, 0, 0, 0, 0, 0, [], []),
        ("0301-3", 1, 0, False, 1, 1, 1, 3, 1, [0, 1, 0], []),
    ], "impression_id string, ad_id bigint, label int, is_cold boolean, category_idx int, "
       "f_user_id int, f_ad_id int, f_price int, f_review_count int, m_title_words array<int>, "
       "m_hist_shops array<int>")
    assertDataFrameEqual(got, expected)
    assert sorted(r.row_idx for r in examples.collect()) == [0, 1, 2, 3]
    assert {r.split for r in examples.collect()} == {"holdout"}  # the run date's own rows


def laid_out(spark, df, group_size: int, seed: int, run_date: dt.date):
    """df (impression_id, event_ts, ad_id, dt) with the group_id and row_idx with_layout gives it."""
    inputs = df.transform(with_ad_positions).transform(lambda d: layout_inputs(d, run_date))
    return (with_layout(inputs.withColumn("split", F.lit("train")), group_size, seed, run_date)  # one split
            .select("impression_id", "ad_id", "group_id", "row_idx"))


@pytest.mark.parametrize("group_size", [1, 3, 25])
def test_with_layout_equals_the_numpy_reference(spark, group_size):
    """Spark's layout gives every row the group_id and row_idx of the numpy reference: null ads,
    ids at both ends of the long range, ads of 1..80 rows over several days, two splits."""
    rng = np.random.default_rng(group_size)
    pool = np.array([NULL_AD_KEY, -(2**62), -5, 0, 3, 7, 2**62, 2**63 - 1, *range(100, 130)], dtype=np.int64)
    rows = []
    for split in ("train", "holdout"):
        for ad_key in pool:
            for day in range(int(rng.integers(1, 4))):
                rows += [(split, int(ad_key), (day << 32) | pos, f"{split}-{ad_key}-{day}-{pos}")
                         for pos in range(int(rng.integers(1, 30)))]
    rng.shuffle(rows)
    df = spark.createDataFrame(rows, f"split string, {AD_KEY} bigint, {WITHIN} bigint, impression_id string")
    got = {r.impression_id: (r.group_id, r.row_idx)
           for r in with_layout(df, group_size, 17, D0).collect()}
    for split in ("train", "holdout"):
        mine = [r for r in rows if r[0] == split]
        group_id, row_idx = ad_group_layout(np.array([r[1] for r in mine], np.int64),
                                            np.array([r[2] for r in mine], np.int64), group_size, 17, D0)
        assert {r[3]: (g, i) for r, g, i in zip(mine, group_id.tolist(), row_idx.tolist())} == \
            {k: v for k, v in got.items() if k.startswith(split + "-")}


def _grouping_input(spark):
    rows = [impression(i, D0, ad_id=1) for i in range(4)] + [impression(5, D0, ad_id=2),
                                                              impression(6, D0, ad_id=None)]
    rows += [impression(7, D0 + dt.timedelta(days=1), ad_id=1)]  # the ad's fifth row, on the next day
    rows.reverse()  # input order must not matter
    ddl = "impression_id string, event_ts timestamp, ad_id bigint, dt date"
    return spark.createDataFrame(as_tuples(rows, ddl), ddl)


def test_ad_group_layout_caps_groups_and_keeps_every_impression_once(spark):
    grouped = laid_out(spark, _grouping_input(spark), group_size=2, seed=17, run_date=D0)
    by_group = Window.partitionBy("group_id")
    got = grouped.select("impression_id", "ad_id",
                         (F.col("row_idx") - F.min("row_idx").over(by_group)).alias("pos_in_group"),
                         F.count(F.lit(1)).over(by_group).alias("group_rows"),
                         F.size(F.collect_set(F.coalesce("ad_id", F.lit(-1))).over(by_group)).alias("ads_in_group"))
    expected = spark.createDataFrame([
        ("0301-0", 1, 0, 2, 1), ("0301-1", 1, 1, 2, 1),
        ("0301-2", 1, 0, 2, 1), ("0301-3", 1, 1, 2, 1),
        ("0302-7", 1, 0, 1, 1), ("0301-5", 2, 0, 1, 1), ("0301-6", None, 0, 1, 1),
    ], "impression_id string, ad_id bigint, pos_in_group bigint, group_rows bigint, ads_in_group int")
    assertDataFrameEqual(got, expected)
    # row_idx enumerates the rows exactly once (0..n-1), group ids are 0..G-1, and every group
    # occupies a contiguous row range.
    spans = (grouped.groupBy("group_id")
             .agg(F.min("row_idx").alias("lo"), F.max("row_idx").alias("hi"), F.count(F.lit(1)).alias("n")))
    assert spans.where(F.col("hi") - F.col("lo") + 1 != F.col("n")).count() == 0
    totals = grouped.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("row_idx").alias("d"),
                         F.max("row_idx").alias("max_idx"), F.max("group_id").alias("max_g"),
                         F.countDistinct("group_id").alias("g"))
    assertDataFrameEqual(totals, spark.createDataFrame([(7, 7, 6, 4, 5)],
                                                       "n bigint, d bigint, max_idx bigint, max_g bigint, g bigint"))


def test_ad_group_layout_order_is_seeded(spark):
    rows = [impression(i, D0, ad_id=i) for i in range(10)]
    ddl = "impression_id string, event_ts timestamp, ad_id bigint, dt date"
    df = spark.createDataFrame(as_tuples(rows, ddl), ddl)

    def order(seed: int, run_date: dt.date = D0) -> list[int]:
        out = laid_out(spark, df, 25, seed, run_date).orderBy("row_idx").select("ad_id").collect()
        return [r.ad_id for r in out]

    assert order(17) == order(17)
    assert sorted(order(17)) == list(range(10))
    assert order(17) != order(18)
    assert order(17) != order(17, D0 + dt.timedelta(days=1))
