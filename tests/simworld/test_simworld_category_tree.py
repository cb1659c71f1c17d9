"""The category-tree knobs: Zipf category sizes (world.zipf_categories) and siblings sharing their
attractive conjunction through the parent (world.sibling_share)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.config import ConfigError, WorldConfig, load_config
from simworld.world import categories


def _world(**knobs) -> WorldConfig:
    return dataclasses.replace(WorldConfig(seed=11, n_categories=60, n_top_categories=8), **knobs)


def _targets(cats) -> np.ndarray:
    return cats.target_colour.astype(np.int64) * 4 + cats.target_quadrant


def test_with_full_sharing_every_sibling_has_its_parents_conjunction():
    cats = categories(_world(sibling_share=1.0))
    t = _targets(cats)
    for p in np.unique(cats.parent):
        assert len(np.unique(t[cats.parent == p])) == 1
    assert len(np.unique(t)) > 1  # parents differ


def test_without_sharing_the_world_is_the_one_before_the_knob_and_siblings_differ():
    flat, default = categories(_world(sibling_share=0.0)), categories(_world())
    assert np.array_equal(_targets(flat), _targets(default))
    assert np.array_equal(flat.palette, default.palette) and np.array_equal(flat.weight, default.weight)
    t = _targets(flat)
    shared = np.mean([len(np.unique(t[flat.parent == p])) == 1 for p in np.unique(flat.parent)
                      if (flat.parent == p).sum() > 1])
    assert shared < 0.5  # 32 conjunctions: siblings rarely agree by chance


def test_half_sharing_gives_about_half_the_leaves_their_parents_conjunction():
    half, full = categories(_world(sibling_share=0.5)), categories(_world(sibling_share=1.0))
    same = _targets(half) == _targets(full)
    assert 0.3 < same.mean() < 0.7


def test_a_larger_category_exponent_makes_more_rare_categories():
    mild, steep = categories(_world()), categories(_world(zipf_categories=1.5))
    assert np.sort(steep.weight)[:30].sum() < np.sort(mild.weight)[:30].sum() / 2
    assert steep.weight.sum() == pytest.approx(1.0)


def test_bad_tree_knobs_are_errors_naming_them():
    with pytest.raises(ConfigError, match="world.sibling_share"):
        load_config(overrides={"world.sibling_share": 1.5})
    with pytest.raises(ConfigError, match="world.zipf_categories"):
        load_config(overrides={"world.zipf_categories": 0})
