"""bench/headroom.py: each training setting's share of the visual headroom beside the base one."""

from __future__ import annotations

import pytest

from bench.ablation import summarize
from bench.headroom import compose


def _run(dcn: float, cscnn: float, oracle: float) -> dict:
    seed = {"seed": 1, "oracle_auc": 0.9, "oracle_auc_cold": 0.9, "train_impressions": 100, "test_impressions": 50,
            "test_cold_impressions": 10, "data_seconds": {},
            "variants": {v: {"auc": a, "auc_cold": a - 0.05, "logloss": 0.1, "seconds": 2.0}
                         for v, a in (("dcn", dcn), ("cscnn", cscnn), ("oracle_visual", oracle))}}
    return summarize([seed], [1], {"world": {"image_size": 32}, "run": {}})


def test_each_setting_reports_its_share_and_the_change_from_base():
    out = compose({"base": _run(0.80, 0.81, 0.84), "epochs_3": _run(0.80, 0.83, 0.84)})
    base, more = out["results"]["base"], out["results"]["epochs_3"]
    assert base["closed"] == pytest.approx(0.25) and more["closed"] == pytest.approx(0.75)
    assert more["closed_vs_base"] == pytest.approx(0.5) and base["closed_vs_base"] == 0
    assert more["cscnn_auc"] == 0.83 and more["oracle_visual_auc_cold"] == pytest.approx(0.79)
    assert out["settings"]["epochs_3"]["overrides"] == {"train.epochs": 3} and out["seed"] == 1
