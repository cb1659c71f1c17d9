"""A hand-written landing day: a few clean rows plus one row per contract violation."""

from __future__ import annotations

import datetime as dt
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from core import contract

DAY = dt.date(2026, 3, 2)


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _schema(fields, extra=(), drop=()):
    tmap = {"string": pa.string(), "bigint": pa.int64(), "int": pa.int32(), "double": pa.float64(),
            "array<int>": pa.list_(pa.int32()), "timestamp": pa.timestamp("us", tz="UTC"), "date": pa.date32()}
    cols = [pa.field(f.name, tmap[f.type]) for f in fields if f.name not in drop]
    return pa.schema(cols + [pa.field(n, t) for n, t in extra])


def ts(hour: int, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)


def impression(i: int, ad_id: int = 1, **kw):
    row = dict(impression_id=f"i{i}", event_ts=ts(10), user_id=100 + i, ad_id=ad_id, user_location=3,
               user_price_sensitivity=2, weekday=DAY.weekday(), hour=10, query_words=[1, 2], query_title_match=1,
               hist_categories=[5], hist_brands=[], hist_shops=[7], click=i % 2)
    row.update(kw)
    return row


def ad(ad_id: int, **kw):
    row = dict(ad_id=ad_id, category_id=3, parent_category_id=1, brand_id=4, shop_id=5, price=9.5, review_count=10,
               title_words=[1, 2, 3], image_uri=f"images/0/{ad_id}.png", created_date=DAY)
    row.update(kw)
    return row


def write_day(landing: str, impressions: list[dict], ads: list[dict], images: dict[str, bytes],
              day: dt.date = DAY, extra_columns=(), drop_columns=()) -> None:
    d = os.path.join(landing, str(day))
    os.makedirs(d, exist_ok=True)
    for rel, data in images.items():
        p = os.path.join(landing, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    imp_schema = _schema(contract.IMPRESSION_FIELDS, extra=extra_columns, drop=drop_columns)
    rows = [{k: v for k, v in r.items() if k not in drop_columns} for r in impressions]
    pq.write_table(pa.Table.from_pylist(rows, schema=imp_schema), os.path.join(d, "impressions.parquet"))
    pq.write_table(pa.Table.from_pylist(ads, schema=_schema(contract.AD_FIELDS)), os.path.join(d, "ads.parquet"))
    open(os.path.join(d, "_SUCCESS"), "w").close()


def bad_day(landing: str) -> dict[str, int]:
    """Write a day with one violation of each kind; returns the expected quarantine reasons."""
    ads = [ad(1), ad(2), ad(3, price=-1.0), ad(4, image_uri="../../etc/passwd"), ad(5, image_uri="images/0/none.png"),
           ad(6, image_uri="images/0/6.png"), ad(7, category_id=None), ad(1, category_id=9)]
    images = {"images/0/1.png": _png((200, 10, 10)), "images/0/2.png": _png((10, 200, 10)),
              "images/0/3.png": _png((10, 10, 200)), "images/0/6.png": b"not a png at all",
              "images/0/7.png": _png((1, 2, 3))}
    imps = [impression(0), impression(1), impression(2, ad_id=2), impression(3, user_id=None),
            impression(4, click=2), impression(5, hour=25), impression(6, event_ts=ts(3, DAY - dt.timedelta(days=1))),
            impression(7, ad_id=999), impression(8, ad_id=3), impression(9, ad_id=4), impression(1)]
    write_day(landing, imps, ads, images)
    return {"impressions": {"null_required": 1, "bad_label": 1, "bad_time_fields": 1, "ts_outside_day": 1,
                            "unknown_ad": 1, "ad_of_bad_catalog_row": 2, "duplicate_id": 1},
            "ads": {"negative_price": 1, "image_uri_escapes": 1, "image_missing": 1, "image_corrupt": 1,
                    "null_required": 1, "duplicate_id": 1}}
