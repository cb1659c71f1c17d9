"""Images look like their category; the truth depends on the three visual components; AUC."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from core.paths import Paths, local_path
from simworld import clickmodel
from simworld.truth import auc, oracle_auc
from simworld.world import (BLOB_DECOY_COLOUR, BLOB_DECOY_REGION, BLOB_KIND_P, BLOB_OTHER, BLOB_TARGET, ads_by_id,
                            categories)
from simworld_helpers import DAYS, read_day


def _pixels(cfg, ads_table) -> np.ndarray:
    """(n, S, S, 3) uint8 images of a catalog table."""
    root = local_path(Paths.of(cfg).landing)
    out = []
    for uri in ads_table.column("image_uri").to_pylist():
        with Image.open(os.path.join(root, uri)) as img:
            assert img.mode == "RGB" and img.size == (cfg.world.image_size, cfg.world.image_size)
            out.append(np.asarray(img))
    return np.stack(out)


def test_image_colour_depends_on_the_category(tiny_world):
    ads = read_day(tiny_world, DAYS[0])["ads"]
    mean_rgb = _pixels(tiny_world, ads).reshape(ads.num_rows, -1, 3).mean(axis=1)  # (n, 3)
    cats = ads.column("category_id").to_numpy()
    groups = [mean_rgb[cats == k] for k in np.unique(cats) if (cats == k).sum() >= 5]
    assert len(groups) >= 4
    centres = np.stack([g.mean(axis=0) for g in groups])  # (K, 3)
    within = np.mean([np.linalg.norm(g - g.mean(axis=0), axis=1).mean() for g in groups])
    between = np.linalg.norm(centres[:, None] - centres[None, :], axis=2).max()
    assert between > within


def test_truth_carries_each_visual_component(tiny_world):
    imps = read_day(tiny_world, DAYS[1])
    truth = imps["truth"].column("p_click").to_numpy()
    ads = ads_by_id(tiny_world.world, imps["impressions"].column("ad_id").to_numpy())
    logit = np.log(truth / (1 - truth))
    target = ads.blob_kind == BLOB_TARGET
    assert logit[target].mean() > logit[~target].mean() + 0.5
    position = ads.visual_position
    assert logit[position > 0].mean() > logit[position < 0].mean() + 0.5
    assert np.corrcoef(ads.brightness, logit)[0, 1] > 0.1


@pytest.mark.parametrize("specificity", [0.0, 1.0])
def test_category_specificity_moves_weight_between_pattern_kinds(tiny_world, specificity):
    world = dataclasses.replace(tiny_world.world, category_specificity=specificity)
    ads = ads_by_id(world, np.arange(1, 301))
    visual = clickmodel.visual_logit(world, ads)
    generic = world.w_generic * ads.visual_generic
    rest = visual - generic
    if specificity == 0.0:
        np.testing.assert_allclose(rest, 2 * world.w_position * ads.visual_position, rtol=1e-6)
    else:
        np.testing.assert_allclose(rest, 2 * world.w_category * (ads.visual_category - BLOB_KIND_P[BLOB_TARGET]), rtol=1e-6)


def test_decoys_share_exactly_one_half_of_the_conjunction(tiny_world):
    ads = ads_by_id(tiny_world.world, np.arange(1, 2001))
    cats = categories(tiny_world.world)
    same_colour = ads.blob_colour == cats.target_colour[ads.category]
    same_region = ads.blob_quadrant == cats.target_quadrant[ads.category]
    kind = ads.blob_kind
    assert (same_colour & same_region)[kind == BLOB_TARGET].all()
    assert (same_colour & ~same_region)[kind == BLOB_DECOY_COLOUR].all()
    assert (~same_colour & same_region)[kind == BLOB_DECOY_REGION].all()
    assert (~same_colour & ~same_region)[kind == BLOB_OTHER].all()
    assert all((kind == k).sum() > 100 for k in range(4))


def test_oracle_auc_is_high_on_a_small_day(tiny_world):
    value = oracle_auc(tiny_world, DAYS[2])
    assert 0.6 < value < 1.0


def test_auc_helper_handles_ties_and_orders():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    # Positives 0.4 and 0.8 against negatives 0.1 and 0.4: (1 + 0.5 + 1 + 1) / 4.
    assert auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.4, 0.8])) == 0.875
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([1, 1]), np.array([0.2, 0.3]))
