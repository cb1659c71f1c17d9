"""bench/beyond.py: the two worlds' ablation results judged as the options' claims."""

from __future__ import annotations

import pytest

from bench.ablation import summarize
from bench.beyond import CONTROL_MAX, WORLDS, compose, markdown

SETTINGS = {"world": {"image_size": 32}, "run": {"window_days": 2, "rare_impressions": 3000}}


def _world(gains: list[dict[str, float]]) -> dict:
    """An ablation result of cscnn and its two options; ``gains`` per seed: parent, parent_rare, brand."""
    per_seed = []
    for k, g in enumerate(gains, start=1):
        base = 0.80 + 0.01 * k
        aucs = {"cscnn": (base, 0.60), "cscnn_parent": (base + g["parent"], 0.60 + g["parent_rare"]),
                "cscnn_brand": (base + g["brand"], 0.60)}
        per_seed.append({"seed": k, "oracle_auc": 0.9, "oracle_auc_cold": 0.9, "train_impressions": 100,
                         "test_impressions": 50, "test_cold_impressions": 10, "data_seconds": {},
                         "test_rare_impressions": 20, "test_rare_categories": 4,
                         "variants": {v: {"auc": a, "auc_cold": a, "auc_rare": r, "logloss": 0.1, "seconds": 1.0}
                                      for v, (a, r) in aucs.items()}})
    return summarize(per_seed, [s["seed"] for s in per_seed], SETTINGS)


def test_the_claims_hold_when_each_option_wins_only_where_its_cue_is():
    cues = _world([{"parent": 0.000, "parent_rare": 0.010, "brand": 0.004},
                   {"parent": 0.001, "parent_rare": 0.012, "brand": 0.005},
                   {"parent": -0.001, "parent_rare": 0.009, "brand": 0.006}])
    control = _world([{"parent": 0.000, "parent_rare": 0.002, "brand": 0.000},
                      {"parent": 0.000, "parent_rare": -0.003, "brand": 0.001},
                      {"parent": 0.000, "parent_rare": 0.000, "brand": -0.001}])
    out = compose({"cues": cues, "no_cues": control})
    assert out["all_claims_hold"] and out["seeds"] == [1, 2, 3]
    assert out["reported_not_required"] == {"cscnn_parent>cscnn on all categories (cues world)": False}
    assert out["paired_gains"]["cues"]["cscnn_parent-cscnn"]["rare"]["by_seed"] == [0.01, 0.012, 0.009]
    assert out["worlds"]["cues"]["sibling_share"] == 1.0 and out["worlds"]["no_cues"]["w_brand"] == 0.0
    assert set(WORLDS) == {"cues", "no_cues"}
    text = markdown(out)
    assert "| cues | cscnn_brand-cscnn | all |" in text and "does not hold" in text


@pytest.mark.parametrize("breach", ["brand", "parent_rare"])
def test_a_control_gain_above_the_limit_or_a_seed_against_the_claim_fails_it(breach):
    cues = _world([{"parent": 0.0, "parent_rare": 0.01, "brand": 0.004}] * 2
                  + [{"parent": 0.0, "parent_rare": -0.001, "brand": -0.001}])
    leak = {"parent": 0.0, "parent_rare": 0.0, "brand": 0.0, breach: 2 * CONTROL_MAX}
    out = compose({"cues": cues, "no_cues": _world([leak] * 3)})
    claims = out["claims"]
    assert not claims["cscnn_parent>cscnn on rare categories (cues world)"]  # one seed went the other way
    assert not claims["cscnn_brand>cscnn (cues world)"]
    control = [k for k, v in claims.items() if k.startswith("control") and not v]
    assert len(control) == 1 and ("brand" in control[0]) == (breach == "brand")
    assert not out["all_claims_hold"]


def test_worlds_of_different_seeds_are_refused():
    one = _world([{"parent": 0.0, "parent_rare": 0.0, "brand": 0.0}] * 2)
    three = _world([{"parent": 0.0, "parent_rare": 0.0, "brand": 0.0}] * 3)
    with pytest.raises(SystemExit, match="different seeds"):
        compose({"cues": one, "no_cues": three})
