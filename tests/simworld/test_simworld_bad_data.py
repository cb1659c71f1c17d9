"""Each bad-data knob produces its defect class, only when on, and only on its day."""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image
from simworld_helpers import DAYS, read_day, tiny_cfg

from core.contract import AD_FIELDS, IMPRESSION_FIELDS, names, required
from core.paths import Paths, local_path
from simworld.generate import INJECTED_FILE, generate_day
from simworld.images import image_relpath
from simworld.traffic import day_volume

RATE_KNOBS = {
    "null_required_rate": "null_required",
    "unknown_ad_rate": "unknown_ad",
    "bad_label_rate": "bad_label",
    "out_of_day_ts_rate": "ts_outside_day",
    "duplicate_id_rate": "duplicate_id",
    "negative_price_rate": "negative_price",
    "corrupt_image_rate": "image_corrupt",
    "missing_image_rate": "image_missing",
    "escaping_image_uri_rate": "image_uri_escapes",
}
DAY_1 = dt.date.fromisoformat(DAYS[1])
FLAG_KNOBS = {"empty_day": "empty_day", "extra_column": "extra_column", "missing_column": "missing_column"}


def _escapes(uri: str) -> bool:
    return uri.startswith("/") or ".." in uri.split("/") or "://" in uri


def _decodes(path: str) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except OSError:
        return False


def detect_defects(cfg, day: str) -> dict[str, int]:
    """Count every defect class by looking at the landed files only (not at _injected.json)."""
    tables = read_day(cfg, day)
    imps, ads = tables["impressions"], tables["ads"]
    root = local_path(Paths.of(cfg).landing)
    out = {"null_required": sum(imps.column(n).null_count for n in required(IMPRESSION_FIELDS)
                                if n in imps.column_names)}
    ad_id = imps.column("ad_id").drop_null()
    out["unknown_ad"] = int((~pc.is_in(ad_id, value_set=ads.column("ad_id")).to_numpy(zero_copy_only=False)).sum())
    click = imps.column("click").drop_null().to_numpy()
    out["bad_label"] = int((~np.isin(click, [0, 1])).sum())
    ts = imps.column("event_ts").drop_null().to_pandas()
    out["ts_outside_day"] = int((ts.dt.date != dt.date.fromisoformat(day)).sum())
    ids = imps.column("impression_id").drop_null()
    out["duplicate_id"] = len(ids) - pc.count_distinct(ids).as_py()
    out["negative_price"] = int((ads.column("price").to_numpy() < 0).sum())
    uris = ads.column("image_uri").to_pylist()
    local = [u for u in uris if not _escapes(u)]
    out["image_uri_escapes"] = len(uris) - len(local)
    out["image_missing"] = sum(not os.path.exists(os.path.join(root, u)) for u in local)
    out["image_corrupt"] = sum(os.path.exists(os.path.join(root, u)) and not _decodes(os.path.join(root, u))
                               for u in local)
    out["empty_day"] = int(imps.num_rows == 0)
    out["extra_column"] = len(set(imps.column_names) - set(names(IMPRESSION_FIELDS)))
    out["missing_column"] = len(set(names(IMPRESSION_FIELDS)) - set(imps.column_names))
    assert set(names(AD_FIELDS)) == set(ads.column_names)
    return out


def _report(cfg, day: str) -> dict:
    with open(os.path.join(local_path(Paths.of(cfg).landing_day(day)), INJECTED_FILE)) as f:
        return json.load(f)


def test_clean_world_has_no_defects(tiny_world):
    for day in DAYS:
        assert set(detect_defects(tiny_world, day).values()) == {0}


@pytest.mark.parametrize("knob", [*RATE_KNOBS, *FLAG_KNOBS])
def test_each_knob_alone_produces_only_its_defect_class(tmp_path, knob):
    value = 0.02 if knob in RATE_KNOBS else True
    cfg = tiny_cfg(tmp_path, **{f"world__bad_data__{knob}": value})
    generate_day(cfg, DAYS[1])
    found = detect_defects(cfg, DAYS[1])
    code = {**RATE_KNOBS, **FLAG_KNOBS}[knob]
    assert found[code] > 0, f"{knob} produced no {code}"
    others = {k: v for k, v in found.items() if k != code and v}
    assert others == {}, f"{knob} also produced {others}"
    report = _report(cfg, DAYS[1])
    if knob in RATE_KNOBS:
        assert report[code]["count"] == found[code]
        catalog_knob = code in ("negative_price", "image_corrupt", "image_missing", "image_uri_escapes")
        rows = read_day(cfg, DAYS[1])["ads"].num_rows if catalog_knob else day_volume(cfg.world, DAY_1)
        assert found[code] == round(0.02 * rows)
    else:
        assert report[code]
    # Every other knob's entry stays empty.
    assert all(v in (0, False, None) for k, v in
               ((k, r["count"] if isinstance(r, dict) else r) for k, r in report.items()) if k != code)


def test_knobs_together_hit_disjoint_rows_and_are_reported(tmp_path):
    rates = {f"world__bad_data__{k}": 0.01 for k in RATE_KNOBS}
    cfg = tiny_cfg(tmp_path, **rates, world__bad_data__extra_column=True, world__bad_data__missing_column=True)
    generate_day(cfg, DAYS[0])
    found, report = detect_defects(cfg, DAYS[0]), _report(cfg, DAYS[0])
    for code in RATE_KNOBS.values():
        assert found[code] == report[code]["count"] > 0, code
    ids = [set(report[c]["impression_ids"]) for c in ("unknown_ad", "bad_label", "ts_outside_day")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert report["extra_column"] == "debug_score" and report["missing_column"] == "query_title_match"


def test_image_defects_stay_on_their_day(tmp_path):
    bad = tiny_cfg(tmp_path, world__bad_data__corrupt_image_rate=0.05, world__bad_data__missing_image_rate=0.05)
    generate_day(bad, DAYS[0])
    report = _report(bad, DAYS[0])
    clean = tiny_cfg(tmp_path)
    generate_day(clean, DAYS[1])
    assert set(detect_defects(clean, DAYS[1]).values()) == {0}
    root = local_path(Paths.of(bad).landing)
    for ad in report["image_corrupt"]["ad_ids"] + report["image_missing"]["ad_ids"]:
        assert _decodes(os.path.join(root, image_relpath(ad)))


def test_empty_day_keeps_the_full_schema(tmp_path):
    cfg = tiny_cfg(tmp_path, world__bad_data__empty_day=True)
    summary = generate_day(cfg, DAYS[0])
    tables = read_day(cfg, DAYS[0])
    assert summary["impressions"] == 0 and tables["impressions"].num_rows == 0
    assert tables["impressions"].schema.names == names(IMPRESSION_FIELDS)
    assert tables["truth"].num_rows == 0 and tables["ads"].num_rows > 0
