"""The ablation's paired statistics and verdicts (bench/ablation.py summarize), on made-up AUCs."""

from __future__ import annotations

import json

import pytest

from bench.ablation import VARIANTS, markdown, merge_results, summarize

SETTINGS = {"world": {"image_size": 32}, "run": {"window_days": 2}}


def _seed(seed: int, aucs: dict[str, float], oracle: float = 0.80) -> dict:
    return {"seed": seed, "oracle_auc": oracle, "oracle_auc_cold": oracle + 0.02, "train_impressions": 100,
            "test_impressions": 50, "test_cold_impressions": 10, "data_seconds": {},
            "variants": {v: {"auc": a, "auc_cold": a - 0.01, "logloss": 0.1, "seconds": 1.0}
                         for v, a in aucs.items()}}


def test_chain_that_holds_in_every_seed_passes_every_claim():
    seeds = [_seed(1, dict(zip(VARIANTS, (0.700, 0.705, 0.712, 0.713, 0.720)))),
             _seed(2, dict(zip(VARIANTS, (0.690, 0.696, 0.701, 0.700, 0.711)))),
             _seed(3, dict(zip(VARIANTS, (0.710, 0.714, 0.722, 0.724, 0.730))))]
    out = summarize(seeds, [1, 2, 3], SETTINGS)
    assert out["complete"] is True and out["seeds_finished"] == 3
    gain = out["paired_gains"]["cnn_fixed-dcn"]
    assert gain["by_seed"] == [0.005, 0.006, 0.004]
    assert gain["mean"] == pytest.approx(0.005) and gain["std"] == pytest.approx(0.001)
    assert out["verdict"] == {"dcn<cnn_fixed": True, "cnn_fixed<cnn_finetune": True, "cscnn>cnn_finetune": True,
                              "cscnn>cbam": True, "all_required": True,
                              "cbam>=cnn_finetune (reported, not required)": False}  # seed 2: cbam < finetune
    # seed 1: (0.720 - 0.700) / (0.80 - 0.700) = 0.2; seed 2: 0.021 / 0.11; seed 3: 0.02 / 0.09
    assert out["gap_closed_by_cscnn"]["overall"] == pytest.approx((0.2 + 0.021 / 0.11 + 0.02 / 0.09) / 3, abs=1e-5)


def test_noisy_gain_fails_and_one_seed_decides_nothing():
    noisy = [_seed(1, dict(zip(VARIANTS, (0.700, 0.701, 0.712, 0.713, 0.720)))),
             _seed(2, dict(zip(VARIANTS, (0.700, 0.709, 0.712, 0.713, 0.720))))]
    out = summarize(noisy, [1, 2, 3], SETTINGS)
    assert out["complete"] is False and out["seeds"] == [1, 2]
    assert out["paired_gains"]["cnn_fixed-dcn"]["all_positive"] is True
    assert out["paired_gains"]["cnn_fixed-dcn"]["mean_gt_std"] is False  # mean 0.005 < std 0.00566
    assert out["verdict"]["dcn<cnn_fixed"] is False and out["verdict"]["all_required"] is False

    single = summarize(noisy[:1], [1], SETTINGS)
    assert single["paired_gains"]["cscnn-cbam"]["std"] is None
    assert not any(single["verdict"].values())


def test_merge_of_seeds_run_apart_equals_one_summary(tmp_path):
    seeds = [_seed(1, dict(zip(VARIANTS, (0.700, 0.705, 0.712, 0.713, 0.720)))),
             _seed(3, dict(zip(VARIANTS, (0.690, 0.696, 0.701, 0.700, 0.711))), oracle=0.79)]
    files = []
    for s in seeds:
        files.append(str(tmp_path / f"seed{s['seed']}.json"))
        with open(files[-1], "w") as f:
            json.dump(summarize([s], [s["seed"]], SETTINGS), f)
    merged = merge_results(files[::-1], [1, 3])
    merged.pop("merged_from")
    assert merged == json.loads(json.dumps(summarize(seeds, [1, 3], SETTINGS)))

    with open(files[1], "w") as f:
        json.dump(summarize([seeds[1]], [3], {"world": {"image_size": 64}, "run": SETTINGS["run"]}), f)
    with pytest.raises(SystemExit, match="settings or world knobs differ"):
        merge_results(files, [1, 3])


def test_markdown_shows_every_variant_gain_and_verdict():
    seeds = [_seed(1, dict(zip(VARIANTS, (0.700, 0.705, 0.712, 0.713, 0.720)))),
             _seed(2, dict(zip(VARIANTS, (0.690, 0.696, 0.701, 0.700, 0.711))))]
    text = markdown(summarize(seeds, [1, 2], SETTINGS))
    for v in VARIANTS:
        assert f"| {v} | " in text
    assert "| cbam-cnn_finetune | +0.0010, -0.0010 | +0.0000 |" in text
    assert "| cscnn-cbam | +0.0070, +0.0110 | +0.0090 | 0.0028 | yes | yes |" in text
    assert "cscnn>cbam: holds" in text and "cbam>=cnn_finetune (reported, not required): does not hold" in text
    single = markdown(summarize(seeds[:1], [1, 2], SETTINGS))
    assert "complete: false" in single and "| +0.0070 | +0.0070 | - |" in single  # no std from one seed
