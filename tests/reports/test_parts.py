"""The report's inline SVG charts (reports.svg)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from reports import svg

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
