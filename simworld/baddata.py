"""Inject contract violations into a day's clean tables (the `world.bad_data` knobs).

Defects go to disjoint rows, so every defective row belongs to exactly one class, and what was
injected is returned as a small report (written to D/_injected.json as test support; the
pipeline must not read it). Image defects are day-specific: a corrupt image is written to
images/corrupt/D/<ad_id>.png and only that day's catalog row points at it, so the ad's regular
image and every other day stay clean.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.config import BadDataConfig, WorldConfig
from core.contract import IMPRESSION_FIELDS, required
from core.files import write_bytes
from simworld.seeding import stream

UNKNOWN_AD_BASE = 9_000_000_000_000  # ad ids at and above this are never in any catalog
EXTRA_COLUMN = "debug_score"  # the undocumented column of the `extra_column` knob
MISSING_COLUMN = "query_title_match"  # the documented optional column the `missing_column` knob drops
US_PER_DAY = 86_400_000_000


def empty_report() -> dict[str, Any]:
    """The report of a day without defects; keys are core.contract.REASONS codes plus the
    schema-level knobs."""
    return {
        "null_required": {"count": 0, "by_field": {}},
        "unknown_ad": {"count": 0, "impression_ids": []},
        "bad_label": {"count": 0, "impression_ids": []},
        "ts_outside_day": {"count": 0, "impression_ids": []},
        "duplicate_id": {"count": 0, "impression_ids": []},
        "negative_price": {"count": 0, "ad_ids": []},
        "image_corrupt": {"count": 0, "ad_ids": []},
        "image_missing": {"count": 0, "ad_ids": []},
        "image_uri_escapes": {"count": 0, "ad_ids": []},
        "empty_day": False,
        "extra_column": None,
        "missing_column": None,
    }


def _count(rate: float, n: int) -> int:
    """Rows that get a defect: round(rate * n), at least one when the knob is on."""
    return 0 if rate <= 0 or n == 0 else min(n, max(1, int(round(rate * n))))


def _slices(rng: np.random.Generator, n: int, counts: list[int]) -> list[np.ndarray]:
    """Disjoint random row sets of the given sizes (sorted), and the untouched rest last."""
    perm = rng.permutation(n)
    out, start = [], 0
    for k in counts:
        out.append(np.sort(perm[start:start + k]))
        start += k
    out.append(np.sort(perm[start:]))
    return out


def _replace(table: pa.Table, name: str, values: Any) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), table.schema.field(name), values)


def _ids(table: pa.Table, rows: np.ndarray, column: str) -> list:
    return table.column(column).take(pa.array(rows, pa.int64())).to_pylist()


def inject_impressions(bad: BadDataConfig, rng: np.random.Generator, table: pa.Table,
                       report: dict[str, Any]) -> pa.Table:
    """Row-level defects of the impressions table (unknown ads, labels, timestamps, nulls,
    duplicates) and the schema-level ones (empty day, extra and missing column)."""
    if bad.empty_day:
        table = table.slice(0, 0)
        report["empty_day"] = True
    n = table.num_rows
    counts = [_count(r, n) for r in (bad.unknown_ad_rate, bad.bad_label_rate, bad.out_of_day_ts_rate,
                                     bad.null_required_rate)]
    counts = [min(k, max(0, n - sum(counts[:i]))) for i, k in enumerate(counts)]
    unknown, labels, late, nulls, clean = _slices(rng, n, counts)

    if len(unknown):
        ad_id = table.column("ad_id").to_numpy().copy()
        ad_id[unknown] = UNKNOWN_AD_BASE + np.arange(len(unknown))
        table = _replace(table, "ad_id", pa.array(ad_id, pa.int64()))
        report["unknown_ad"] = {"count": len(unknown), "impression_ids": _ids(table, unknown, "impression_id")}
    if len(labels):
        click = table.column("click").to_numpy().copy()
        click[labels] = rng.choice(np.array([2, -1], dtype=np.int32), size=len(labels))
        table = _replace(table, "click", pa.array(click, pa.int32()))
        report["bad_label"] = {"count": len(labels), "impression_ids": _ids(table, labels, "impression_id")}
    if len(late):
        ts_type = table.schema.field("event_ts").type
        ts = pc.cast(table.column("event_ts"), pa.int64()).to_numpy().copy()
        # One to three days early or late, so the row lands on another day whatever its hour.
        shift = rng.integers(1, 4, size=len(late)) * US_PER_DAY * rng.choice([-1, 1], size=len(late))
        ts[late] += shift
        table = _replace(table, "event_ts", pa.array(ts, pa.int64()).cast(ts_type))
        report["ts_outside_day"] = {"count": len(late), "impression_ids": _ids(table, late, "impression_id")}
    if len(nulls):
        req = required(IMPRESSION_FIELDS)
        which = rng.integers(0, len(req), size=len(nulls))
        by_field: dict[str, int] = {}
        for j, name in enumerate(req):
            rows = nulls[which == j]
            if not len(rows):
                continue
            mask = np.zeros(n, dtype=bool)
            mask[rows] = True
            col = table.column(name)
            table = _replace(table, name, pc.if_else(pa.array(mask), pa.nulls(n, col.type), col))
            by_field[name] = len(rows)
        report["null_required"] = {"count": len(nulls), "by_field": by_field}

    n_dup = min(_count(bad.duplicate_id_rate, n), len(clean))
    if n_dup:
        dup = np.sort(rng.choice(clean, size=n_dup, replace=False))
        report["duplicate_id"] = {"count": n_dup, "impression_ids": _ids(table, dup, "impression_id")}
        order = np.sort(np.concatenate([np.arange(n), dup]))  # each copy right after its original
        table = table.take(pa.array(order, pa.int64()))

    if bad.extra_column:
        table = table.append_column(pa.field(EXTRA_COLUMN, pa.float64()),
                                    pa.array(rng.random(table.num_rows), pa.float64()))
        report["extra_column"] = EXTRA_COLUMN
    if bad.missing_column:
        table = table.drop_columns([MISSING_COLUMN])
        report["missing_column"] = MISSING_COLUMN
    return table


def inject_catalog(bad: BadDataConfig, rng: np.random.Generator, table: pa.Table, day: dt.date,
                   landing_root: str, report: dict[str, Any]) -> pa.Table:
    """Catalog defects: negative prices and corrupt, missing or escaping image URIs."""
    n = table.num_rows
    counts = [_count(r, n) for r in (bad.negative_price_rate, bad.corrupt_image_rate, bad.missing_image_rate,
                                     bad.escaping_image_uri_rate)]
    counts = [min(k, max(0, n - sum(counts[:i]))) for i, k in enumerate(counts)]
    negative, corrupt, missing, escaping, _clean = _slices(rng, n, counts)
    ad_ids = table.column("ad_id").to_numpy()

    if len(negative):
        price = table.column("price").to_numpy().copy()
        price[negative] = -np.maximum(price[negative], 0.01)
        table = _replace(table, "price", pa.array(price, pa.float64()))
        report["negative_price"] = {"count": len(negative), "ad_ids": ad_ids[negative].tolist()}

    uris = table.column("image_uri").to_pylist()
    for i in corrupt:
        uris[i] = f"images/corrupt/{day}/{ad_ids[i]}.png"
        # Garbage that no decoder accepts (does not start with any image signature).
        write_bytes(os.path.join(landing_root, uris[i]), b"not an image\x00" + rng.bytes(48))
    for i in missing:
        uris[i] = f"images/missing/{day}/{ad_ids[i]}.png"
    forms = ("../../etc/passwd", "/abs/path/{}.png", "http://x/{}.png")
    for j, i in enumerate(escaping):
        uris[i] = forms[j % len(forms)].format(ad_ids[i])
    if len(corrupt) or len(missing) or len(escaping):
        table = _replace(table, "image_uri", pa.array(uris, pa.string()))
    for key, rows in (("image_corrupt", corrupt), ("image_missing", missing), ("image_uri_escapes", escaping)):
        if len(rows):
            report[key] = {"count": len(rows), "ad_ids": ad_ids[rows].tolist()}
    return table


def inject(world: WorldConfig, day: dt.date, day_index: int, impressions: pa.Table, catalog: pa.Table,
           landing_root: str) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Apply every enabled knob of `world.bad_data`; returns (impressions, catalog, report)."""
    report = empty_report()
    if not world.bad_data.any_on:
        return impressions, catalog, report
    impressions = inject_impressions(world.bad_data, stream(world.seed, "bad_impressions", day_index),
                                     impressions, report)
    catalog = inject_catalog(world.bad_data, stream(world.seed, "bad_catalog", day_index), catalog, day,
                             landing_root, report)
    return impressions, catalog, report
