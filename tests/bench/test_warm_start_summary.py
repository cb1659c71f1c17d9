"""The warm-start benchmark's per-day gains and verdict (bench/warm_start.py summarize), on made-up AUCs."""

from __future__ import annotations

import pytest

from bench.warm_start import _tables, main, parse_args, summarize

SETTINGS = {"days": 3}


def _day(date: str, cold: float, warm: float, cold_ads: tuple[float | None, float | None] = (0.6, 0.61)) -> dict:
    return {"run_date": date, "cold": {"auc": cold, "auc_cold": cold_ads[0]},
            "warm": {"auc": warm, "auc_cold": cold_ads[1]}}


def test_gains_count_only_the_days_after_the_first():
    days = [_day("2026-01-04", 0.70, 0.69), _day("2026-01-05", 0.70, 0.72), _day("2026-01-06", 0.71, 0.71)]
    out = summarize(days, SETTINGS)
    assert out["complete"] is True and out["days_finished"] == 3
    assert out["warm_minus_cold_auc"] == [pytest.approx(0.02), pytest.approx(0.0)]
    assert out["warm_ge_cold_every_later_day"] is True
    assert out["mean_gain_auc"] == pytest.approx(0.01)
    assert out["warm_minus_cold_auc_cold"] == [pytest.approx(0.01), pytest.approx(0.01)]


def test_one_worse_day_fails_the_verdict_and_a_day_without_cold_ads_is_left_out():
    days = [_day("2026-01-04", 0.70, 0.70), _day("2026-01-05", 0.70, 0.69, (None, 0.5))]
    out = summarize(days, {"days": 8})
    assert out["complete"] is False
    assert out["warm_ge_cold_every_later_day"] is False
    assert out["warm_minus_cold_auc_cold"] == [] and out["mean_gain_auc_cold"] is None


def test_a_single_day_makes_no_claim():
    out = summarize([_day("2026-01-04", 0.7, 0.7)], {"days": 1})
    assert out["warm_ge_cold_every_later_day"] is False and out["mean_gain_auc"] is None


def test_row_counts_are_named_by_field_and_the_priors_once():
    summary = {"tables": {
        "embedding.single.brand_id.weight": {"carried": 40, "new": 2, "dropped": 3},
        "embedding.multi.query_words.weight": {"carried": 100, "new": 5, "dropped": 0},
        "cnn.stage1.attention.channel_prior": {"carried": 20, "new": 1, "dropped": 0},
        "cnn.stage2.attention.spatial_prior": {"carried": 20, "new": 1, "dropped": 0}}}
    assert _tables(summary) == {"brand_id": {"carried": 40, "new": 2, "dropped": 3},
                                "query_words": {"carried": 100, "new": 5, "dropped": 0},
                                "category priors": {"carried": 20, "new": 1, "dropped": 0}}
    assert _tables(None) == {}


def test_bad_sizes_are_refused_with_the_value(capsys):
    with pytest.raises(SystemExit, match=r"--days 1 \(>= 2\)"):
        main(["--days", "1"])
    assert parse_args([]).days == 8
