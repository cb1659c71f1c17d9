"""The UI's way to the reports: operator extra links and the plugin that serves the folder."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from core.config import load_config
from core.paths import Paths
from dags.cscnn_links import REPORTS_URL_PREFIX, DataDocsLink, RunReportLink
from simworld.generate import generate_day
from spark_jobs import ingest
from tests.dags.conftest import PLUGINS_DIR, REPO_ROOT
from tests.dags.test_scheduler_ui import DAG_ID, WebDriver, _free_port, _wait_for
from tests.dags.tiny_world import CONFIG, EPOCH


@pytest.fixture(scope="module")
def plugin():
    spec = importlib.util.spec_from_file_location("cscnn_reports_under_test", PLUGINS_DIR / "cscnn_reports.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def reports(tmp_path, monkeypatch):
    root = tmp_path / "reports"
    (root / "data_docs").mkdir(parents=True)
    (root / "data_docs" / "index.html").write_text("<html>docs</html>")
    for day in ("2026-02-01", "2026-02-03"):
        (root / "runs" / day).mkdir(parents=True)
        (root / "runs" / day / "report.html").write_text(f"<html>report {day}</html>")
    (root / "runs" / "2026-02-02").mkdir()  # a run whose report was never rendered
    (tmp_path / "secret.txt").write_text("outside")
    monkeypatch.setenv("CSCNN_REPORTS_DIR", str(root))
    return root


class _RunningTask:
    """Stands in for the worker's running task instance, the `ti_key` links get at finalize."""

    def __init__(self, ds, config_path=None):
        self._ds = ds
        self._config_path = config_path

    def get_template_context(self):
        return {"ds": self._ds} if self._ds else {}

    def xcom_pull(self, task_ids):
        assert task_ids == "build_config"
        return self._config_path


def test_links_point_at_the_plugin_routes(plugin):
    assert REPORTS_URL_PREFIX == plugin.REPORTS_URL_PREFIX
    assert DataDocsLink().get_link(None, ti_key=_RunningTask("2026-02-02")).endswith(
        "/cscnn-reports/data_docs/index.html")
    assert RunReportLink().get_link(None, ti_key=_RunningTask("2026-02-02")).endswith(
        "/cscnn-reports/runs/2026-02-02/report.html")
    # A run without a logical date has no dated report: the link falls back to the index.
    assert RunReportLink().get_link(None, ti_key=_RunningTask(None)).endswith("/cscnn-reports/")


def test_data_docs_link_opens_the_failed_suite_page_of_the_day(tmp_path):
    cfg = load_config(overrides={"storage.root": str(tmp_path / "var")})
    config_path = tmp_path / "config.json"
    config_path.write_text(cfg.to_json())
    paths = Paths.of(cfg)
    page = f"{paths.data_docs}/validations/bronze_impressions/2026-02-02/20260202T010203Z/run 1.html"
    summary = {"date": "2026-02-02", "success": False, "suites": {
        "bronze_ads": {"success": True, "report_path": f"{paths.data_docs}/validations/bronze_ads/x.html"},
        "bronze_impressions": {"success": False, "report_path": page}}}
    os.makedirs(os.path.dirname(paths.quality_summary("2026-02-02")))
    with open(paths.quality_summary("2026-02-02"), "w") as f:
        json.dump(summary, f)
    link = DataDocsLink().get_link(None, ti_key=_RunningTask("2026-02-02", str(config_path)))
    assert link.endswith("/cscnn-reports/data_docs/validations/bronze_impressions/2026-02-02/20260202T010203Z/"
                         "run%201.html")
    # a day whose checks passed (or never ran) links the site's index
    assert DataDocsLink().get_link(None, ti_key=_RunningTask("2026-02-03", str(config_path))).endswith(
        "/cscnn-reports/data_docs/index.html")


def test_plugin_registers_the_app_and_a_nav_entry(plugin):
    cls = plugin.CscnnReportsPlugin
    assert cls.fastapi_apps[0]["url_prefix"] == "/cscnn-reports"
    assert cls.fastapi_apps[0]["app"] is plugin.app
    assert cls.external_views[0]["href"] == "cscnn-reports/"  # relative: works under a base path


def test_index_lists_data_docs_and_rendered_reports_newest_first(plugin, reports):
    page = plugin.render_index(plugin.reports_dir())
    assert 'href="data_docs/index.html"' in page
    assert page.index("runs/2026-02-03/report.html") < page.index("runs/2026-02-01/report.html")
    assert "2026-02-02" not in page
    assert str(reports) not in page and str(reports.parent) not in page  # no server paths
    assert "<style>" in page and "://" not in page  # styled inline, nothing loaded from elsewhere


def test_files_resolve_inside_the_folder_only(plugin, reports):
    assert plugin.resolve_report_file(reports, "runs/2026-02-03/report.html").read_text() == "<html>report 2026-02-03</html>"
    assert plugin.resolve_report_file(reports, "data_docs").name == "index.html"
    for bad in ("../secret.txt", "runs/../../secret.txt", "runs/2026-02-02/report.html", "/etc/passwd"):
        with pytest.raises(HTTPException) as err:
            plugin.resolve_report_file(reports, bad)
        assert err.value.status_code == 404, bad


def test_routes_require_an_airflow_login(plugin, reports):
    client = TestClient(plugin.app)
    assert client.get("/").status_code == 401
    assert client.get("/runs/2026-02-03/report.html").status_code == 401


# --------------------------------------------------------------------------- a failed run in the UI

BAD_DAY_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def failed_run(spark, tmp_path_factory):
    """A running local Airflow (scripts/airflow_ui.sh) and one triggered run of a day whose clicks
    were all lost (every `click` 0 in its landing file), with no retries: it fails in
    check_bronze_quality. Yields the UI's URL, password, the run and the day's quality summary."""
    base = tmp_path_factory.mktemp("bad-day-world")
    config_file = base / "run.toml"
    config_file.write_text(CONFIG.format(root=base / "var"))
    cfg = load_config(config_file)
    bad_day = EPOCH + dt.timedelta(days=2)
    for i in range(3):
        generate_day(cfg, EPOCH + dt.timedelta(days=i))
    ingest.run_range(cfg, spark, EPOCH, EPOCH + dt.timedelta(days=1))
    landing = Paths.of(cfg).landing_impressions(bad_day)
    table = pq.read_table(landing)
    column = table.schema.get_field_index("click")
    pq.write_table(table.set_column(column, "click", pc.multiply(table.column("click"), 0)), landing)

    home = tmp_path_factory.mktemp("airflow-home-bad-day")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), CSCNN_AIRFLOW_PORT=str(port), LANG="C.UTF-8",
               CSCNN_VENV=str(Path(sys.executable).parent.parent), CSCNN_CONFIG=str(config_file),
               CSCNN_START_DATE=str(EPOCH), CSCNN_END_DATE=str(bad_day), CSCNN_TASK_RETRIES="0",
               CSCNN_SPARK_DRIVER_MEMORY="2g")
    script = REPO_ROOT / "scripts" / "airflow_ui.sh"
    start = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, f"airflow_ui.sh start failed:\n{start.stdout}\n{start.stderr}"
        url = f"http://127.0.0.1:{port}"
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        api = httpx.Client(base_url=url, timeout=30)
        token = api.post("/auth/token", json={"username": "admin", "password": password}).json()
        api.headers["Authorization"] = f"Bearer {token['access_token']}"
        _wait_for(lambda: api.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 180, "the DAG to be parsed")
        assert api.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
        reply = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": f"{bad_day}T00:00:00Z"})
        assert reply.status_code == 200, reply.text
        run_id = reply.json()["dag_run_id"]
        run = _wait_for(lambda: (lambda r: r if r["state"] in ("success", "failed") else None)(
            api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()), BAD_DAY_TIMEOUT_S, "the run to end",
            interval=5)
        tis = {t["task_id"]: t for t in
               api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]}
        with open(Paths.of(cfg).quality_summary(bad_day)) as f:
            summary = json.load(f)
        yield {"url": url, "password": password, "run": run, "tis": tis, "summary": summary, "cfg": cfg,
               "day": bad_day, "reports": Paths.of(cfg).reports}
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(BAD_DAY_TIMEOUT_S + 900)
def test_browser_opens_the_failed_run_and_follows_data_docs_to_the_failed_expectation(failed_run):
    run, tis, summary = failed_run["run"], failed_run["tis"], failed_run["summary"]
    assert run["state"] == "failed"
    assert tis["check_bronze_quality"]["state"] == "failed" and tis["check_bronze_quality"]["try_number"] == 1
    assert tis["publish"]["state"] == "upstream_failed" and tis["render_report"]["state"] == "success"
    failed = {name: s for name, s in summary["suites"].items() if s["success"] is False}
    assert "bronze_impressions" in failed
    assert any("expect_column_mean_to_be_between(column=click" in f
               for f in failed["bronze_impressions"]["failed_critical"])
    page = failed["bronze_impressions"]["report_path"]
    expected_url = (f"{failed_run['url']}/cscnn-reports/"
                    + urllib.parse.quote(os.path.relpath(page, failed_run["reports"])))
    # the run's start and end are wall-clock times of this run, not its logical date
    assert run["start_date"][:10] != str(failed_run["day"])

    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; install it (Debian: apt-get install -y chromium chromium-driver)")
    port = _free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30, "chromedriver")
        browser = WebDriver(f"http://127.0.0.1:{port}")
        try:
            url = failed_run["url"]
            browser.login(url, failed_run["password"])

            # the failed run, and its failed task
            browser.get(f"{url}/dags/{DAG_ID}/runs/{run['dag_run_id']}")
            browser.wait_for("[data-testid='state-badge']", text="Failed", timeout=60)
            browser.get(f"{url}/dags/{DAG_ID}/runs/{run['dag_run_id']}/tasks/check_bronze_quality")
            browser.wait_for("[data-testid='state-badge']", text="Failed", timeout=60)

            # its Data Docs link opens the page of the failed expectation's validation
            browser.get(f"{url}/dags/{DAG_ID}/runs/{run['dag_run_id']}/tasks/check_bronze_quality/details")
            browser.click(browser.wait_for("a", text="Data Docs"))
            _wait_for(lambda: browser.url == expected_url, 60, f"the Data Docs page {expected_url}")
            _wait_for(lambda: "bronze_impressions" in browser.source and "click" in browser.source, 60,
                      "the failed validation's page")

            # the run report's first screen names the failed expectation and links the same page
            browser.get(f"{url}/cscnn-reports/runs/{failed_run['day']}/report.html")
            _wait_for(lambda: "Nothing published for" in browser.source, 60, "the run report")
            screen = browser.source.split("<h2>Details</h2>")[0]
            assert "expect_column_mean_to_be_between(column=click" in screen
            browser.click(browser.wait_for("ul.stops a", text="Data Docs"))
            _wait_for(lambda: browser.url == expected_url, 60, "the report's Data Docs link")
        finally:
            browser.quit()
    finally:
        driver.terminate()
        driver.wait(timeout=30)
