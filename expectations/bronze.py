"""Suites for the raw and bronze data of one day: impressions, the ad catalog, the landing schema.

Critical expectations (meta critical=True) stop the run; the others are reported in Data Docs and
logged. What is critical:
  - impressions: required columns present, required fields not null, weekday/hour in range,
    click in {0, 1}, unique impression_id, the day's volume vs the trailing days, the day's CTR;
  - ads: required columns present, required fields not null, unique ad_id, price and
    review_count >= 0, a non-empty catalog;
  - landing file: required columns present;
  - quarantine: the share of the day's landing impressions and of its landing ads that ingest
    quarantined is at most `quality.max_quarantine_rate` (a day that lost a fifth of its rows to
    unknown ads or bad types is not a normal day, even when its volume still looks plausible).
Not critical: exact column-set matches (schema drift: extra or missing optional columns) and
user_price_sensitivity outside 0-4 (an optional profile field whose odd values end up as their
own or the OOV vocabulary id rather than breaking anything).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import great_expectations as gx
import great_expectations.expectations as gxe

from core.config import PipelineConfig
from core.contract import AD_FIELDS, IMPRESSION_FIELDS, names, required
from core.records import QUARANTINE_TABLES  # the ingest record's tables, one definition
from expectations.runner import expectation, new_suite

IMPRESSIONS_SUITE = "bronze_impressions"
ADS_SUITE = "bronze_ads"
LANDING_SCHEMA_SUITE = "landing_impressions_schema"
QUARANTINE_SUITE = "bronze_quarantine"
PARTITION_COLUMN = "dt"


def volume_bounds(cfg: PipelineConfig, trailing: Mapping[str, Any] | None) -> tuple[int, int | None]:
    """(min_rows, max_rows) allowed for a day given the trailing days' volume.

    `trailing` is {'mean_rows': float, 'days': int} or None when there is no history; then only
    the floor applies. The floor is never below 1 row: an empty day always fails.
    """
    q = cfg.quality
    floor = max(1, q.min_rows)
    if trailing is None:
        return floor, None
    unknown = set(trailing) - {"mean_rows", "days"}
    if unknown or "mean_rows" not in trailing or "days" not in trailing:
        raise ValueError(f"trailing must be {{'mean_rows': float, 'days': int}} or None, got {dict(trailing)!r}")
    mean_rows, days = float(trailing["mean_rows"]), int(trailing["days"])
    if days < 1:
        return floor, None
    if not mean_rows >= 0:
        raise ValueError(f"trailing mean_rows must be >= 0, got {mean_rows!r}")
    low = max(floor, math.ceil(q.volume_ratio_min * mean_rows))
    high = max(low, math.floor(q.volume_ratio_max * mean_rows))
    return low, high


def build_impressions_suite(cfg: PipelineConfig, trailing: Mapping[str, Any] | None) -> gx.ExpectationSuite:
    """Suite for one day of bronze impressions (columns: contract IMPRESSION_FIELDS + dt).

    `trailing` describes the trailing days' volume ({'mean_rows':..., 'days': n}) or is None when
    there is no history, in which case only `quality.min_rows` bounds the row count.
    """
    q = cfg.quality
    columns = names(IMPRESSION_FIELDS) + [PARTITION_COLUMN]
    min_rows, max_rows = volume_bounds(cfg, trailing)
    exps = [
        expectation(gxe.ExpectTableColumnsToMatchSet, critical=True,
                    column_set=required(IMPRESSION_FIELDS) + [PARTITION_COLUMN], exact_match=False),
        expectation(gxe.ExpectTableColumnsToMatchSet, critical=False, column_set=columns, exact_match=True),
        expectation(gxe.ExpectTableRowCountToBeBetween, critical=True, min_value=min_rows, max_value=max_rows),
    ]
    exps += [expectation(gxe.ExpectColumnValuesToNotBeNull, critical=True, column=c)
             for c in required(IMPRESSION_FIELDS) + [PARTITION_COLUMN]]
    exps += [
        expectation(gxe.ExpectColumnValuesToBeUnique, critical=True, column="impression_id"),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column="weekday", min_value=0, max_value=6),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column="hour", min_value=0, max_value=23),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=False, column="user_price_sensitivity",
                    min_value=0, max_value=4),
        expectation(gxe.ExpectColumnValuesToBeInSet, critical=True, column="click", value_set=[0, 1]),
        expectation(gxe.ExpectColumnMeanToBeBetween, critical=True, column="click",
                    min_value=q.ctr_min, max_value=q.ctr_max),
    ]
    return new_suite(IMPRESSIONS_SUITE, exps)


def build_ads_suite(cfg: PipelineConfig) -> gx.ExpectationSuite:
    """Suite for one day's bronze ad catalog (columns: contract AD_FIELDS + dt)."""
    columns = names(AD_FIELDS) + [PARTITION_COLUMN]
    exps = [
        expectation(gxe.ExpectTableColumnsToMatchSet, critical=True,
                    column_set=required(AD_FIELDS) + [PARTITION_COLUMN], exact_match=False),
        expectation(gxe.ExpectTableColumnsToMatchSet, critical=False, column_set=columns, exact_match=True),
        expectation(gxe.ExpectTableRowCountToBeBetween, critical=True, min_value=max(1, cfg.quality.min_rows),
                    max_value=None),
    ]
    exps += [expectation(gxe.ExpectColumnValuesToNotBeNull, critical=True, column=c)
             for c in required(AD_FIELDS) + [PARTITION_COLUMN]]
    exps += [
        expectation(gxe.ExpectColumnValuesToBeUnique, critical=True, column="ad_id"),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column="price", min_value=0, max_value=None),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column="review_count", min_value=0,
                    max_value=None),
    ]
    return new_suite(ADS_SUITE, exps)


def build_landing_schema_suite(cfg: PipelineConfig) -> gx.ExpectationSuite:
    """Schema-drift suite for a raw landing impressions file (validate `spark.read.parquet(...)`).

    An extra or a missing column vs the contract is a NON-critical failure (ingest keeps the
    contract's columns and fills absent optional ones with nulls); a missing required column is
    critical. Only the schema is inspected, so validating `df.limit(0)` is enough.
    """
    del cfg  # the contract, not the config, defines the landing schema; kept for a uniform signature
    return new_suite(LANDING_SCHEMA_SUITE, [
        expectation(gxe.ExpectTableColumnsToMatchSet, critical=True, column_set=required(IMPRESSION_FIELDS),
                    exact_match=False),
        expectation(gxe.ExpectTableColumnsToMatchSet, critical=False, column_set=names(IMPRESSION_FIELDS),
                    exact_match=True),
    ])


def quarantine_rate_column(table: str) -> str:
    """Column of the quarantine-rate frame holding `table`'s quarantined share of landing rows."""
    return f"{table}_quarantine_rate"


def build_quarantine_suite(cfg: PipelineConfig) -> gx.ExpectationSuite:
    """Suite for a day's quarantine budget, validated on a one-row frame with one column
    `<table>_quarantine_rate` (quarantined / landing rows, 0 for an empty file) per table of
    QUARANTINE_TABLES: each must be at most `quality.max_quarantine_rate` (critical)."""
    return new_suite(QUARANTINE_SUITE, [
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column=quarantine_rate_column(t),
                    min_value=0, max_value=cfg.quality.max_quarantine_rate)
        for t in QUARANTINE_TABLES])
