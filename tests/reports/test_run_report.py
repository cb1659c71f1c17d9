"""The HTML run report: failed runs, every input kind, charts, attention overlays, escaping."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.config import load_config
from core.paths import Paths
from models.synthetic import make_examples, make_spec
from models.train import train
from reports.calibration import calibration_bins
from reports.run_report import ReportError, auc_history, render

DAY = "2026-02-05"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTILE = '<script>alert("x")</script>'
TINY_MODEL = {"model.deep_dims": [16, 8, 4], "model.head_dims": [8], "model.visual_dim": 6,
              "model.prior_channels": 3, "model.prior_spatial": 3, "model.attention_layers": 2,
              "train.batch_size": 64, "train.lr": 0.01, "train.device": "cpu", "train.max_steps": 4}


def write_config(tmp_path, **overrides) -> tuple[str, object]:
    cfg = load_config(overrides={"storage.root": str(tmp_path / "var"), **TINY_MODEL, **overrides})
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    return str(path), cfg


def write_json(path, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def read_report(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CSCNN model trained on synthetic 32x32 data, with its holdout and images (4 categories)."""
    out = tmp_path_factory.mktemp("model")
    cfg = load_config(overrides=TINY_MODEL)
    spec = make_spec(n_categories=4, vocab=13)
    train_df, images = make_examples(spec, n_ads=12, impressions_per_ad=(4, 10), image_size=32, seed=1)
    hold_df, hold_images = make_examples(spec, n_ads=16, impressions_per_ad=(4, 10), image_size=32, seed=2)
    metrics = train(cfg, spec, train_df, hold_df, {**images, **hold_images}, out)
    return {"model_path": str(out / "model.pt"), "holdout": hold_df, "images": hold_images, "metrics": metrics}


def install_run(cfg, trained) -> str:
    """Place the tiny model, its manifest and a snapshot (holdout + images) as run DAY's outputs."""
    paths = Paths.of(cfg)
    model_dir = paths.run_model_dir(DAY)
    os.makedirs(model_dir, exist_ok=True)
    with open(trained["model_path"], "rb") as src, open(os.path.join(model_dir, "model.pt"), "wb") as dst:
        dst.write(src.read())
    write_json(os.path.join(model_dir, "manifest.json"),
               {"run_date": DAY, "variant": "cscnn", "metrics": trained["metrics"], "seconds": 1.5})
    snap = paths.snapshot(DAY)
    os.makedirs(os.path.join(snap, "holdout"))
    os.makedirs(os.path.join(snap, "images"))
    pq.write_table(pa.Table.from_pandas(trained["holdout"], preserve_index=False),
                   os.path.join(snap, "holdout", "part-0.parquet"))
    ad_ids = sorted(trained["images"])
    pq.write_table(pa.table({"ad_id": pa.array(ad_ids, pa.int64()),
                             "image_bytes": [png_bytes(trained["images"][a]) for a in ad_ids]}),
                   os.path.join(snap, "images", "part-0.parquet"))
    with open(os.path.join(snap, "_SUCCESS"), "w") as f:
        f.write("{}")
    return model_dir


# --------------------------------------------------------------------------- failed runs


def test_config_only_report_names_every_stage_without_output(tmp_path):
    config_path, cfg = write_config(tmp_path)
    path = render(config_path, DAY)
    assert path == Paths.of(cfg).run_report(DAY) and os.path.isfile(path)
    page = read_report(path)
    head = re.search(r"Stages that produced nothing for [0-9-]+: ([^<]*)\.</p>", page)
    assert head is not None
    assert head.group(1).split(", ") == ["ingest_day", "check_bronze_quality", "build_window", "train_model",
                                         "build_lookup_table", "validate_gates"]
    stage_rows = re.findall(r'<tr><td>(\w+)</td><td><code>[^<]*</code></td><td><span class="badge (\w+)">', page)
    assert stage_rows == [(task, "missing") for task in (
        "ingest_day", "check_bronze_quality", "build_window", "build_window", "train_model", "build_lookup_table",
        "validate_gates", "publish")]
    for task in ("ingest_day", "check_bronze_quality", "build_window", "train_model", "build_lookup_table",
                 "validate_gates"):
        assert f"(stage <code>{task}</code> produced no output for this date)" in page
    assert "No model at" in page and "no gate verdicts" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_bad_date_and_missing_config_are_named(tmp_path):
    config_path, _ = write_config(tmp_path)
    with pytest.raises(ReportError, match="'2026-13-01'"):
        render(config_path, "2026-13-01")
    with pytest.raises(ReportError, match="nope.json"):
        render(str(tmp_path / "nope.json"), DAY)


def test_unreadable_record_is_reported_not_fatal(tmp_path):
    config_path, cfg = write_config(tmp_path)
    run_dir = Paths.of(cfg).run_dir(DAY)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "ingest.json"), "w") as f:
        f.write("{not json")
    page = read_report(render(config_path, DAY))
    assert "unreadable" in page and "ingest.json" in page


# --------------------------------------------------------------------------- fabricated inputs


def fabricate_inputs(cfg) -> dict[str, str]:
    paths = Paths.of(cfg)
    reports = paths.reports
    docs_page = os.path.join(reports, "data_docs", "validations", "bronze_impressions", DAY, "page 1.html")
    write_json(os.path.join(paths.run_dir(DAY), "ingest.json"), {
        "dt": DAY, "landing_impressions": 2000, "bronze_impressions": 1900, "quarantined_impressions": 100,
        "landing_ads": 300, "bronze_ads": 297, "quarantined_ads": 3, "new_images": 30,
        "reasons": {"impressions": {"null_required": 60, "unknown_ad": 40}, "ads": {"negative_price": 3}},
        "schema_drift": {"impressions": {"extra": ["surprise_col"], "missing": []},
                         "ads": {"extra": [], "missing": []}},
        "seconds": 4.2})
    write_json(os.path.join(reports, "quality", f"{DAY}.json"), {
        "date": DAY, "success": False, "critical_failures": 1, "trailing": {"mean_rows": 2000.0, "days": 3},
        "suites": {
            "bronze_impressions": {"success": False, "report_path": docs_page,
                                   "failed": ["expect_column_values_to_be_between(column=click): 3 unexpected",
                                              f"expect_table_row_count_to_be_between: {HOSTILE}"],
                                   "failed_critical": [
                                       "expect_column_values_to_be_between(column=click): 3 unexpected"],
                                   "statistics": {"evaluated_expectations": 12}},
            "bronze_ads": {"success": True, "failed": [], "failed_critical": [],
                           "report_path": os.path.join(reports, "data_docs", "ads.html"), "statistics": {}},
        }})
    write_json(os.path.join(paths.run_dir(DAY), "features.json"), {
        "run_date": DAY, "window_start": "2026-01-04", "window_end": "2026-02-04",
        "window_days": ["2026-02-03", "2026-02-04"], "missing_days": ["2026-02-02"],
        "rows": {"train": 4000, "holdout": 2000}, "label_rate": {"train": 0.031, "holdout": 0.029},
        "cold_rate": {"train": 0.1, "holdout": 0.2}, "mean_impressions_per_group": {"train": 7.5},
        "vocab_sizes": {"user_id": 321, "title_words": 777}, "oov_rate_window": {"user_id": 0.25},
        "oov_rate": {"train": {"user_id": 0.2}, "holdout": {"user_id": 0.4375}}})
    write_json(paths.validation_record(DAY), {
        "run_date": DAY, "passed": False, "data_docs": os.path.join(reports, "data_docs", "lookup", "v.html"),
        "gates": [{"name": "auc_floor", "passed": True, "value": 0.7311, "threshold": 0.55, "note": ""},
                  {"name": "coverage", "passed": False, "value": 0.8123, "threshold": 0.9,
                   "note": "table too small"}],
        "precision_check": {"bf16": {"max_abs_score_diff": 0.000417, "tolerance": 0.001, "passed": True}},
        "serving_precisions": ["fp32", "bf16"],
        "coverage_curve": [{"budget_ads": b, "coverage": c} for b, c in
                           ((10, 0.31), (100, 0.62), (1000, 0.88), (10000, 0.97))],
        "calibration_bins": calibration_bins(np.array([0, 0, 1, 0, 1, 1]), np.array([.1, .2, .3, .5, .6, .9]), 3)})
    write_json(os.path.join(paths.run_lookup_dir(DAY), "manifest.json"),
               {"rows": 5000, "dims": 150, "dtype": "float16", "reduction": "float16", "bytes_per_ad": 312})
    for day, auc in (("2026-02-02", 0.7011), ("2026-02-03", 0.7122), ("2026-02-04", 0.7233), ("2026-02-09", 0.9999)):
        write_json(os.path.join(paths.run_model_dir(day), "manifest.json"),
                   {"metrics": {"auc": auc, "auc_cold": auc - 0.05}})
    return {"docs_page": docs_page}


def test_fabricated_inputs_appear_in_the_report(tmp_path):
    config_path, cfg = write_config(tmp_path)
    fabricate_inputs(cfg)
    page = read_report(render(config_path, DAY))

    # gate verdicts, green and red
    assert re.search(r"<td>auc_floor</td><td><span class=\"badge pass\">PASS</span></td><td class=\"num\">0.7311",
                     page)
    assert re.search(r"<td>coverage</td><td><span class=\"badge fail\">FAIL</span></td><td class=\"num\">0.8123",
                     page)
    assert "gate(s) failed" in page and "table too small" in page
    assert 'Lookup-table quality checks: <a href="../../data_docs/lookup/v.html">Data Docs</a>' in page
    assert "<td>serving_precisions</td><td class=\"num\">fp32, bf16</td>" in page
    assert re.search(r"<td>precision_check.bf16.max_abs_score_diff</td><td class=\"num\">0.0004<", page)
    # quality: failed suite, its critical expectation and a relative link to its Data Docs page
    assert re.search(r"<td>bronze_impressions</td><td><span class=\"badge fail\">FAIL", page)
    assert re.search(r"<td>bronze_ads</td><td><span class=\"badge pass\">PASS", page)
    assert '<a href="../../data_docs/validations/bronze_impressions/2026-02-05/page%201.html">Data Docs</a>' in page
    assert "<b>CRITICAL</b> expect_column_values_to_be_between(column=click): 3 unexpected" in page
    # ingest and features
    assert "null_required" in page and "surprise_col" in page and "1,900" in page
    assert "<td>user_id</td><td class=\"num\">321</td><td class=\"num\">25.00%</td>" in page
    assert "43.75%" in page and "2026-02-02" in page
    # AUC per day across runs (this date's AUC from its validation gate), later dates excluded
    chart = page[page.index('id="auc-history"'):page.index('id="quality"')]
    assert chart.count("<svg") == 1
    for auc in ("0.7011", "0.7122", "0.7233", "0.7311"):
        assert auc in chart
    assert "0.9999" not in page and "2026-02-09" not in page
    # coverage chart and calibration bins from the records
    lookup = page[page.index('id="lookup"'):page.index('id="calibration"')]
    assert "<svg" in lookup and "Coverage vs lookup-table size" in lookup and "88.00%" in lookup
    calib = page[page.index('id="calibration"'):page.index('id="attention"')]
    assert "<svg" in calib and "recorded in" in calib and "Reliability" in calib


def test_hostile_strings_are_escaped(tmp_path):
    config_path, cfg = write_config(tmp_path)
    fabricate_inputs(cfg)
    write_json(os.path.join(Paths.of(cfg).run_lookup_dir(DAY), "manifest.json"), {"rows": 1, "model_version": HOSTILE})
    page = read_report(render(config_path, DAY))
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<script" not in page


def test_auc_history_reads_every_run_date_up_to_the_day(tmp_path):
    _, cfg = write_config(tmp_path)
    fabricate_inputs(cfg)
    hist = auc_history(Paths.of(cfg).artifacts, DAY)
    assert [h["date"] for h in hist] == ["2026-02-02", "2026-02-03", "2026-02-04", DAY]
    assert hist[-1]["auc"] == pytest.approx(0.7311) and hist[0]["auc_cold"] == pytest.approx(0.6511)


# --------------------------------------------------------------------------- the model sections


def test_attention_overlays_one_per_category_and_computed_calibration(tmp_path, trained):
    config_path, cfg = write_config(tmp_path)
    install_run(cfg, trained)
    page = read_report(render(config_path, DAY))
    section = page[page.index('id="attention"'):page.index('id="config"')]
    imgs = re.findall(r'<img class="attn" data-category="(\d+)"[^>]*src="data:image/png;base64,([^"]+)"', section)
    hold = trained["holdout"]
    expected = sorted(set(hold["category_idx"].tolist()))
    assert sorted(int(c) for c, _ in imgs) == expected  # 4 categories (< ATTENTION_CATEGORIES): all drawn
    for cat, data in imgs:
        png = Image.open(io.BytesIO(base64.b64decode(data)))
        n_ads = min(4, hold.loc[hold["category_idx"] == int(cat), "ad_id"].nunique())
        assert png.size == (n_ads * 128 + (n_ads - 1) * 4, 2 * 128 + 4)  # originals over overlays
    assert "CSCNNAttention" in section and "Could not draw" not in page
    calib = page[page.index('id="calibration"'):page.index('id="attention"')]
    assert "computed by the report from 16 of 16 holdout ads" in calib and "<svg" in calib


def test_variant_without_attention_says_so(tmp_path, trained):
    config_path, cfg = write_config(tmp_path)
    install_run(cfg, trained)
    from models.train import load_model, save_model

    model = load_model(trained["model_path"])
    plain_cfg = load_config(overrides={**TINY_MODEL, "model.variant": "dcn"})
    from models.ctr import CTRModel

    save_model(CTRModel(model.spec, plain_cfg.model), os.path.join(Paths.of(cfg).run_model_dir(DAY), "model.pt"))
    page = read_report(render(config_path, DAY))
    assert "Nothing to draw: variant &#x27;dcn&#x27; has no visual tower" in page
    assert 'class="attn"' not in page


def test_cli_writes_the_report(tmp_path):
    config_path, cfg = write_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-m", "reports.run_report", "--date", DAY, "--config", config_path],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == Paths.of(cfg).run_report(DAY)
    bad = subprocess.run([sys.executable, "-m", "reports.run_report", "--date", "yesterday", "--config", config_path],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'yesterday'" in bad.stderr


def test_published_and_live_versions_are_shown(tmp_path):
    config_path, cfg = write_config(tmp_path)
    published = os.path.join(Paths.of(cfg).artifacts, "published")
    os.makedirs(os.path.join(published, f"v3-{DAY}"))
    os.makedirs(os.path.join(published, "v2-2026-02-04"))
    write_json(os.path.join(published, "current.json"), {"version": 3, "run_date": DAY, "dir": f"v3-{DAY}"})
    page = read_report(render(config_path, DAY))
    assert f'<span class="badge pass">published v3-{DAY}</span>' in page
    assert f"live now: v3-{DAY}" in page and "v2-2026-02-04" not in page
    publish_row = re.search(r'<tr><td>publish</td><td><code>[^<]*</code></td><td><span class="badge (\w+)">', page)
    assert publish_row is not None and publish_row.group(1) == "pass"
