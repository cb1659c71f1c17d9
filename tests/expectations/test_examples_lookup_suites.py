"""Encoded-examples and lookup-table suites on small projected DataFrames."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from expectations.examples import build_examples_suite, project_examples
from expectations.lookup import build_lookup_suite, project_lookup
from expectations.runner import DataQualityError, raise_on_critical, validate
from features.spec import FeatureSpec
from tests.expectations.conftest import engine_of, failed_keys

SPEC = FeatureSpec(single={"user_id": 5, "ad_id": 4, "category_id": 3}, multi={"title_words": 6})
EXAMPLES_DDL = ("run_date date, split string, impression_id string, ad_id bigint, category_idx int, label int, "
                "f_user_id int, f_ad_id int, f_category_id int, m_title_words array<int>")
RUN = dt.date(2026, 2, 2)


def example(i: int, label: int = 0, **changes):
    row = {"run_date": RUN, "split": "holdout", "impression_id": f"i{i}", "ad_id": 100 + i % 3,
           "category_idx": i % 3, "label": label, "f_user_id": i % 5, "f_ad_id": 1 + i % 3,
           "f_category_id": i % 3, "m_title_words": [1, 5] if i % 2 else []}
    row.update(changes)
    return tuple(row.values())


def good_examples():
    return [example(i, label=int(i == 0)) for i in range(10)]


def test_projection_names_missing_columns(spark):
    df = spark.createDataFrame(good_examples(), EXAMPLES_DDL).drop("m_title_words")
    with pytest.raises(ValueError, match="m_title_words"):
        project_examples(df, SPEC)


def test_clean_examples_pass(tmp_cfg, spark):
    df = spark.createDataFrame(good_examples(), EXAMPLES_DDL)
    result = validate(tmp_cfg, project_examples(df, SPEC), build_examples_suite(SPEC, tmp_cfg, "holdout"),
                      "examples_holdout", "2026-02-02")
    assert result.success, result.failed


def test_out_of_vocab_ids_and_null_labels_fail(engine_cfg, spark):
    engine, tmp_cfg = engine_cfg
    rows = good_examples() + [
        example(10, f_user_id=5),  # id == vocab size: out of range
        example(11, category_idx=3),
        example(12, m_title_words=[2, 6]),  # array element beyond the title vocabulary
        example(13, m_title_words=[-1]),
        example(14, label=None),
        example(15, m_title_words=None),
    ]
    df = spark.createDataFrame(rows, EXAMPLES_DDL)
    result = validate(tmp_cfg, project_examples(df, SPEC), build_examples_suite(SPEC, tmp_cfg, "train"),
                      "examples_train", "bad-ids")
    assert engine_of(result) == engine
    assert failed_keys(result.failed_critical) == {
        ("expect_column_values_to_be_between", "f_user_id"),
        ("expect_column_values_to_be_between", "category_idx"),
        ("expect_column_values_to_be_between", "m_title_words__max"),
        ("expect_column_values_to_be_between", "m_title_words__min"),
        ("expect_column_values_to_not_be_null", "label"),
        ("expect_column_values_to_not_be_null", "m_title_words__size"),
    }


def test_empty_holdout_fails(tmp_cfg, spark):
    df = spark.createDataFrame([], EXAMPLES_DDL)
    result = validate(tmp_cfg, project_examples(df, SPEC), build_examples_suite(SPEC, tmp_cfg, "holdout"),
                      "examples_holdout", "empty")
    assert ("expect_table_row_count_to_be_between", None) in failed_keys(result.failed_critical)
    with pytest.raises(DataQualityError, match="examples_holdout"):
        raise_on_critical(result)


def test_bad_split_is_an_error(tmp_cfg):
    with pytest.raises(ValueError, match="'valid'"):
        build_examples_suite(SPEC, tmp_cfg, "valid")


LOOKUP_DDL = "ad_id bigint, embedding array<float>"


def test_lookup_projection_computes_dim_norm_and_bad_values(spark):
    df = spark.createDataFrame([(1, [3.0, 4.0]), (2, [float("nan"), 1.0]), (3, [float("inf")]), (4, None)],
                               LOOKUP_DDL)
    got = {r["ad_id"]: r for r in project_lookup(df).collect()}
    assert (got[1]["dim"], got[1]["norm"], got[1]["has_nan_or_inf"]) == (2, 5.0, False)
    assert got[2]["has_nan_or_inf"] is True and math.isnan(got[2]["norm"])
    assert got[3]["has_nan_or_inf"] is True
    assert got[4]["dim"] is None and got[4]["has_nan_or_inf"] is False


def test_lookup_suite_passes_clean_and_catches_bad_tables(engine_cfg, spark):
    engine, tmp_cfg = engine_cfg
    clean = [(1, [0.6, 0.8, 0.0]), (2, [0.0, 1.0, 0.0]), (3, [1.0, 1.0, 1.0])]
    result = validate(tmp_cfg, project_lookup(spark.createDataFrame(clean, LOOKUP_DDL)),
                      build_lookup_suite(3, 0.5, 2.0), "lookup", "clean")
    assert result.success, result.failed
    assert engine_of(result) == engine

    bad = clean + [(1, [0.6, 0.8, 0.0]),  # duplicate ad id
                   (4, [float("nan"), 0.0, 0.0]),  # NaN: bad value and NaN norm
                   (5, [1.0, 0.0])]  # wrong dimension
    result = validate(tmp_cfg, project_lookup(spark.createDataFrame(bad, LOOKUP_DDL)),
                      build_lookup_suite(3, 0.5, 2.0), "lookup", "bad")
    # A NaN keeps even a small frame on Spark, whose bounds fail on NaN (pandas would skip it).
    assert engine_of(result) == "spark"
    assert failed_keys(result.failed_critical) == {
        ("expect_column_values_to_be_unique", "ad_id"),
        ("expect_column_values_to_be_in_set", "has_nan_or_inf"),
        ("expect_column_values_to_be_between", "dim"),
        ("expect_column_values_to_be_between", "norm"),
    }
