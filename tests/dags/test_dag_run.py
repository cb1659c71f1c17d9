"""The whole daily DAG on tiny simulated days, through real Airflow (`airflow dags test`).

Run 1 (day D): every stage runs (spark-submit, torchrun, GX) and the model and lookup table are
published. The run uses hierarchical CSCNN priors (model.prior_hierarchy "parent") and brand
priors (model.prior_fields ["category", "brand"]), so every stage that runs the tower (train,
lookup build, validation, the report's attention maps) passes parent and brand ids; the other
whole-DAG tests run the default flat category priors. Run 2 (day D+1, an empty landing day): the bronze quality check fails, the run fails
before `publish`, what is live stays live, and the run report and Data Docs page it links exist.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import subprocess
import tempfile
import urllib.parse

import pytest
from pyspark.sql import functions as F

from core.config import load_config
from core.paths import Paths
from models.attention import CSCNNAttention
from models.train import load_model
from serving.registry import read_current
from simworld.generate import generate_day
from spark_jobs import ingest
from tests.dags.conftest import REPO_ROOT
from tests.dags.tiny_world import CONFIG, EPOCH

DAY = EPOCH + dt.timedelta(days=2)


def _dags_test(env: dict[str, str], day: dt.date) -> tuple[str, str]:
    """Run `airflow dags test cscnn_daily day`; return (the run's final state, the output)."""
    proc = subprocess.run(
        ["bash", "-c", ". scripts/airflow_env.sh && airflow db migrate >/dev/null && "
                       f"airflow dags test cscnn_daily {day}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    states = re.findall(r"DagRun Finished: dag_id=cscnn_daily.*?state=(\w+)", out)
    assert states, f"no finished run in the output (exit {proc.returncode}):\n{out[-4000:]}"
    return states[-1], out


@pytest.mark.timeout(2 * 1500 + 300)  # two `airflow dags test` runs of up to 1500 s each
def test_daily_run_publishes_then_a_failed_check_stops_before_publish(spark, tmp_path):
    root = tmp_path / "var"
    config_file = tmp_path / "run.toml"
    config_file.write_text(CONFIG.format(root=root)
                           + '\n[model]\nprior_hierarchy = "parent"\nprior_fields = ["category", "brand"]\n')
    cfg = load_config(config_file)
    paths = Paths.of(cfg)
    for i in range(3):
        generate_day(cfg, EPOCH + dt.timedelta(days=i))
    # the window's history; day D itself is ingested by the DAG
    ingest.run_range(cfg, spark, EPOCH, EPOCH + dt.timedelta(days=1))

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(CSCNN_CONFIG=str(config_file), CSCNN_START_DATE=str(EPOCH), CSCNN_TASK_RETRIES="1",
               CSCNN_RETRY_DELAY_S="1", CSCNN_SPARK_DRIVER_MEMORY="2g",
               AIRFLOW_HOME=tempfile.mkdtemp(prefix="cscnn-dagrun-", dir=tmp_path))

    state, out = _dags_test(env, DAY)
    assert state == "success", out[-6000:]
    current = read_current(cfg)
    assert current is not None and current["run_date"] == str(DAY) and current["version"] == 1
    assert all(g["passed"] for g in current["gates"])
    table = spark.read.format("delta").load(paths.lookup_table).where(F.col("run_date") == F.lit(DAY))
    assert table.count() > 0
    assert table.select("ad_id").distinct().count() == table.count()
    assert os.path.exists(paths.run_report(DAY))
    with open(paths.validation_record(DAY)) as f:
        assert json.load(f)["passed"] is True
    # Training chose its weights on a validation split of the window, not on day D: the manifest's
    # metrics are the split's, and its rows plus the rows trained on (one epoch) are the snapshot's train rows.
    with open(paths.model_manifest(DAY)) as f:
        trained = json.load(f)["metrics"]
    with open(os.path.join(paths.snapshot(DAY), "_SUCCESS")) as f:
        window_rows = json.load(f)["train"]
    assert 0 < trained["validation_impressions"] < window_rows and 0.0 <= trained["auc"] <= 1.0
    assert trained["train_impressions"] + trained["validation_impressions"] == window_rows
    # The report of the real run: calibration chart and attention overlays from what validate wrote.
    report = open(paths.run_report(DAY)).read()
    assert "Could not draw" not in report
    assert f"Published v1-{DAY} for {DAY}" in report.split("<h2>Details</h2>")[0]
    calibration = report[report.index('id="calibration"'):report.index('id="attention"')]
    assert "<svg" in calibration and "Reliability: observed vs predicted CTR" in calibration
    attention = report[report.index('id="attention"'):report.index('id="config"')]
    overlays = re.findall(r'<img class="attn" data-category="\d+"[^>]*src="data:image/png;base64,', attention)
    assert overlays and "CSCNNAttention" in attention
    # The published model has parent and brand priors, and training moved them.
    model = load_model(os.path.join(paths.run_model_dir(DAY), "model.pt"))
    layers = [m for m in model.modules() if isinstance(m, CSCNNAttention)]
    assert model.key_fields == ("parent_category_id", "brand_id") and layers
    assert all(m.parent_channel_prior.weight.abs().sum() > 0 for m in layers)
    assert all(m.field_spatial_prior["brand"].weight.abs().sum() > 0 for m in layers)
    # Every process-running task left its timing record (core.timing), and the report shows them all.
    tasks = {"ingest_day", "check_bronze_quality", "build_window", "check_examples_quality",
             "export_training_snapshot", "train_model", "build_lookup_table", "validate_gates", "publish"}
    records = {n[:-len(".json")]: json.load(open(os.path.join(paths.timings_dir(DAY), n)))
               for n in os.listdir(paths.timings_dir(DAY))}
    assert set(records) == tasks, sorted(set(records) ^ tasks)
    for name, rec in records.items():
        assert rec["status"] == "ok" and rec["total_s"] > 0, rec
        assert rec["total_s"] == pytest.approx(sum(rec["phases"].values()), abs=0.01), rec
        if name != "train_model":  # stage processes (no launcher) that built a Spark Connect session
            assert rec["phases"]["launch"] == 0 and rec["phases"]["spark_session"] > 0, rec
    assert records["check_bronze_quality"]["phases"]["quality"] > 0
    assert records["build_window"]["phases"]["writes"] > 0
    timings = report[report.index('id="timings"'):report.index('id="gates"')]
    assert all(f"<td>{t}</td>" in timings for t in tasks), timings

    # An empty landing day: the critical volume expectation fails, nothing is published.
    bad_day = DAY + dt.timedelta(days=1)
    generate_day(cfg.replace({"world.bad_data.empty_day": True}), bad_day)
    state, out = _dags_test(env, bad_day)
    assert state == "failed", out[-6000:]
    assert read_current(cfg)["run_date"] == str(DAY), "the live version must not change"
    assert not os.path.exists(paths.validation_record(bad_day))
    with open(os.path.join(paths.reports, "quality", f"{bad_day}.json")) as f:
        summary = json.load(f)
    assert summary["success"] is False and summary["critical_failures"]
    pages = [s["report_path"] for s in summary["suites"].values() if s.get("report_path")]
    assert pages and all(os.path.exists(p) for p in pages)
    # The report's first screen names each failed critical expectation and links its Data Docs page.
    screen = open(paths.run_report(bad_day)).read().split("<h2>Details</h2>")[0]
    assert f"Nothing published for {bad_day}" in screen
    for suite in summary["suites"].values():
        for failure in suite.get("failed_critical") or []:
            assert f"<code>check_bronze_quality</code> failed: " in screen and html.escape(failure) in screen
            link = "../../" + urllib.parse.quote(os.path.relpath(suite["report_path"], paths.reports))
            assert f'<a href="{html.escape(link)}">Data Docs</a>' in screen
