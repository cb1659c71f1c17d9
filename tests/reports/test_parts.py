"""The report's building blocks: SVG charts, calibration bins, attention maps and overlays."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from core.config import load_config
from models.ctr import CTRModel
from models.synthetic import make_spec
from reports import svg
from reports.attention_maps import (NoSpatialAttention, heat_colors, overlay, panel_png,
                                    spatial_attention_maps)
from reports.calibration import calibration_bins

SVG_NS = "{http://www.w3.org/2000/svg}"


def test_line_chart_is_valid_svg_with_labelled_axes_and_escaped_text():
    chart = svg.line_chart([svg.Series("a<b>", [(0, 0.7), (1, None), (2, 0.72), (3, 0.74)])],
                           title="AUC & more", x_label="run date", y_label="AUC",
                           x_tick_labels={0: "d0", 1: "d1", 2: "d2", 3: "d3"},
                           reference_lines=[svg.ReferenceLine(0.71, "floor")])
    root = ET.fromstring(chart)  # well-formed XML (escaped '&' and '<')
    texts = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert {"AUC & more", "run date", "AUC", "a<b>", "floor", "d0", "d3"} <= set(texts)
    # the None point breaks the line: two runs, the first with one point (no polyline), so one polyline
    assert len(list(root.iter(f"{SVG_NS}polyline"))) == 1
    assert len(list(root.iter(f"{SVG_NS}circle"))) == 3


def test_line_chart_log_axis_and_errors():
    chart = svg.line_chart([svg.Series("cov", [(10, 0.3), (1000, 0.9)])], title="t", x_label="ads", y_label="c",
                           x_log=True)
    texts = [t.text for t in ET.fromstring(chart).iter(f"{SVG_NS}text")]
    assert {"10", "100", "1000"} <= set(texts) and "ads (log scale)" in texts
    with pytest.raises(ValueError, match="no finite points"):
        svg.line_chart([svg.Series("x", [(0, None)])], title="empty", x_label="x", y_label="y")
    with pytest.raises(ValueError, match="log x axis needs x > 0"):
        svg.line_chart([svg.Series("x", [(0, 1.0)])], title="t", x_label="x", y_label="y", x_log=True)


def test_nice_ticks():
    assert svg.nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svg.nice_ticks(0.693, 0.741) == [0.7, 0.71, 0.72, 0.73, 0.74]
    assert svg.log_ticks(10, 10000) == [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


def test_calibration_bins_by_hand():
    bins = calibration_bins([0, 1, 0, 1, 1, 1], [0.9, 0.2, 0.1, 0.4, 0.6, 0.8], n_bins=3)
    assert [b["n"] for b in bins] == [2, 2, 2]
    assert [b["lo"] for b in bins] == [0.1, 0.4, 0.8] and [b["hi"] for b in bins] == [0.2, 0.6, 0.9]
    assert [b["mean_pred"] for b in bins] == pytest.approx([0.15, 0.5, 0.85])
    assert [b["observed_ctr"] for b in bins] == pytest.approx([0.5, 1.0, 0.5])
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
