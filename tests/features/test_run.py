"""The features job end to end on tiny inline bronze tables (window_days = 3)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from core.config import load_config
from core.paths import Paths
from features import tables
from features.encoder import load_encoder_file, save_encoder
from features.examples import read_example_files
from features.spec import MULTI_FIELDS, SINGLE_FIELDS, FeatureSpec
from features.tables import FeaturesError
from serving.requests import RequestEncoder, columns_from_records
from spark_jobs import build_window
from spark_jobs.example_assembly import DAY_ROW_READ_COLUMNS
from tests.features.bronze_fixture import D0, ad, copy_id_registry, impression, replace_bronze_day, write_bronze
from tests.features.layout_reference import assemble_split

DAYS = [D0 + dt.timedelta(days=k) for k in range(5)]  # window of DAYS[3] is DAYS[0..2], of DAYS[4] DAYS[1..3]
AD_OF_ROW = [1, 1, 1, 2, 2, 3, 1, 2]


def day_impressions(k: int, salt: int = 0) -> list[dict]:
    day = DAYS[k]
    rows = [impression(i, day, ad_id=AD_OF_ROW[i], user_id=100 + (i + salt) % 3, click=int(i % 4 == 0))
            for i in range(len(AD_OF_ROW))]
    rows[1]["user_location"] = None  # a null categorical value
    rows[2]["hist_categories"] = [5, 6 + k]  # a rare value per day
    if k == 4:  # holdout-only values: a user and an ad never seen in any window
        rows.append(impression(8, day, ad_id=9, user_id=999))
    return rows


def day_ads(k: int) -> list[dict]:
    return [ad(1, DAYS[k], price=10.0 + k), ad(2, DAYS[k], price=None), ad(3, DAYS[k], review_count=None),
            ad(9, DAYS[k], price=99.0)]


def make_cfg(root, **overrides):
    return load_config(overrides={"storage.root": str(root), "features.window_days": 3, "features.min_count": 2,
                                  "features.group_size": 2, "spark.shuffle_partitions": 1, **overrides})


def write_days(spark, cfg, ks):
    write_bronze(spark, cfg, [r for k in ks for r in day_impressions(k)], [r for k in ks for r in day_ads(k)])


def table(spark, cfg, name, run_date):
    return (spark.read.format("delta").load(Paths.of(cfg).table(name))
            .where(F.col("run_date") == F.lit(run_date)))


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """Bronze days 0..4, then incremental runs for DAYS[3] and DAYS[4] (the second reuses counts)."""
    cfg = make_cfg(tmp_path_factory.mktemp("features_incremental"))
    write_days(spark, cfg, range(5))
    first = build_window.run(cfg, spark, DAYS[3])
    second = build_window.run(cfg, spark, DAYS[4])
    return cfg, first, second


def test_incremental_counts_only_new_days(built):
    _cfg, first, second = built
    assert first["counted_days"] == [d.isoformat() for d in DAYS[0:3]]
    assert second["counted_days"] == [DAYS[3].isoformat()]
    assert second["window_days"] == [d.isoformat() for d in DAYS[1:4]]
    assert second["rows"] == {"train": 24, "holdout": 9}
    assert second["label_rate"]["train"] == pytest.approx(6 / 24)


def test_full_rebuild_gives_identical_outputs(spark, built, tmp_path):
    """A full rebuild from bronze, in a warehouse that holds only the bronze tables and the id
    registry (the values' permanent ids are state, not derived data), equals the incremental run."""
    cfg, _first, incremental = built
    full_cfg = make_cfg(tmp_path / "full", **{"features.incremental": False})
    write_days(spark, full_cfg, range(5))
    registry = tables.ID_REGISTRY_TABLE
    copy_id_registry(cfg, full_cfg)
    full = build_window.run(full_cfg, spark, DAYS[4])
    assert full["counted_days"] == [d.isoformat() for d in DAYS[1:4]]
    assertDataFrameEqual(spark.read.format("delta").load(Paths.of(full_cfg).table(registry)),
                         spark.read.format("delta").load(Paths.of(cfg).table(registry)))  # no id added
    for name in (tables.VOCAB_TABLE, tables.BINS_TABLE, tables.AD_COUNTS_TABLE):
        assertDataFrameEqual(table(spark, full_cfg, name, DAYS[4]), table(spark, cfg, name, DAYS[4]))
    assertDataFrameEqual(tables.read_examples(full_cfg, spark, DAYS[4]), tables.read_examples(cfg, spark, DAYS[4]))
    for key in ("feature_spec", "vocab_sizes", "bin_edges", "rows", "oov_rate", "oov_rate_window"):
        assert full[key] == incremental[key], key


def test_vocabulary_bins_and_oov_of_a_run(spark, built):
    cfg, _first, second = built
    vocab = table(spark, cfg, tables.VOCAB_TABLE, DAYS[4]).where(F.col("field").isin("user_location", "ad_id",
                                                                                       "hist_categories"))
    expected = spark.createDataFrame([
        (DAYS[4], "user_location", 1, 1, 21, 1),  # the null location of each day is not a value
        (DAYS[4], "ad_id", 1, 1, 12, 1), (DAYS[4], "ad_id", 2, 2, 9, 2), (DAYS[4], "ad_id", 3, 3, 3, 3),
        # 6+k occur once a day: below min_count 2; stable ids 2..5 went to 6, 7, 8, 9 (days 0..3)
        (DAYS[4], "hist_categories", 5, 1, 24, 1),
    ], "run_date date, field string, value bigint, id int, count bigint, stable_id bigint")
    assertDataFrameEqual(vocab, expected)
    # price (16 bins asked): ad 1 at 11, 12, 13 (4 impressions each), ad 3 at 30 (3), ad 2 null (9);
    # so the k/16 quantiles of 15 non-null values are 11 (k <= 4), 12, 13 (k <= 12) and 30.
    # review_count: 1 (12 impressions), 2 (9), null (3).
    bins = table(spark, cfg, tables.BINS_TABLE, DAYS[4])
    assertDataFrameEqual(bins, spark.createDataFrame(
        [(DAYS[4], "price", [11.0, 12.0, 13.0, 30.0]), (DAYS[4], "review_count", [1.0, 2.0])],
        "run_date date, field string, edges array<double>"))
    assert second["oov_rate_window"]["user_location"] == pytest.approx(3 / 24)
    assert second["oov_rate"]["holdout"]["user_id"] == pytest.approx(1 / 9)  # user 999 is unseen
    assert second["vocab_sizes"]["price"] == 6 and second["vocab_sizes"]["ad_id"] == 4
    holdout = tables.read_examples(cfg, spark, DAYS[4]).where("split = 'holdout' AND ad_id = 9")
    row = holdout.select("f_user_id", "f_ad_id", "f_price", "is_cold").collect()
    assert [tuple(r) for r in row] == [(0, 0, 5, True)]  # unseen user and ad -> OOV; 99.0 above all edges


def test_groups_and_row_order(spark, built):
    cfg, _first, _second = built
    examples = tables.read_examples(cfg, spark, DAYS[4])
    per_group = examples.groupBy("split", "group_id").agg(F.count(F.lit(1)).alias("n"),
                                                          F.countDistinct("ad_id").alias("ads"))
    assert per_group.where((F.col("n") > 2) | (F.col("ads") != 1)).count() == 0
    per_split = examples.groupBy("split").agg(F.count(F.lit(1)).alias("n"),
                                              F.countDistinct("impression_id").alias("ids"),
                                              F.countDistinct("row_idx").alias("idx"), F.max("row_idx").alias("top"))
    assertDataFrameEqual(per_split, spark.createDataFrame([("train", 24, 24, 24, 23), ("holdout", 9, 9, 9, 8)],
                                                          "split string, n bigint, ids bigint, idx bigint, top bigint"))


def test_readers_for_the_trainer(spark, built):
    cfg, _first, second = built
    spec = tables.load_feature_spec(cfg, spark, DAYS[4])
    assert spec == FeatureSpec(**second["feature_spec"])
    train = tables.load_examples(cfg, spark, DAYS[4], "train")
    assert list(train.columns) == list(tables.EXAMPLE_COLUMNS)
    assert train["row_idx"].tolist() == list(range(24))
    for name, size in spec.single.items():
        assert train[f"f_{name}"].between(0, size - 1).all(), name
    assert tables.load_run_metadata(cfg, spark, DAYS[4])["counted_days"] == second["counted_days"]
    encoder = tables.load_encoder(cfg, spark, DAYS[4])
    assert encoder.encode_single("ad_id", 2) == 2 and encoder.encode_single("price", 12.5) == 3
    with pytest.raises(FeaturesError, match="unknown split 'test'"):
        tables.load_examples(cfg, spark, DAYS[4], "test")
    with pytest.raises(FeaturesError, match="2026-03-01"):
        tables.load_feature_spec(cfg, spark, DAYS[0])


def test_missing_window_days_error_or_short_window(spark, tmp_path, caplog):
    cfg = make_cfg(tmp_path / "short")
    write_days(spark, cfg, [0, 2, 3])
    with pytest.raises(FeaturesError, match=r"1 of 3 window days .*: 2026-03-02;"):
        build_window.run(cfg, spark, DAYS[3])
    with pytest.raises(FeaturesError, match="holdout day 2026-03-05"):
        build_window.run(cfg, spark, DAYS[4])
    short_cfg = cfg.replace({"features.allow_short_window": True})
    with caplog.at_level(logging.WARNING, logger="features"):
        meta = build_window.run(short_cfg, spark, DAYS[3])
    assert "short window, 1 missing day(s): 2026-03-02" in caplog.text
    assert meta["window_days"] == ["2026-03-01", "2026-03-03"] and meta["missing_days"] == ["2026-03-02"]
    run_row = table(spark, cfg, tables.RUNS_TABLE, DAYS[3]).select("window_days", "short_window").collect()
    assert [tuple(r) for r in run_row] == [([DAYS[0], DAYS[2]], True)]
    assert meta["rows"]["train"] == 16


def test_rerun_replaces_and_pinned_versions_reproduce(spark, tmp_path):
    cfg = make_cfg(tmp_path / "rerun")
    write_days(spark, cfg, range(4))
    first = build_window.run(cfg, spark, DAYS[3])
    first_examples = tables.read_examples(cfg, spark, DAYS[3]).toPandas()

    replace_bronze_day(spark, cfg, DAYS[1], day_impressions(1, salt=1)[:6])  # late correction of a window day
    second = build_window.run(cfg, spark, DAYS[3])
    assert second["counted_days"] == [DAYS[1].isoformat()]  # only the changed day is recounted
    assert second["rows"]["train"] == 22
    assert tables.read_examples(cfg, spark, DAYS[3]).count() == 22 + 8  # replaced, not appended

    again = build_window.run(cfg, spark, DAYS[3], bronze_versions=first["bronze_versions"])
    assert again["bronze_versions"] == first["bronze_versions"] and again["rows"] == first["rows"]
    assertDataFrameEqual(tables.read_examples(cfg, spark, DAYS[3]), spark.createDataFrame(first_examples))
    with pytest.raises(FeaturesError, match=r"bronze_versions\['ads'\] = 99"):
        build_window.run(cfg, spark, DAYS[3], bronze_versions={"ads": 99})


def test_serving_encodes_raw_requests_to_the_examples_ids(spark, built, tmp_path):
    """The predictor's encoder (raw values, via the saved encoder.npz) gives every impression of the
    run date the ids its examples got from the stored stable ids, in both splits."""
    cfg, _first, _second = built
    path = tmp_path / "encoder.npz"
    save_encoder(tables.load_encoder(cfg, spark, DAYS[4]), path)
    loaded = load_encoder_file(path)
    assert loaded.stable_ids is not None
    encoder = RequestEncoder(loaded, SINGLE_FIELDS, MULTI_FIELDS)
    examples = tables.read_examples(cfg, spark, DAYS[4]).toPandas().set_index("impression_id")
    for k, split in ((3, "train"), (4, "holdout")):
        catalog = {a["ad_id"]: a for a in day_ads(k)}
        requests = []
        for row in day_impressions(k):
            request = {f: v for f, v in row.items() if f not in ("dt", "click")}
            ad_row = catalog[row["ad_id"]]
            request.update({f: ad_row[f] for f in ("category_id", "parent_category_id", "brand_id", "shop_id",
                                                    "price", "review_count", "title_words")})
            requests.append(request)
        encoded = encoder.encode(columns_from_records(requests))
        for i, request in enumerate(requests):
            example = examples.loc[request["impression_id"]]
            assert example["split"] == split
            for j, name in enumerate(SINGLE_FIELDS):
                assert encoded.single[i, j] == example[f"f_{name}"], (request["impression_id"], name)
            for name in MULTI_FIELDS:
                start = encoded.multi_offsets[name][i]
                n = len(request[name] or [])
                assert encoded.multi_values[name][start:start + n].tolist() == list(example[f"m_{name}"]), name


def test_examples_equal_the_numpy_reference(spark, built):
    """The Spark-built examples table of a run date, read back from its live files, equals the numpy
    reference layout and encoding of the same stored day rows, row for row, per split."""
    cfg, _first, second = built
    run_date = DAYS[4]
    encoder = tables.load_encoder(cfg, spark, run_date)
    day_rows = spark.read.format("delta").load(Paths.of(cfg).table(tables.DAY_ROWS_TABLE))
    days = {"train": [dt.date.fromisoformat(d) for d in second["window_days"]], "holdout": [run_date]}
    for split, split_days in days.items():
        parts = [(d, day_rows.where(F.col("dt") == F.lit(d)).select(*DAY_ROW_READ_COLUMNS).toArrow())
                 for d in split_days]
        expected = assemble_split(encoder, parts, split, run_date, cfg.features.group_size, cfg.features.seed)
        got = read_example_files(tables.examples_uri(cfg, run_date), split)
        assert got.equals(expected), split
        # The statistics the writing job observed describe the table it wrote.
        labels, groups = got.column("label").to_pylist(), got.column("group_id").to_pylist()
        assert got.num_rows == second["rows"][split]
        assert second["label_rate"][split] == pytest.approx(sum(labels) / len(labels))
        assert second["groups"][split] == max(groups) + 1
        cold = sum(got.column("is_cold").to_pylist()) / got.num_rows
        oov = sum(v == 0 for v in got.column("f_user_id").to_pylist()) / got.num_rows
        assert second["cold_rate"][split] == pytest.approx(cold)
        assert second["oov_rate"][split]["user_id"] == pytest.approx(oov)
