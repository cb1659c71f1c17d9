"""Write the simulated world's landing drop (and the truth) for a day or a date range.

For day D, in this order: new ad images, D/ads.parquet, D/impressions.parquet, the truth file
(outside landing), D/_injected.json (test support), and D/_SUCCESS last. A re-run first removes
D/_SUCCESS, then replaces every file; the rows are identical because all draws are keyed by
(seed, day) and (seed, ad id block).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.config import PipelineConfig, WorldConfig
from core.contract import AD_FIELDS, IMPRESSION_FIELDS, TRUTH_FIELDS
from core.files import replace_file, write_text
from core import storage
from core.paths import Paths, is_local, local_path
from simworld import baddata
from simworld.images import IMAGES_DIR, image_relpath, write_images
from simworld.schema import arrow_schema
from simworld.traffic import DayTraffic, simulate_day
from simworld.world import AdTable, active_ads, categories

INJECTED_FILE = "_injected.json"
UNIX_EPOCH = dt.date(1970, 1, 1)


def as_date(value: dt.date | str, what: str = "date") -> dt.date:
    """A date from a date or a YYYY-MM-DD string; a clear error otherwise."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"bad {what} {value!r}; expected YYYY-MM-DD") from None


def day_index(world: WorldConfig, day: dt.date) -> int:
    """Days since world.epoch; an error for days before it."""
    epoch = dt.date.fromisoformat(world.epoch)
    idx = (day - epoch).days
    if idx < 0:
        raise ValueError(f"date {day} is before world.epoch {epoch}; set world.epoch to {day} or earlier")
    return idx


def _list_array(padded: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """list<int32> from a (n, L) padded matrix and (n,) lengths (the first lengths[i] of row i)."""
    used = np.arange(padded.shape[1])[None, :] < lengths[:, None]  # (n, L)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                    pa.array(padded[used].astype(np.int32), pa.int32()))


def impressions_table(traffic: DayTraffic, day: dt.date, weekday: int) -> pa.Table:
    """The contract's impressions table of a clean day."""
    n = len(traffic)
    seq = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    ids = pc.binary_join_element_wise(day.strftime("%Y%m%d"), pc.utf8_lpad(seq, width=8, padding="0"), "-")
    columns = {
        "impression_id": ids,
        "event_ts": pa.array(traffic.event_ts_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "user_id": pa.array(traffic.user_id, pa.int64()),
        "ad_id": pa.array(traffic.ad_id, pa.int64()),
        "user_location": pa.array(traffic.user_location, pa.int32()),
        "user_price_sensitivity": pa.array(traffic.user_price_sensitivity, pa.int32()),
        "weekday": pa.array(np.full(n, weekday, dtype=np.int32), pa.int32()),
        "hour": pa.array(traffic.hour, pa.int32()),
        "query_words": _list_array(traffic.query_words, traffic.query_len),
        "query_title_match": pa.array(traffic.query_title_match, pa.int32()),
        "hist_categories": _list_array(traffic.hist_categories, traffic.hist_len[:, 0]),
        "hist_brands": _list_array(traffic.hist_brands, traffic.hist_len[:, 1]),
        "hist_shops": _list_array(traffic.hist_shops, traffic.hist_len[:, 2]),
        "click": pa.array(traffic.click, pa.int32()),
    }
    return pa.table(columns, schema=arrow_schema(IMPRESSION_FIELDS))


def catalog_table(world: WorldConfig, ads: AdTable) -> pa.Table:
    """The contract's ad catalog of the live ads `ads`."""
    cats = categories(world)
    epoch_days = (dt.date.fromisoformat(world.epoch) - UNIX_EPOCH).days
    columns = {
        "ad_id": pa.array(ads.ad_id, pa.int64()),
        "category_id": pa.array(ads.category, pa.int32()),
        "parent_category_id": pa.array(cats.parent[ads.category], pa.int32()),
        "brand_id": pa.array(ads.brand, pa.int32()),
        "shop_id": pa.array(ads.shop, pa.int32()),
        "price": pa.array(ads.price, pa.float64()),
        "review_count": pa.array(ads.review_count, pa.int32()),
        "title_words": _list_array(ads.title, ads.title_len),
        "image_uri": pa.array([image_relpath(int(a)) for a in ads.ad_id], pa.string()),
        "created_date": pa.array((epoch_days + ads.birth_day).astype(np.int32), pa.int32()).cast(pa.date32()),
    }
    return pa.table(columns, schema=arrow_schema(AD_FIELDS))


def _write_parquet(table: pa.Table, path: str) -> None:
    with replace_file(path, "wb") as f:
        pq.write_table(table, f, compression="snappy")


def generate_day(cfg: PipelineConfig, day: dt.date | str) -> dict[str, Any]:
    """Write day `day`'s landing drop and truth; returns counts and seconds.

    Keys: date, impressions (rows written, duplicates included), ads (catalog rows), new_ads
    (born that day), new_images (image files written), clicks, ctr, seconds, injected (the
    bad-data report, also in D/_injected.json).

    With the landing area or the truth on object storage the day is written in a scratch folder
    laid out like them, then uploaded: D/ removed first, the new images, the truth, then D/'s
    files with _SUCCESS last (core.storage.upload); images already in the bucket are not drawn again.
    """
    day = as_date(day)
    paths = Paths.of(cfg)
    truth = cfg.storage.resolved().truth_uri
    if is_local(paths.landing) and is_local(truth):
        return _generate_day(cfg, day)
    storage.remove_tree(paths.landing_day(day))  # the drop is incomplete while it is being replaced
    images = storage.join(paths.landing, IMAGES_DIR)
    present = frozenset(f"{IMAGES_DIR}/{name}" for name in storage.list_files(images))
    with storage.scratch("cscnn-simworld-") as tmp:
        local_cfg = cfg.replace({"storage.landing_uri": str(tmp / "landing"), "storage.truth_uri": str(tmp / "truth")})
        summary = _generate_day(local_cfg, day, present)
        local = Paths.of(local_cfg)
        for name in storage.list_files(storage.join(local.landing, IMAGES_DIR)):
            storage.write_bytes(storage.join(images, name), (tmp / "landing" / IMAGES_DIR / name).read_bytes())
        storage.write_bytes(paths.truth_day(day), Path(local.truth_day(day)).read_bytes())
        storage.upload(local.landing_day(day), paths.landing_day(day))
    return summary


def _generate_day(cfg: PipelineConfig, day: dt.date, present: frozenset[str] = frozenset()) -> dict[str, Any]:
    """generate_day on local folders; `present`: images that exist already (simworld.images.write_images)."""
    start = time.perf_counter()
    world = cfg.world
    index = day_index(world, day)
    paths = Paths.of(cfg)
    landing = local_path(paths.landing)
    success = local_path(paths.landing_success(day))
    if os.path.exists(success):
        os.remove(success)  # the drop is incomplete while it is being replaced

    ads = active_ads(world, index)
    new_images = write_images(world, ads, landing, present)
    traffic = simulate_day(world, day, index, ads)
    impressions = impressions_table(traffic, day, day.weekday())
    catalog = catalog_table(world, ads)
    truth = pa.table({"impression_id": impressions.column("impression_id"),
                      "p_click": pa.array(traffic.p_click, pa.float64())}, schema=arrow_schema(TRUTH_FIELDS))
    impressions, catalog, report = baddata.inject(world, day, index, impressions, catalog, landing)
    if report["empty_day"]:
        truth = truth.slice(0, 0)

    _write_parquet(catalog, local_path(paths.landing_ads(day)))
    _write_parquet(impressions, local_path(paths.landing_impressions(day)))
    _write_parquet(truth, local_path(paths.truth_day(day)))
    write_text(os.path.join(local_path(paths.landing_day(day)), INJECTED_FILE),
                json.dumps(report, indent=1, sort_keys=True) + "\n")
    write_text(success, "")

    clicks = 0 if report["empty_day"] else int(traffic.click.sum())
    return {
        "date": str(day),
        "impressions": impressions.num_rows,
        "ads": catalog.num_rows,
        "new_ads": int((ads.birth_day == index).sum()),
        "new_images": new_images,
        "clicks": clicks,
        "ctr": clicks / truth.num_rows if truth.num_rows else 0.0,
        "seconds": time.perf_counter() - start,
        "injected": report,
    }


def generate_range(cfg: PipelineConfig, start: dt.date | str, end: dt.date | str,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Generate every day in [start, end] inclusive; calls `progress` with each day's summary."""
    first, last = as_date(start, "start date"), as_date(end, "end date")
    if last < first:
        raise ValueError(f"end date {last} is before start date {first}")
    out = []
    for i in range((last - first).days + 1):
        summary = generate_day(cfg, first + dt.timedelta(days=i))
        if progress is not None:
            progress(summary)
        out.append(summary)
    return out
