"""The ablation's controls: shuffled priors, the oracle_visual ceiling, and control runs attached
to the headline result (bench/ablation.py)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from bench.ablation import (ORACLE_BINS, VARIANTS, WORLD_KNOBS, add_oracle_visual, attach_controls, markdown,
                            merge_results, rare_rows, shuffle_categories, summarize)
from core.config import load_config
from models.synthetic import make_examples, make_spec
from models.train import score_model, train
from simworld.clickmodel import visual_logit
from simworld.world import ads_by_id

SETTINGS = {"world": {"image_size": 32, "category_specificity": 0.7}, "run": {"window_days": 2}}


def _table(ad_ids, cats):
    return pa.table({"ad_id": pa.array(ad_ids, pa.int64()), "category_idx": pa.array(cats, pa.int32()),
                     "f_category_id": pa.array(cats, pa.int32())})


def test_shuffled_categories_are_one_per_ad_and_keep_each_category_count():
    rng = np.random.default_rng(0)
    ad_cat = rng.integers(0, 6, size=300)  # ad i has category ad_cat[i]
    rows_a, rows_b = rng.integers(0, 300, size=2000), rng.integers(0, 300, size=500)
    a, b = _table(rows_a, ad_cat[rows_a]), _table(rows_b, ad_cat[rows_b])
    sa, sb = shuffle_categories([a, b], seed=3)
    new = {}
    for t in (sa, sb):
        for ad, cat in zip(t.column("ad_id").to_pylist(), t.column("category_idx").to_pylist()):
            assert new.setdefault(ad, cat) == cat  # one category per ad, in every table
    ads = sorted(new)
    assert sorted(new[x] for x in ads) == sorted(int(ad_cat[x]) for x in ads)  # same count per category
    assert np.mean([new[x] != ad_cat[x] for x in ads]) > 0.5  # most ads now carry another category
    assert sa.column("f_category_id").equals(a.column("f_category_id"))  # the DCN's feature is untouched
    assert sa.schema == a.schema
    assert shuffle_categories([a, b], seed=3)[0].equals(sa)  # deterministic per seed
    assert not shuffle_categories([a, b], seed=4)[0].equals(sa)


def test_oracle_visual_bins_the_true_visual_logit_and_trains_as_a_dcn_field(tmp_path):
    cfg = load_config(overrides={**WORLD_KNOBS, "world.seed": 2, "model.variant": "dcn",
                                 "model.deep_dims": [16, 8], "model.head_dims": [8], "train.batch_size": 64,
                                 "train.device": "cpu", "train.epochs": 1, "train.checkpoint_every": 0,
                                 "train.warm_start": False})
    spec = make_spec(n_categories=4, vocab=13)
    train_df, images = make_examples(spec, n_ads=40, impressions_per_ad=(4, 10), seed=1)
    hold_df, hold_images = make_examples(spec, n_ads=10, impressions_per_ad=(4, 10), seed=2)
    train_tbl, hold_tbl = pa.Table.from_pandas(train_df), pa.Table.from_pandas(hold_df)
    ospec, (otrain, ohold) = add_oracle_visual(cfg, spec, [train_tbl, hold_tbl])

    assert ospec.single == {**spec.single, "oracle_visual": ORACLE_BINS + 1} and ospec.multi == spec.multi
    for t in (otrain, ohold):
        ads = np.asarray(t.column("ad_id"))
        bins = np.asarray(t.column("f_oracle_visual"))
        logit = visual_logit(cfg.world, ads_by_id(cfg.world, ads))
        assert bins.min() >= 1 and bins.max() <= ORACLE_BINS
        order = np.argsort(logit, kind="stable")
        assert (np.diff(bins[order]) >= 0).all()  # bins rise with the true visual logit
    train_bins = np.unique(np.asarray(otrain.column("f_oracle_visual")))
    assert len(train_bins) > 20  # 40 training ads spread over the quantile bins

    out = train(cfg, ospec, otrain, None, {**images, **hold_images}, tmp_path / "oracle", resume=False)
    metrics = score_model(out["model_path"], ohold, {**images, **hold_images})
    assert 0.0 <= metrics["auc"] <= 1.0
    with pytest.raises(ValueError, match="f_oracle_visual"):  # the field is part of the model's spec
        score_model(out["model_path"], hold_tbl, {**images, **hold_images})


def _seed(seed: int, aucs: dict[str, float]) -> dict:
    return {"seed": seed, "oracle_auc": 0.8, "oracle_auc_cold": 0.82, "train_impressions": 100,
            "test_impressions": 50, "test_cold_impressions": 10, "data_seconds": {},
            "variants": {v: {"auc": a, "auc_cold": a - 0.01, "logloss": 0.1, "seconds": 1.0}
                         for v, a in aucs.items()}}


def test_a_subset_run_judges_only_the_claims_it_ran_and_reports_visual_headroom():
    seeds = [_seed(1, {"dcn": 0.70, "cbam": 0.71, "cscnn": 0.72, "oracle_visual": 0.74}),
             _seed(2, {"dcn": 0.69, "cbam": 0.70, "cscnn": 0.73, "oracle_visual": 0.74})]
    out = summarize(seeds, [1, 2], SETTINGS)
    assert list(out["variants"]) == ["dcn", "cbam", "cscnn", "oracle_visual"]
    assert list(out["paired_gains"]) == ["cscnn-cbam"]
    assert out["verdict"] == {"cscnn>cbam": True, "all_required": None}
    assert out["gap_closed_by_cscnn"]["overall"] is not None
    head = out["visual_headroom_closed"]
    assert head["cscnn"]["overall_by_seed"] == [0.5, 0.8]  # 0.02 / 0.04 and 0.04 / 0.05
    assert head["cscnn"]["overall"] == pytest.approx(0.65) and head["cbam"]["overall"] == pytest.approx(0.225)  # 0.25, 0.2
    assert "cnn_finetune" not in head
    text = markdown(out)
    assert "visual_headroom_closed" in text and "all_required" not in text


def test_controls_attach_beside_the_headline_and_give_the_category_specific_gain():
    full = dict(zip(VARIANTS, (0.700, 0.705, 0.712, 0.713, 0.720)))
    headline = summarize([_seed(1, full), _seed(2, {**full, "cscnn": 0.716})], [1, 2], SETTINGS)
    spec0_settings = {"world": {**SETTINGS["world"], "category_specificity": 0}, "run": SETTINGS["run"]}
    spec0 = summarize([_seed(1, {"cbam": 0.80, "cscnn": 0.802, "cscnn_shuffled": 0.801}),
                       _seed(2, {"cbam": 0.81, "cscnn": 0.810, "cscnn_shuffled": 0.809})], [1, 2], spec0_settings)
    ceiling = summarize([_seed(1, {"dcn": 0.700, "oracle_visual": 0.740}),
                         _seed(2, {"dcn": 0.7001, "oracle_visual": 0.720})], [1, 2], SETTINGS)
    out = attach_controls(headline, {"spec0": ("bench/results/s0.json", spec0),
                                     "headroom": ("bench/results/h.json", ceiling)})
    assert out["controls"]["spec0"]["world_differs"] == {"category_specificity": 0}
    assert out["controls"]["headroom"]["world_differs"] == {}
    assert out["controls"]["headroom"]["rerun_max_abs_auc_diff"] == {"dcn": pytest.approx(0.0001)}
    assert "rerun_max_abs_auc_diff" not in out["controls"]["spec0"]  # another world: nothing to compare
    gain = out["category_specific_gain"]
    assert gain["control"] == "spec0"
    assert gain["by_seed"] == [pytest.approx(0.007 - 0.002), pytest.approx(0.003 - 0.0)]
    head = out["visual_headroom_closed"]
    assert head["control"] == "headroom" and head["dcn_rerun_max_abs_auc_diff"] == pytest.approx(0.0001)
    assert head["cscnn"]["overall_by_seed"] == [pytest.approx(0.5), pytest.approx(0.8)]  # 0.02/0.04, 0.016/0.02
    assert out["paired_gains"] == headline["paired_gains"]  # the headline itself is unchanged
    json.dumps(out)  # what --attach writes
    assert attach_controls(out, {})["controls"] == {} and "category_specific_gain" not in attach_controls(out, {})
    text = markdown(out)
    assert "Control `spec0`" in text and "Category-specific gain" in text

    other_seeds = summarize([_seed(3, {"cbam": 0.8, "cscnn": 0.8})], [3], spec0_settings)
    with pytest.raises(SystemExit, match="seeds"):
        attach_controls(headline, {"late": ("x.json", other_seeds)})


def test_rare_rows_are_the_test_rows_of_categories_with_few_training_rows():
    train_tbl = _table([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 2])
    hold = _table([7, 8, 9, 10, 11], [0, 1, 2, 3, 0])
    rare, n = rare_rows(train_tbl, hold, min_impressions=2)
    assert rare.tolist() == [False, False, True, True, False] and n == 2  # category 2 (1 row), 3 (none)


def test_rare_category_gains_are_summarized_and_survive_a_merge(tmp_path):
    def seed(k, parent_gain):
        s = _seed(k, {"cscnn": 0.72, "cscnn_parent": 0.721})
        s.update({"test_rare_impressions": 40, "test_rare_categories": 3})
        s["variants"]["cscnn"]["auc_rare"] = 0.60
        s["variants"]["cscnn_parent"]["auc_rare"] = 0.60 + parent_gain
        return s

    settings = {"world": SETTINGS["world"], "run": {**SETTINGS["run"], "rare_impressions": 500}}
    out = summarize([seed(1, 0.02), seed(2, 0.03)], [1, 2], settings)
    rare = out["paired_gains_rare"]["cscnn_parent-cscnn"]
    assert rare["by_seed"] == [0.02, 0.03] and rare["all_positive"] and rare["mean_gt_std"]
    assert out["rare_impressions"] == 500 and out["test_rare_categories"] == [3, 3]
    assert "Rare categories (fewer than 500" in markdown(out)
    paths = []
    for s in (seed(1, 0.02), seed(2, 0.03)):
        paths.append(tmp_path / f"s{s['seed']}.json")
        paths[-1].write_text(json.dumps(summarize([s], [s["seed"]], settings)))
    merged = merge_results([str(p) for p in paths], [1, 2])
    assert merged["paired_gains_rare"] == out["paired_gains_rare"]
