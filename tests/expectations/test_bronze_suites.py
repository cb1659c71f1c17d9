"""Bronze impressions / ads / landing-schema suites, run through the GX runner with Data Docs."""

from __future__ import annotations

import os
import re

import pytest

from expectations.bronze import (build_ads_suite, build_impressions_suite, build_landing_schema_suite,
                                 volume_bounds)
from expectations.runner import DataQualityError, get_gx_context, raise_on_critical, validate
from tests.expectations.conftest import AD_DDL, ad_row, clean_rows, engine_of, failed_keys, impression_row

NO_HISTORY = None


def test_volume_bounds_follow_the_trailing_mean(tmp_cfg):
    assert volume_bounds(tmp_cfg, None) == (1, None)
    assert volume_bounds(tmp_cfg, {"mean_rows": 100.0, "days": 7}) == (50, 200)
    assert volume_bounds(tmp_cfg, {"mean_rows": 0.0, "days": 0}) == (1, None)
    with pytest.raises(ValueError, match="mean_rows"):
        volume_bounds(tmp_cfg, {"rows": 3})


def test_clean_day_passes(tmp_cfg, impressions_df):
    result = validate(tmp_cfg, impressions_df(clean_rows(20)),
                      build_impressions_suite(tmp_cfg, {"mean_rows": 22.0, "days": 3}), "bronze_impressions",
                      "2026-02-02")
    assert result.success, result.failed
    assert result.failed == [] and result.failed_critical == []
    assert result.statistics["unsuccessful_expectations"] == 0
    assert os.path.isfile(result.report_path)
    assert result.report_path.startswith(os.path.join(str(tmp_cfg.storage.root), "reports", "data_docs"))
    raise_on_critical(result)  # no critical failure: no error


def test_bad_rows_fail_exactly_their_expectations(engine_cfg, impressions_df):
    engine, tmp_cfg = engine_cfg
    rows = clean_rows(20)
    rows += [
        impression_row(20, user_id=None),  # null required field
        impression_row(21, click=2),  # label outside {0, 1}
        impression_row(22, hour=25),  # hour out of range
        impression_row(23, impression_id="2026-02-02-0"),  # duplicate impression id
        impression_row(24, user_price_sensitivity=9),  # optional field out of range: not critical
    ]
    result = validate(tmp_cfg, impressions_df(rows), build_impressions_suite(tmp_cfg, NO_HISTORY),
                      "bronze_impressions", "bad-rows")
    assert not result.success and engine_of(result) == engine
    assert failed_keys(result.failed) == {
        ("expect_column_values_to_not_be_null", "user_id"),
        ("expect_column_values_to_be_in_set", "click"),
        ("expect_column_values_to_be_between", "hour"),
        ("expect_column_values_to_be_unique", "impression_id"),
        ("expect_column_values_to_be_between", "user_price_sensitivity"),
    }
    assert failed_keys(result.failed_critical) == failed_keys(result.failed) - {
        ("expect_column_values_to_be_between", "user_price_sensitivity")}
    with pytest.raises(DataQualityError) as err:
        raise_on_critical(result)
    message = str(err.value)
    for name in ("expect_column_values_to_not_be_null(column=user_id", "expect_column_values_to_be_in_set(column=click",
                 "expect_column_values_to_be_between(column=hour", "expect_column_values_to_be_unique"):
        assert name in message
    assert "user_price_sensitivity" not in message
    reports = re.findall(r"report: (\S+)", message)
    assert reports and all(os.path.isfile(p) for p in reports)

    # The Data Docs page shows the failed expectation (our description names the type) with GX's
    # failure icon in the same table row.
    page = open(result.report_path, encoding="utf-8").read()
    rows_html = re.split(r"<tr\b", page)
    click_rows = [r for r in rows_html if "CRITICAL expect_column_values_to_be_in_set(column=click" in r]
    assert click_rows, "failed expectation not rendered in Data Docs"
    assert all("fa-times" in r for r in click_rows)
    assert "Failed" in page


def test_low_volume_vs_trailing_days_fails_critically(tmp_cfg, impressions_df):
    result = validate(tmp_cfg, impressions_df(clean_rows(20)),
                      build_impressions_suite(tmp_cfg, {"mean_rows": 100.0, "days": 7}), "bronze_impressions",
                      "low-volume")
    assert failed_keys(result.failed_critical) == {("expect_table_row_count_to_be_between", None)}
    assert "observed 20" in result.failed_critical[0]


def test_ctr_out_of_bounds_fails_critically(tmp_cfg, impressions_df):
    result = validate(tmp_cfg, impressions_df(clean_rows(20, clicks=10)),
                      build_impressions_suite(tmp_cfg, NO_HISTORY), "bronze_impressions", "high-ctr")
    assert failed_keys(result.failed_critical) == {("expect_column_mean_to_be_between", "click")}
    assert "observed 0.5" in result.failed_critical[0]


def test_empty_day_fails_critically(tmp_cfg, impressions_df):
    result = validate(tmp_cfg, impressions_df([]), build_impressions_suite(tmp_cfg, NO_HISTORY),
                      "bronze_impressions", "empty-day")
    assert ("expect_table_row_count_to_be_between", None) in failed_keys(result.failed_critical)
    with pytest.raises(DataQualityError, match="expect_table_row_count_to_be_between"):
        raise_on_critical(result)


def test_rerunning_the_same_validation_works(tmp_cfg, impressions_df):
    df = impressions_df(clean_rows(20))
    first = validate(tmp_cfg, df, build_impressions_suite(tmp_cfg, NO_HISTORY), "bronze_impressions", "rerun")
    second = validate(tmp_cfg, df, build_impressions_suite(tmp_cfg, NO_HISTORY), "bronze_impressions", "rerun")
    assert first.success and second.success
    assert os.path.isfile(first.report_path) and os.path.isfile(second.report_path)
    assert first.report_path != second.report_path  # each run keeps its own page
    assert not df.is_cached  # the runner releases the batch GX persisted
    # A changed suite under the same name replaces the stored one instead of failing.
    third = validate(tmp_cfg, df, build_impressions_suite(tmp_cfg, {"mean_rows": 100.0, "days": 7}),
                     "bronze_impressions", "rerun")
    assert failed_keys(third.failed) == {("expect_table_row_count_to_be_between", None)}
    stored = get_gx_context(tmp_cfg).suites.get("bronze_impressions")
    row_count = [e for e in stored.expectations if e.expectation_type == "expect_table_row_count_to_be_between"]
    assert [e.min_value for e in row_count] == [50]


def test_pandas_dataframes_validate_too(tmp_cfg, impressions_df):
    pdf = impressions_df(clean_rows(20)).toPandas()
    pdf.loc[3, "hour"] = 30
    result = validate(tmp_cfg, pdf, build_impressions_suite(tmp_cfg, NO_HISTORY), "bronze_impressions_pandas",
                      "pandas")
    assert failed_keys(result.failed) == {("expect_column_values_to_be_between", "hour")}
    assert "30" in result.failed[0] and os.path.isfile(result.report_path)


def test_landing_schema_drift_is_not_critical(tmp_cfg, impressions_df):
    drifted = impressions_df(clean_rows(3)).drop("dt", "hist_shops").withColumnRenamed("query_words", "surprise")
    result = validate(tmp_cfg, drifted.limit(0), build_landing_schema_suite(tmp_cfg), "landing_impressions",
                      "drift")
    assert failed_keys(result.failed) == {("expect_table_columns_to_match_set", None)}
    assert result.failed_critical == []
    assert "unexpected columns [\"surprise\"], missing columns [\"hist_shops\", \"query_words\"]" in result.failed[0]
    raise_on_critical(result)  # drift alone does not stop the run


def test_ads_suite_catches_bad_catalog_rows(engine_cfg, spark):
    engine, tmp_cfg = engine_cfg
    good = [ad_row(1), ad_row(2), ad_row(3)]
    clean = validate(tmp_cfg, spark.createDataFrame(good, AD_DDL), build_ads_suite(tmp_cfg), "bronze_ads", "ads-ok")
    assert clean.success, clean.failed
    bad = good + [ad_row(1), ad_row(4, category_id=None), ad_row(5, price=-1.0), ad_row(6, review_count=-2),
                  ad_row(None, category_id=1)]
    result = validate(tmp_cfg, spark.createDataFrame(bad, AD_DDL), build_ads_suite(tmp_cfg), "bronze_ads", "ads-bad")
    assert engine_of(clean) == engine_of(result) == engine
    assert failed_keys(result.failed_critical) == {
        ("expect_column_values_to_be_unique", "ad_id"),
        ("expect_column_values_to_not_be_null", "ad_id"),
        ("expect_column_values_to_not_be_null", "category_id"),
        ("expect_column_values_to_be_between", "price"),
        ("expect_column_values_to_be_between", "review_count"),
    }


def test_a_frame_over_pandas_max_rows_stays_on_spark_with_the_same_verdicts(tmp_cfg, impressions_df):
    rows = clean_rows(20) + [impression_row(20, hour=25)]
    suite = build_impressions_suite(tmp_cfg, NO_HISTORY)
    results = {}
    for limit in (21, 20):  # 21 rows: collected at a limit of 21, not at 20
        cfg = tmp_cfg.replace({"quality.pandas_max_rows": limit})
        results[limit] = validate(cfg, impressions_df(rows), suite, "bronze_impressions", f"limit-{limit}")
    assert engine_of(results[21]) == "pandas" and engine_of(results[20]) == "spark"
    assert results[21].failed == results[20].failed and len(results[20].failed) == 1
