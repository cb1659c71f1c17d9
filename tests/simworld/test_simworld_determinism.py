"""Same seed and date give the same rows and image bytes, whatever range the day was made in."""

from __future__ import annotations

import os

from simworld_helpers import DAYS, read_day, tiny_cfg

from core.paths import Paths, local_path
from simworld.generate import generate_day


def _image_bytes(cfg, ads_table) -> dict[str, bytes]:
    root = local_path(Paths.of(cfg).landing)
    out = {}
    for uri in ads_table.column("image_uri").to_pylist():
        with open(os.path.join(root, uri), "rb") as f:
            out[uri] = f.read()
    return out


def test_day_alone_equals_day_inside_a_range(tiny_world, tmp_path):
    alone = tiny_cfg(tmp_path)
    generate_day(alone, DAYS[-1])
    ranged, single = read_day(tiny_world, DAYS[-1]), read_day(alone, DAYS[-1])
    for name in ("impressions", "ads", "truth"):
        assert ranged[name].num_rows > 0
        assert ranged[name].equals(single[name]), f"{name} differ"
    assert _image_bytes(tiny_world, ranged["ads"]) == _image_bytes(alone, single["ads"])


def test_regenerating_a_day_replaces_it_with_identical_rows_and_images(tmp_path):
    cfg = tiny_cfg(tmp_path)
    generate_day(cfg, DAYS[0])
    first = read_day(cfg, DAYS[0])
    images_before = _image_bytes(cfg, first["ads"])
    for path in list(images_before)[:5]:  # force a redraw of a few images
        os.remove(os.path.join(local_path(Paths.of(cfg).landing), path))
    generate_day(cfg, DAYS[0])
    again = read_day(cfg, DAYS[0])
    for name in ("impressions", "ads", "truth"):
        assert first[name].equals(again[name]), f"{name} differ"
    assert _image_bytes(cfg, again["ads"]) == images_before


def test_another_seed_gives_other_data(tiny_world, tmp_path):
    other = tiny_cfg(tmp_path, world__seed=tiny_world.world.seed + 1)
    generate_day(other, DAYS[0])
    a, b = read_day(tiny_world, DAYS[0]), read_day(other, DAYS[0])
    assert a["impressions"].column("user_id") != b["impressions"].column("user_id")
    assert a["ads"].column("category_id") != b["ads"].column("category_id")
    assert _image_bytes(tiny_world, a["ads"]) != _image_bytes(other, b["ads"])
