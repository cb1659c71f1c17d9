"""The HTML run report: failed runs, every input kind, charts, attention overlays, escaping.

The records are written in the shapes the stages write them: the report data by the validate
stage's own writer (spark_jobs/report_inputs.write_report_data), the lookup manifest by
serving.lookup.write_lookup_files with build_lookup's facts, the gate verdicts by
spark_jobs.validate's gate functions; the other records carry every key their stage writes
(spark_jobs/ingest.py, check_quality.py, build_window.py, train_model.py, validate.py), written
with core.files as the stages do.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from core import timing
from core.config import load_config
from core import storage
from core.files import write_json
from core.paths import Paths, local_path
from models.ctr import CTRModel
from models.synthetic import make_examples, make_spec
from models.train import load_model, predict, save_model, train
from reports.run_report import ReportError, auc_history, render
from serving.lookup import make_reduction, write_lookup_files
from serving.registry import switch_current
from spark_jobs.report_inputs import write_report_data
from spark_jobs.validate import Verdict, gate_auc_floor, gate_auc_vs_live

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


def read_report(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CSCNN model trained on synthetic 32x32 data, with its holdout and images (4 categories)."""
    out = tmp_path_factory.mktemp("model")
    cfg = load_config(overrides=TINY_MODEL)
    spec = make_spec(n_categories=4, vocab=13)
    train_df, images = make_examples(spec, n_ads=12, impressions_per_ad=(4, 10), image_size=32, seed=1)
    hold_df, hold_images = make_examples(spec, n_ads=16, impressions_per_ad=(4, 10), image_size=32, seed=2)
    metrics = train(cfg, spec, train_df, hold_df, {**images, **hold_images}, out)
    return {"model_path": str(out / "model.pt"), "holdout": hold_df, "images": hold_images, "metrics": metrics,
            "spec": spec}


def install_run(cfg, trained, model_path=None) -> None:
    """Run DAY's model manifest (spark_jobs/train_model.py's keys) and the report data the validate
    stage writes for it (spark_jobs.report_inputs.write_report_data on the tiny model, its holdout
    and images)."""
    paths = Paths.of(cfg)
    write_json(local_path(paths.model_manifest(DAY)), {
        "run_date": DAY, "variant": cfg.model.variant, "feature_spec": json.loads(trained["spec"].to_json()),
        "model_config": cfg.to_dict()["model"], "files": {"model.pt": "0" * 64}, "warm_start_from": None,
        "config_hash": cfg.config_hash(), "metrics": trained["metrics"], "seconds": 1.5},
        sort_keys=False, default=float)
    model = load_model(model_path or trained["model_path"])
    hold = trained["holdout"]
    preds = predict(model, hold, trained["images"] if model.uses_images else None)
    write_report_data(cfg, dt.date.fromisoformat(DAY), model, hold, trained["images"], preds, {0: 1000, 1: 1001})


def validation_record(cfg, day: str, verdicts: list[Verdict], metrics: dict, **extra) -> dict:
    """A validation record with every key spark_jobs/validate.py `run` writes."""
    return {"run_date": day, "passed": all(v.passed for v in verdicts), "coverage_curve": [],
            "gates": [asdict(v) for v in verdicts], "metrics": metrics, "precision_check": {},
            "serving_precisions": ["fp32"], "live_version": None, "model_sha256": "a" * 64,
            "lookup_manifest_sha256": "b" * 64, "model_version": f"{day}-aaaaaaaaaaaa",
            "config_hash": cfg.config_hash(), "data_docs": None,
            "validated_at": f"{day}T06:00:00+00:00", "seconds": 12.5, **extra}


def write_lookup_manifest(cfg, model_version: str = f"{DAY}-aaaaaaaaaaaa") -> None:
    """DAY's lookup folder as build_lookup writes it: serving.lookup.write_lookup_files of 40 ads
    (float16 rows of 6 dims) with build_lookup's frequency-control facts."""
    rng = np.random.default_rng(0)
    x_v = rng.normal(size=(40, 6)).astype(np.float32)
    write_lookup_files(local_path(Paths.of(cfg).run_lookup_dir(DAY)), np.arange(100, 140), rng.integers(0, 3, 40),
                       x_v, make_reduction(x_v, "float16", 0), run_date=DAY, model_version=model_version,
                       model_sha256="a" * 64,
                       extra={"candidates": 55, "budget_ads": 40, "budget_bytes": 0, "window_impression_share": 0.75})


# --------------------------------------------------------------------------- failed runs


def test_config_only_report_names_every_stage_without_output(tmp_path):
    config_path, cfg = write_config(tmp_path)
    path = render(config_path, DAY)
    assert path == Paths.of(cfg).run_report(DAY) and os.path.isfile(path)
    page = read_report(path)
    screen = page[:page.index("<h2>Details</h2>")]
    assert f"Nothing published for {DAY}" in screen and "nothing is live yet" in screen
    assert f"<li><code>ingest_day</code> failed: produced no output for {DAY} (no ingest.json)" in screen
    stage_rows = re.findall(r'<tr><td>(\w+)</td><td><code>[^<]*</code></td><td><span class="badge (\w+)">', page)
    assert stage_rows == [(task, "missing") for task in (
        "ingest_day", "check_bronze_quality", "build_window", "train_model", "build_lookup_table",
        "validate_gates", "publish")]
    for task in ("ingest_day", "check_bronze_quality", "build_window", "train_model", "build_lookup_table"):
        assert f"(stage <code>{task}</code> produced no output for this date)" in page
    assert page.count("(stage <code>validate_gates</code> produced no output for this date)") == 3  # + report data
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_bad_date_and_missing_config_are_named(tmp_path):
    config_path, _ = write_config(tmp_path)
    with pytest.raises(ReportError, match="'2026-13-01'"):
        render(config_path, "2026-13-01")
    with pytest.raises(ReportError, match="nope.json"):
        render(str(tmp_path / "nope.json"), DAY)


def test_unreadable_record_is_reported_not_fatal(tmp_path):
    config_path, cfg = write_config(tmp_path)
    path = local_path(Paths.of(cfg).ingest_record(DAY))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("{not json")
    page = read_report(render(config_path, DAY))
    assert f"Ingest record unreadable: {path}: not a valid ingest record: not valid JSON" in page


def test_a_record_not_in_its_stage_shape_is_named_as_unreadable(tmp_path):
    config_path, cfg = write_config(tmp_path)
    fabricate_inputs(cfg)
    paths = Paths.of(cfg)
    features = local_path(paths.features_record(DAY))
    with open(features) as f:
        record = json.load(f)
    write_json(features, {**record, "window_days": "2026-02-03"})
    validation = local_path(paths.validation_record(DAY))
    with open(validation) as f:
        record = json.load(f)
    del record["gates"][2]["passed"]
    write_json(validation, record)
    page = read_report(render(config_path, DAY))
    assert (f"Features metadata unreadable: {features}: not a valid features record: window_days: expected a "
            "list, got str (written by stage <code>build_window</code>)") in page
    assert (f"Validation record unreadable: {validation}: not a valid validation record: missing field "
            "&#x27;gates[2].passed&#x27;") in page
    stage_rows = dict(re.findall(r'<tr><td>(\w+)</td><td><code>[^<]*</code></td><td><span class="badge (\w+)">',
                                 page))
    assert stage_rows["build_window"] == "missing" and stage_rows["validate_gates"] == "missing"
    assert stage_rows["ingest_day"] == "pass"


# --------------------------------------------------------------------------- fabricated inputs


def fabricate_inputs(cfg, passed_quality: bool = True) -> dict[str, str]:
    """DAY's records in the shapes the stages write (ingest.json, quality summary, features.json,
    validation.json with spark_jobs.validate.Verdict gates, the lookup folder), and the validation
    records of other run dates for the AUC chart."""
    paths = Paths.of(cfg)
    reports = paths.reports
    docs_page = os.path.join(reports, "data_docs", "validations", "bronze_impressions", DAY, "page 1.html")
    storage.write_json(paths.ingest_record(DAY), {
        "dt": DAY, "landing_impressions": 2000, "bronze_impressions": 1900, "quarantined_impressions": 100,
        "landing_ads": 300, "bronze_ads": 297, "quarantined_ads": 3, "new_images": 30,
        "reasons": {"impressions": {"null_required": 60, "unknown_ad": 40}, "ads": {"negative_price": 3}},
        "schema_drift": {"impressions": {"extra": ["surprise_col"], "missing": []},
                         "ads": {"extra": [], "missing": []}},
        "versions": {"impressions": 4, "ads": 4, "images": 2, "quarantine": 4}, "range": [DAY, DAY],
        "seconds": 4.2})
    critical = "expect_column_mean_to_be_between(column=click, min_value=0.002, max_value=0.2): observed 0.0"
    summary_path = local_path(paths.quality_summary(DAY))
    write_json(summary_path, {
        "date": DAY, "success": passed_quality, "critical_failures": 0 if passed_quality else 1,
        "trailing": {"mean_rows": 2000.0, "days": 3},
        "quarantine": {"max_rate": 0.05,
                       "impressions": {"landing": 2000, "quarantined": 100, "rate": 0.05,
                                       "reasons": {"null_required": 60, "unknown_ad": 40}},
                       "ads": {"landing": 300, "quarantined": 3, "rate": 0.01, "reasons": {"negative_price": 3}}},
        "suites": {
            "bronze_impressions": {"success": passed_quality, "report_path": docs_page,
                                   "failed": [] if passed_quality else [critical,
                                                                        f"expect_table_row_count: {HOSTILE}"],
                                   "failed_critical": [] if passed_quality else [critical],
                                   "statistics": {"evaluated_expectations": 12}},
            "bronze_ads": {"success": True, "failed": [], "failed_critical": [],
                           "report_path": os.path.join(reports, "data_docs", "ads.html"), "statistics": {}},
        },
        "summary_path": summary_path})
    storage.write_json(paths.features_record(DAY), {
        "run_date": DAY, "window_start": "2026-01-04", "window_end": "2026-02-04",
        "window_days": ["2026-02-03", "2026-02-04"], "missing_days": ["2026-02-02"],
        "excluded_days": [{"date": "2026-02-01", "reason": "check_bronze_quality failed"}],
        "short_window": True, "rows": {"train": 4000, "holdout": 2000},
        "label_rate": {"train": 0.031, "holdout": 0.029}, "groups": {"train": 533, "holdout": 250},
        "cold_rate": {"train": 0.1, "holdout": 0.2}, "mean_impressions_per_group": {"train": 7.5, "holdout": 8.0},
        "vocab_sizes": {"user_id": 321, "title_words": 777}, "oov_rate_window": {"user_id": 0.25},
        "oov_rate": {"train": {"user_id": 0.2}, "holdout": {"user_id": 0.4375}}, "config_hash": cfg.config_hash()})
    verdicts = [gate_auc_floor(0.7311, 0.55), gate_auc_vs_live(0.7311, 0.7200, 0.005, "v2 (2026-02-04)"),
                Verdict("coverage", False, 0.8123, 0.9, "1624 of 2000 holdout impressions"),
                Verdict("lookup_quality", True, 0.0, 0.0, "report x")]
    write_json(local_path(paths.validation_record(DAY)), validation_record(
        cfg, DAY, verdicts,
        {"n": 2000, "auc": 0.7311, "auc_cold": 0.6811, "logloss": 0.12, "table_auc": 0.7310, "coverage": 0.8123,
         "live_auc": 0.7200},
        data_docs=os.path.join(reports, "data_docs", "lookup", "v.html"),
        precision_check={"bf16": {"max_abs_score_diff": 0.000417, "tolerance": 0.001, "passed": True}},
        serving_precisions=["fp32", "bf16"],
        coverage_curve=[{"budget_ads": b, "coverage": c} for b, c in
                        ((10, 0.31), (100, 0.62), (1000, 0.88), (10000, 0.97))]))
    write_lookup_manifest(cfg)
    for day, auc in (("2026-02-02", 0.7011), ("2026-02-03", 0.7122), ("2026-02-04", 0.7233), ("2026-02-09", 0.9999)):
        write_json(local_path(paths.validation_record(day)), validation_record(
            cfg, day, [gate_auc_floor(auc, 0.55), gate_auc_vs_live(auc, None, 0.005, None)],
            {"n": 2000, "auc": auc, "auc_cold": auc - 0.05, "live_auc": None}))
    return {"docs_page": docs_page}


def test_a_failed_gate_is_named_on_the_first_screen_and_details_follow(tmp_path):
    config_path, cfg = write_config(tmp_path)
    fabricate_inputs(cfg)
    page = read_report(render(config_path, DAY))
    screen = page[:page.index("<h2>Details</h2>")]
    assert f"Nothing published for {DAY}" in screen
    assert re.search(r"<li><code>validate_gates</code> failed: gate coverage: value 0.8123, threshold 0.9000 "
                     r"\(1624 of 2000 holdout impressions\)</li>", screen)
    assert "auc_floor" not in screen  # passed gates are not reasons
    # AUC against the floor and the live model, coverage, data quality, quarantine, excluded days
    assert re.search(r"<td>Holdout AUC</td><td><span class=\"badge pass\">PASS</span></td><td>0.7311</td>"
                     r"<td>floor 0.5500</td>", screen)
    assert "live model 0.7200, at least 0.7150 needed" in screen
    assert re.search(r"<td>Coverage</td><td><span class=\"badge fail\">FAIL</span></td><td>81.23%</td>", screen)
    assert re.search(r"<td>Data quality</td><td><span class=\"badge pass\">PASS</span></td>"
                     r"<td>0 critical failure\(s\)</td>", screen)
    assert "5.00% of impressions, 1.00% of ads" in screen
    assert "2026-02-01 (check_bronze_quality failed)" in screen
    # details, collapsed
    for anchor in ("stages", "gates", "model", "auc-history", "quality", "ingest", "features", "lookup",
                   "calibration", "attention", "config"):
        assert f'<details id="{anchor}">' in page, anchor
    assert re.search(r"<td>coverage</td><td><span class=\"badge fail\">FAIL</span></td><td class=\"num\">0.8123",
                     page)
    assert 'Lookup-table quality checks: <a href="../../data_docs/lookup/v.html">Data Docs</a>' in page
    assert "<td>serving_precisions</td><td class=\"num\">fp32, bf16</td>" in page
    assert "<td>impressions</td><td>null_required</td><td class=\"num\">60</td><td class=\"num\">3.00%</td>" in page
    assert "<td>ads</td><td>negative_price</td><td class=\"num\">3</td><td class=\"num\">1.00%</td>" in page
    assert "surprise_col" in page and "1,900" in page
    assert "<td>user_id</td><td class=\"num\">321</td><td class=\"num\">25.00%</td>" in page
    assert "43.75%" in page and "<td>2026-02-01</td><td>check_bronze_quality failed</td>" in page
    chart = page[page.index('id="auc-history"'):page.index('id="quality"')]
    assert chart.count("<svg") == 1
    for auc in ("0.7011", "0.7122", "0.7233", "0.7311"):
        assert auc in chart
    assert "0.9999" not in page and "2026-02-09" not in page
    lookup = page[page.index('id="lookup"'):page.index('id="calibration"')]
    assert "<svg" in lookup and "Coverage vs lookup-table size" in lookup and "88.00%" in lookup


def test_a_failed_quality_check_names_the_expectation_and_links_its_data_docs_page(tmp_path):
    """A run stopped at check_bronze_quality: no model, no lookup table, no validation record."""
    config_path, cfg = write_config(tmp_path)
    fabricate_inputs(cfg, passed_quality=False)
    paths = Paths.of(cfg)
    for path in (paths.validation_record(DAY), paths.features_record(DAY), paths.lookup_manifest(DAY)):
        os.remove(local_path(path))
    page = read_report(render(config_path, DAY))
    screen = page[:page.index("<h2>Details</h2>")]
    assert f"Nothing published for {DAY}" in screen
    assert ("<li><code>check_bronze_quality</code> failed: bronze_impressions: expect_column_mean_to_be_between"
            "(column=click, min_value=0.002, max_value=0.2): observed 0.0 &mdash; "
            '<a href="../../data_docs/validations/bronze_impressions/2026-02-05/page%201.html">Data Docs</a></li>'
            in screen)
    assert screen.count("<li>") == 1  # only the critical failure, no "stage produced nothing" guesses
    assert re.search(r"<td>Data quality</td><td><span class=\"badge fail\">FAIL</span></td>"
                     r"<td>1 critical failure\(s\) in bronze_impressions</td>", screen)
    assert re.search(r"<td>bronze_impressions</td><td><span class=\"badge fail\">FAIL", page)
    assert "<b>CRITICAL</b> expect_column_mean_to_be_between(column=click" in page
    assert "Could not draw" not in page


def test_hostile_strings_are_escaped(tmp_path):
    config_path, cfg = write_config(tmp_path)
    fabricate_inputs(cfg)
    write_lookup_manifest(cfg, model_version=HOSTILE)
    page = read_report(render(config_path, DAY))
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<script" not in page


def test_auc_history_reads_every_run_date_up_to_the_day(tmp_path):
    _, cfg = write_config(tmp_path)
    fabricate_inputs(cfg)
    paths = Paths.of(cfg)
    broken = local_path(paths.validation_record("2026-02-01"))
    write_json(broken, {"run_date": "2026-02-01"})
    found = auc_history(paths, DAY)
    hist = found.points
    assert [h["date"] for h in hist] == ["2026-02-02", "2026-02-03", "2026-02-04", DAY]
    assert hist[-1]["auc"] == pytest.approx(0.7311) and hist[0]["auc_cold"] == pytest.approx(0.6511)
    assert found.unreadable == [f"{broken}: not a valid validation record: missing field 'passed'"]


# --------------------------------------------------------------------------- the model sections


def test_attention_overlays_one_per_category_and_calibration_from_the_validate_record(tmp_path, trained):
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
    assert "CSCNNAttention" in section and "(category_id 1000)" in section and "Could not draw" not in page
    calib = page[page.index('id="calibration"'):page.index('id="attention"')]
    assert f"all {len(hold):,} holdout impressions" in calib and "<svg" in calib
    bins = re.findall(r'<tr><td class="num">[^<]*</td><td class="num">[^<]*</td><td class="num">([\d,]+)</td>', calib)
    assert sum(int(n.replace(",", "")) for n in bins) == len(hold)


def test_variant_without_attention_says_so(tmp_path, trained):
    config_path, cfg = write_config(tmp_path)
    model = load_model(trained["model_path"])
    plain = tmp_path / "dcn.pt"
    save_model(CTRModel(model.spec, load_config(overrides={**TINY_MODEL, "model.variant": "dcn"}).model), str(plain))
    install_run(cfg, trained, str(plain))
    page = read_report(render(config_path, DAY))
    assert "Nothing to draw: variant &#x27;dcn&#x27; has no visual tower" in page
    assert 'class="attn"' not in page and "Reliability" in page


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
    published = local_path(Paths.of(cfg).published)
    os.makedirs(os.path.join(published, f"v3-{DAY}"))
    os.makedirs(os.path.join(published, "v2-2026-02-04"))
    switch_current(cfg, {"format": 2, "version": 3, "run_date": DAY, "dir": f"v3-{DAY}", "code_version": "abc1234",
                         "version_sha256": "c" * 64})
    page = read_report(render(config_path, DAY))
    screen = page[:page.index("<h2>Details</h2>")]
    assert f'<div class="headline pass">Published v3-{DAY} for {DAY}' in screen
    assert f"live now: v3-{DAY}" in screen and "v2-2026-02-04" not in page and "Stopped by" not in screen
    publish_row = re.search(r'<tr><td>publish</td><td><code>[^<]*</code></td><td><span class="badge (\w+)">', page)
    assert publish_row is not None and publish_row.group(1) == "pass"


def test_timing_records_are_tabled_in_start_order_and_a_bad_one_is_named(tmp_path):
    """Records written by core.timing's own writer, as the stages write them."""
    config_path, cfg = write_config(tmp_path)
    paths = Paths.of(cfg)
    for task, start in (("build_window", 200.0), ("ingest_day", 100.0)):
        with timing.stage_timing(local_path(paths.timing_record(DAY, task)), task, DAY):
            pass
        rec_path = local_path(paths.timing_record(DAY, task))
        rec = json.load(open(rec_path))
        rec.update(timing.build_record(task, DAY, "ok", start + 5, start + 9, {"writes": 1.5}, start + 2, start))
        write_json(rec_path, rec, sort_keys=False)
    with open(local_path(paths.timing_record(DAY, "publish")), "w") as f:
        f.write("[]")
    page = read_report(render(config_path, DAY))
    section = page[page.index('id="timings"'):page.index('id="gates"')]
    rows = re.findall(r"<tr><td>([\w.]+)</td><td>([^<]*)</td>", section)
    assert [r[0] for r in rows] == ["ingest_day", "build_window", "publish.json"], rows
    assert "not a valid timing record" in section and "3 task(s), 18.0 s" in section
    cells = re.findall(r'<td class="num">([^<]*)</td>', section)
    assert cells[:8] == ["9.0", "5.0", "2.0", "3.0", "0.0", "0.0", "1.5", "2.5"], cells
