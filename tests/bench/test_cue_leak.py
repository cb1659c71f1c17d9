"""The helpers of the cue-leak diagnosis (bench/cue_leak.py), on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cue_leak import eta_squared, poly_features, readout_r2


def test_eta_squared_is_the_between_group_share_of_variance():
    assert eta_squared(np.array([1.0, 1.0, 3.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert eta_squared(np.array([1.0, 3.0, 1.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    values, groups = rng.random(20_000), rng.integers(0, 20, size=20_000)
    assert eta_squared(values, groups) < 5 * 19 / 19_999  # independent of the group: chance level


def test_a_per_group_readout_decodes_a_cue_scaled_by_a_group_colour():
    """A cue multiplied by a per-group level: a readout that knows the group reads it exactly,
    one that does not is confused by the levels (the simulator's brightness x palette case)."""
    rng = np.random.default_rng(1)
    n = 6_000
    group = rng.integers(0, 8, size=n)
    level = rng.uniform(0.45, 0.70, size=8)[group]
    cue = rng.random(n)
    colour = (level * (0.45 + 0.8 * cue))[:, None] * np.array([1.0, 0.8, 0.6])  # (n, 3)
    fit = rng.random(n) < 0.5
    assert poly_features(colour, 2).shape == (n, 10)
    blind = readout_r2(poly_features(colour, 1), cue, fit)
    aware = readout_r2(poly_features(colour, 1), cue, fit, group)
    assert aware == pytest.approx(1.0, abs=1e-9)
    assert blind < 0.9
