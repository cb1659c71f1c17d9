"""The brand-cue knobs: logos drawn in an image corner (world.brand_logos) whose colour x corner
conjunction is attractive for the ad's brand only, worth world.w_brand in the click model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.config import ConfigError, WorldConfig, load_config
from simworld.clickmodel import visual_logit
from simworld.images import LOGO_CENTRE, render
from simworld.world import BLOB_COLOURS, BLOB_KIND_P, BLOB_TARGET, active_ads, brand_targets


def _world(**knobs) -> WorldConfig:
    return dataclasses.replace(WorldConfig(seed=13, n_brands=30, initial_ads=3000, image_size=64), **knobs)


def test_a_world_without_logos_is_the_world_before_the_knob():
    plain, logos = _world(), _world(brand_logos=True)
    a, b = active_ads(plain, 0), active_ads(logos, 0)
    for name in ("category", "brand", "blob_kind", "blob_colour", "brightness", "mark_xy"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(visual_logit(plain, a), visual_logit(logos, b))  # w_brand 0: logos carry nothing
    pa, pb = render(plain, a.take(np.arange(50))), render(logos, b.take(np.arange(50)))
    differs = (pa != pb).any(axis=(0, 3))  # (S, S): pixels any ad's logo changed
    corners = np.zeros_like(differs)
    s, reach = pa.shape[1], int(np.ceil((LOGO_CENTRE + 0.07) * pa.shape[1]))
    for ys in (slice(0, reach), slice(s - reach, s)):
        for xs in (slice(0, reach), slice(s - reach, s)):
            corners[ys, xs] = True
    assert differs.any() and not differs[~corners].any()  # logos only ever touch the four corners


def test_each_logo_is_drawn_in_its_corner_and_colour():
    cfg = _world(brand_logos=True)
    ads = active_ads(cfg, 0).take(np.arange(200))
    ads = ads.take(~ads.mark_present)  # the positional badge may cover a logo
    px = render(cfg, ads).astype(np.float32) / 255.0  # (n, S, S, 3)
    s = cfg.image_size
    near, far = int(LOGO_CENTRE * s), int((1 - LOGO_CENTRE) * s)
    for i in range(len(ads)):
        corner = int(ads.logo_corner[i])
        x, y = (near, far)[corner % 2], (near, far)[corner // 2]
        np.testing.assert_allclose(px[i, y, x], BLOB_COLOURS[ads.logo_colour[i]], atol=1 / 255)


def test_the_target_logo_is_the_brands_conjunction_and_worth_w_brand():
    cfg = _world(brand_logos=True, w_brand=1.5)
    ads = active_ads(cfg, 0)
    colour, corner = brand_targets(cfg)
    target = ads.logo_kind == BLOB_TARGET
    assert abs(target.mean() - BLOB_KIND_P[BLOB_TARGET]) < 0.03
    assert np.array_equal(ads.logo_colour[target], colour[ads.brand[target]])
    assert np.array_equal(ads.logo_corner[target], corner[ads.brand[target]])
    decoy = ~target  # a decoy never shows the brand's full conjunction
    assert not ((ads.logo_colour[decoy] == colour[ads.brand[decoy]])
                & (ads.logo_corner[decoy] == corner[ads.brand[decoy]])).any()
    assert len(np.unique(colour.astype(int) * 4 + corner)) > 5  # brands differ in what attracts
    delta = visual_logit(cfg, ads) - visual_logit(dataclasses.replace(cfg, w_brand=0.0), ads)
    np.testing.assert_allclose(delta, 2 * 1.5 * (target - BLOB_KIND_P[BLOB_TARGET]), rtol=1e-6)


def test_a_brand_cue_without_logos_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"world\.w_brand.*brand_logos"):
        load_config(overrides={"world.w_brand": 1.0})
    with pytest.raises(ConfigError, match=r"world\.w_brand"):
        load_config(overrides={"world.brand_logos": True, "world.w_brand": -1})
