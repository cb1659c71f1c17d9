"""The validate stage's report inputs (spark_jobs/report_inputs.py): calibration bins, attention
maps of the model, their overlays and panels, and the choice of the ads drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import load_config
from models.ctr import CTRModel
from models.synthetic import make_spec
from spark_jobs.report_inputs import (NoSpatialAttention, calibration_bins, choose_attention_ads, heat_colors,
                                      overlay, panel_png, spatial_attention_maps)


def test_calibration_bins_by_hand():
    bins = calibration_bins([0, 1, 0, 1, 1, 1], [0.9, 0.2, 0.1, 0.4, 0.6, 0.8], n_bins=3)
    assert [b.n for b in bins] == [2, 2, 2]
    assert [b.lo for b in bins] == [0.1, 0.4, 0.8] and [b.hi for b in bins] == [0.2, 0.6, 0.9]
    assert [b.mean_pred for b in bins] == pytest.approx([0.15, 0.5, 0.85])
    assert [b.observed_ctr for b in bins] == pytest.approx([0.5, 1.0, 0.5])
    assert len(calibration_bins([1, 0], [0.3, 0.2], n_bins=10)) == 2
    assert calibration_bins([], []) == []
    with pytest.raises(ValueError, match="one length"):
        calibration_bins([0, 1], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_bins([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="0 or 1"):
        calibration_bins([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins([0, 1], [0.5, 0.5], n_bins=0)


def tiny_model(variant: str) -> CTRModel:
    cfg = load_config(overrides={"model.variant": variant, "model.deep_dims": [8], "model.head_dims": [4],
                                 "model.visual_dim": 4, "model.prior_channels": 2, "model.prior_spatial": 3,
                                 "model.attention_layers": 2})
    torch.manual_seed(0)
    return CTRModel(make_spec(n_categories=3, vocab=5), cfg.model).eval()


def test_spatial_maps_are_category_specific_and_image_sized():
    model = tiny_model("cscnn")
    last = [m for m in model.tower.modules() if type(m).__name__ == "CSCNNAttention"][-1]
    with torch.no_grad():  # give category 2 a distinct spatial prior so its map must differ
        last.spatial_prior.weight[2] = torch.linspace(-3, 3, last.spatial_prior.weight.shape[1])
    images = np.random.default_rng(0).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8).repeat(2, axis=0)
    maps = spatial_attention_maps(model, images, [0, 2])
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert ((maps > 0) & (maps < 1)).all()
    assert not np.allclose(maps[0], maps[1])
    assert model.training is False
    with pytest.raises(ValueError, match="one category per image"):
        spatial_attention_maps(model, images, [0])


def test_models_without_spatial_attention_are_refused():
    for variant in ("dcn", "cnn_finetune"):
        with pytest.raises(NoSpatialAttention, match=variant):
            spatial_attention_maps(tiny_model(variant), np.zeros((1, 32, 32, 3), np.uint8), [0])


def test_overlay_and_panel():
    assert heat_colors(np.array([0.0, 1.0])).tolist() == [[20, 30, 140], [220, 20, 20]]
    image = np.full((4, 4, 3), 100, np.uint8)
    att = np.zeros((4, 4), np.float32)
    att[0, 0] = 1.0
    out = overlay(image, att, alpha=1.0)
    assert out[0, 0].tolist() == [220, 20, 20] and out[3, 3].tolist() == [20, 30, 140]
    flat = overlay(image, np.full((4, 4), 0.5, np.float32), alpha=0.0)
    assert (flat == image).all()
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((2, 2)))
    png = panel_png([image, image], [out, out], cell=8)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_ads_are_the_most_shown_of_the_most_shown_categories():
    # with an image: category 7 has ad 1 x3 and ad 2 x1 (ad 9 has none, so its row is left out),
    # category 3 ads 4 and 6 once each, category 5 ad 8 once
    ad_ids = np.array([1, 1, 1, 2, 9, 4, 6, 8])
    categories = np.array([7, 7, 7, 7, 7, 3, 3, 5])
    chosen = choose_attention_ads(ad_ids, categories, with_image={1, 2, 4, 6, 8}, n_categories=2, ads_per_category=1)
    assert chosen == {7: ([1], 4), 3: ([4], 2)}  # ties by id
    assert choose_attention_ads(ad_ids, categories, with_image=set()) == {}
    with pytest.raises(ValueError, match="n_categories"):
        choose_attention_ads(ad_ids, categories, {1}, n_categories=0)
