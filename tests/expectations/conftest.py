"""Small inline DataFrames of the contract for the data-quality tests."""

from __future__ import annotations

import datetime as dt
import os
import re

import pytest

from core.contract import IMPRESSION_FIELDS, AD_FIELDS, spark_ddl

DAY = dt.date(2026, 2, 2)
IMPRESSION_DDL = spark_ddl(IMPRESSION_FIELDS) + ", dt date"
AD_DDL = spark_ddl(AD_FIELDS) + ", dt date"


@pytest.fixture(params=["pandas", "spark"])
def engine_cfg(request, tmp_cfg):
    """(engine, config): small Spark frames validated on GX's pandas engine (the default,
    quality.pandas_max_rows) or on Spark (pandas_max_rows = 0)."""
    if request.param == "spark":
        return "spark", tmp_cfg.replace({"quality.pandas_max_rows": 0})
    return "pandas", tmp_cfg


def engine_of(result) -> str:
    """The GX engine a validation ran on, from its Data Docs page (<source>-<asset>.html)."""
    return os.path.basename(result.report_path).split("-", 1)[0]


def impression_row(i: int, day: dt.date = DAY, click: int = 0, **changes):
    """One valid impression (contract order + dt); `changes` overrides fields by name."""
    row = {
        "impression_id": f"{day.isoformat()}-{i}",
        "event_ts": dt.datetime(day.year, day.month, day.day, i % 24, 5),
        "user_id": 1000 + i, "ad_id": 10 + i % 3, "user_location": i % 4, "user_price_sensitivity": i % 5,
        "weekday": day.weekday(), "hour": i % 24, "query_words": [1, 2], "query_title_match": 1,
        "hist_categories": [3], "hist_brands": [], "hist_shops": None, "click": click, "dt": day,
    }
    for k, v in changes.items():
        assert k in row, k
        row[k] = v
    return tuple(row.values())


def clean_rows(n: int = 20, day: dt.date = DAY, clicks: int = 1):
    """n valid impressions of `day`, the first `clicks` of them clicked."""
    return [impression_row(i, day, click=int(i < clicks)) for i in range(n)]


def ad_row(ad_id: int, day: dt.date = DAY, **changes):
    row = {"ad_id": ad_id, "category_id": 1 + (ad_id or 0) % 3, "parent_category_id": 0, "brand_id": 1, "shop_id": 2,
           "price": 9.5, "review_count": 3, "title_words": [4, 5], "image_uri": f"images/00/{ad_id}.png",
           "created_date": day, "dt": day}
    for k, v in changes.items():
        assert k in row, k
        row[k] = v
    return tuple(row.values())


_FAILED_RE = re.compile(r"^(\w+)\((?:column=([^,)]+))?")


def failed_keys(lines: list[str]) -> set[tuple[str, str | None]]:
    """{(expectation type, column or None)} of QualityResult.failed lines."""
    out = set()
    for line in lines:
        m = _FAILED_RE.match(line)
        assert m, line
        out.add((m.group(1), m.group(2)))
    return out


@pytest.fixture
def impressions_df(spark):
    def make(rows):
        return spark.createDataFrame(rows, IMPRESSION_DDL)
    return make
