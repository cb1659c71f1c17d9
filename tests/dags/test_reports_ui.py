"""The UI's way to the reports: operator extra links and the plugin that serves the folder."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from tests.dags.conftest import PLUGINS_DIR


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
    from dags.cscnn_links import REPORTS_URL_PREFIX, DataDocsLink, RunReportLink

    assert REPORTS_URL_PREFIX == plugin.REPORTS_URL_PREFIX
    assert DataDocsLink().get_link(None, ti_key=_RunningTask("2026-02-02")).endswith(
        "/cscnn-reports/data_docs/index.html")
    assert RunReportLink().get_link(None, ti_key=_RunningTask("2026-02-02")).endswith(
        "/cscnn-reports/runs/2026-02-02/report.html")
    # A run without a logical date has no dated report: the link falls back to the index.
    assert RunReportLink().get_link(None, ti_key=_RunningTask(None)).endswith("/cscnn-reports/")


def test_data_docs_link_opens_the_failed_suite_page_of_the_day(tmp_path):
    import json

    from core.config import load_config
    from core.paths import Paths
    from dags.cscnn_links import DataDocsLink

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
    from fastapi import HTTPException

    assert plugin.resolve_report_file(reports, "runs/2026-02-03/report.html").read_text() == "<html>report 2026-02-03</html>"
    assert plugin.resolve_report_file(reports, "data_docs").name == "index.html"
    for bad in ("../secret.txt", "runs/../../secret.txt", "runs/2026-02-02/report.html", "/etc/passwd"):
        with pytest.raises(HTTPException) as err:
            plugin.resolve_report_file(reports, bad)
        assert err.value.status_code == 404, bad


def test_routes_require_an_airflow_login(plugin, reports):
    from fastapi.testclient import TestClient

    client = TestClient(plugin.app)
    assert client.get("/").status_code == 401
    assert client.get("/runs/2026-02-03/report.html").status_code == 401
