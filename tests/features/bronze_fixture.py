"""Tiny hand-written bronze tables (impressions, ads) for the features tests."""

from __future__ import annotations

import datetime as dt
import shutil

from core import contract
from core.paths import Paths, local_path
from features.tables import ID_REGISTRY_TABLE

D0 = dt.date(2026, 3, 1)

IMPRESSIONS_DDL = contract.spark_ddl(contract.IMPRESSION_FIELDS) + ", dt date"
ADS_DDL = contract.spark_ddl(contract.AD_FIELDS) + ", dt date"
JOINED_DDL = (contract.spark_ddl(contract.IMPRESSION_FIELDS) + ", dt date, "
              + contract.spark_ddl(tuple(f for f in contract.AD_FIELDS
                                         if f.name in ("category_id", "parent_category_id", "brand_id", "shop_id",
                                                       "price", "review_count", "title_words"))))


def impression(i: int, day: dt.date, ad_id: int | None, click: int = 0, **kw) -> dict:
    """Impression i of a day; keyword arguments override fields (None makes them null)."""
    row = dict(impression_id=f"{day:%m%d}-{i}", event_ts=dt.datetime(day.year, day.month, day.day, i % 24, i % 60),
               user_id=100 + i % 3, ad_id=ad_id, user_location=1,
               user_price_sensitivity=2, weekday=day.weekday(), hour=i % 24, query_words=[1, 2],
               query_title_match=1, hist_categories=[5], hist_brands=[], hist_shops=None, click=click, dt=day)
    row.update(kw)
    return row


def ad(ad_id: int, day: dt.date, **kw) -> dict:
    """Catalog row of an ad on a day; keyword arguments override fields."""
    row = dict(ad_id=ad_id, category_id=10 + ad_id % 2, parent_category_id=1, brand_id=20 + ad_id,
               shop_id=30, price=float(ad_id * 10), review_count=ad_id, title_words=[7, ad_id],
               image_uri=f"images/{ad_id}.png", created_date=D0, dt=day)
    row.update(kw)
    return row


def joined(rows: list[dict]) -> list[dict]:
    """Impression rows merged with their ad's catalog attributes (what with_catalog produces)."""
    out = []
    for r in rows:
        catalog = ad(r["ad_id"], r["dt"]) if r["ad_id"] is not None else {}
        merged = {k: catalog.get(k) for k in ("category_id", "parent_category_id", "brand_id", "shop_id",
                                                "price", "review_count", "title_words")}
        merged.update(r.pop("_catalog", {}))
        out.append({**r, **merged})
    return out


def as_tuples(rows: list[dict], ddl: str) -> list[tuple]:
    names = [c.strip().split(" ")[0] for c in ddl.split(",")]
    return [tuple(r.get(n) for n in names) for r in rows]


def write_bronze(spark, cfg, impressions: list[dict], ads: list[dict], mode: str = "append") -> None:
    """Write rows to the bronze impressions/ads Delta tables of cfg (partitioned by dt)."""
    paths = Paths.of(cfg)
    for rows, ddl, uri in ((impressions, IMPRESSIONS_DDL, paths.bronze_impressions),
                           (ads, ADS_DDL, paths.bronze_ads)):
        (spark.createDataFrame(as_tuples(rows, ddl), ddl).write.format("delta").mode(mode)
         .partitionBy("dt").save(uri))


def replace_bronze_day(spark, cfg, day: dt.date, impressions: list[dict]) -> None:
    """Re-ingest one day of impressions (replaceWhere), as ingest does."""
    (spark.createDataFrame(as_tuples(impressions, IMPRESSIONS_DDL), IMPRESSIONS_DDL).write.format("delta")
     .mode("overwrite").partitionBy("dt").option("replaceWhere", f"dt = '{day.isoformat()}'")
     .save(Paths.of(cfg).bronze_impressions))


def copy_id_registry(source_cfg, target_cfg) -> None:
    """Copy the id registry of source_cfg's warehouse into target_cfg's (which must have none).

    A full rebuild recomputes every derived features table from bronze; the registry is the
    values' permanent identity, kept across rebuilds, so a rebuild compared with an incremental
    run starts from the incremental run's registry."""
    shutil.copytree(local_path(Paths.of(source_cfg).table(ID_REGISTRY_TABLE)),
                    local_path(Paths.of(target_cfg).table(ID_REGISTRY_TABLE)))
