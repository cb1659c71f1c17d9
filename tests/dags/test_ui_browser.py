"""Browser test of the local Airflow UI: log in, see the DAG, follow the report links.

Starts Airflow with scripts/airflow_ui.sh (own AIRFLOW_HOME and port), drives Debian's
chromium through chromedriver's W3C WebDriver HTTP API (no Selenium or Playwright needed):

    apt-get install -y chromium chromium-driver

The run is created through the REST API on the paused DAG, its quality check is marked failed
and the link XComs a worker pushes at the end of a task are pushed with the values the real
link classes compute, so the test covers UI -> extra link -> plugin -> report file without
running Spark. Takes about a minute (Airflow start-up).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.dags.conftest import REPO_ROOT

DAG_ID = "cscnn_daily"
RUN_ID = "browser_test"
DS = "2026-02-02"
TASK_ID = "check_bronze_quality"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class WebDriver:
    """The few W3C WebDriver commands this test needs, over HTTP to chromedriver."""

    def __init__(self, driver_url: str):
        self.http = httpx.Client(base_url=driver_url, timeout=60)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": shutil.which("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"]}}}}
        reply = self.http.post("/session", json=caps).json()["value"]
        assert "sessionId" in reply, f"chromedriver refused a session: {reply}"
        self.session = f"/session/{reply['sessionId']}"

    def _cmd(self, method: str, path: str, body: dict | None = None):
        reply = self.http.request(method, f"{self.session}{path}", json=body).json()["value"]
        if isinstance(reply, dict) and "error" in reply:
            raise AssertionError(f"WebDriver {path}: {reply['error']}: {reply.get('message', '')[:300]}")
        return reply

    def get(self, url: str) -> None:
        self._cmd("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return self._cmd("GET", "/url")

    @property
    def source(self) -> str:
        return self._cmd("GET", "/source")

    def find_all(self, css: str) -> list[str]:
        return [next(iter(e.values())) for e in self._cmd("POST", "/elements", {"using": "css selector", "value": css})]

    def wait_for(self, css: str, text: str | None = None, timeout: float = 60) -> str:
        def match():
            for element in self.find_all(css):
                if text is None or self._cmd("GET", f"/element/{element}/text").strip() == text:
                    return element
            return None
        return _wait_for(match, timeout, f"element {css!r}" + (f" with text {text!r}" if text else ""))

    def type(self, element: str, text: str) -> None:
        self._cmd("POST", f"/element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self._cmd("POST", f"/element/{element}/click", {})

    def quit(self) -> None:
        self.http.delete(self.session)
        self.http.close()


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory):
    """A running local Airflow (scripts/airflow_ui.sh) with a reports folder of known pages."""
    home = tmp_path_factory.mktemp("airflow-home")
    reports = tmp_path_factory.mktemp("reports")
    (reports / "data_docs").mkdir()
    (reports / "data_docs" / "index.html").write_text("<html><body><h1>Data Docs of the test</h1></body></html>")
    (reports / "runs" / DS).mkdir(parents=True)
    (reports / "runs" / DS / "report.html").write_text(f"<html><body><h1>Run report {DS}</h1></body></html>")
    port = _free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(home)),
           "LANG": "C.UTF-8", "AIRFLOW_HOME": str(home), "CSCNN_AIRFLOW_PORT": str(port),
           "CSCNN_REPORTS_DIR": str(reports), "CSCNN_VENV": str(Path(sys.executable).parent.parent)}
    script = REPO_ROOT / "scripts" / "airflow_ui.sh"
    start = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, f"airflow_ui.sh start failed:\n{start.stdout}\n{start.stderr}"
        password_file = home / "simple_auth_manager_passwords.json.generated"
        assert str(password_file) in start.stdout  # the script says where the password is
        password = json.loads(password_file.read_text())["admin"]
        assert password != "admin" and len(password) >= 16
        yield {"url": f"http://127.0.0.1:{port}", "password": password}
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def run_with_failed_check(airflow_ui):
    """A run of the DAG whose quality check failed, with the link XComs its worker would push."""
    from dags.cscnn_links import DataDocsLink, RunReportLink

    url = airflow_ui["url"]
    api = httpx.Client(base_url=url, timeout=30)
    token = api.post("/auth/token", json={"username": "admin", "password": airflow_ui["password"]}).json()["access_token"]
    api.headers["Authorization"] = f"Bearer {token}"
    _wait_for(lambda: api.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 180, f"the DAG {DAG_ID} to be parsed")
    reply = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"dag_run_id": RUN_ID, "logical_date": f"{DS}T00:00:00Z"})
    assert reply.status_code in (200, 201), reply.text
    ti = f"/api/v2/dags/{DAG_ID}/dagRuns/{RUN_ID}/taskInstances/{TASK_ID}"

    class RunningTask:
        def get_template_context(self):
            return {"ds": DS}

    previous = os.environ.get("AIRFLOW__API__BASE_URL")
    os.environ["AIRFLOW__API__BASE_URL"] = url
    try:
        links = {link.xcom_key: link.get_link(None, ti_key=RunningTask()) for link in (DataDocsLink(), RunReportLink())}
    finally:
        if previous is None:
            os.environ.pop("AIRFLOW__API__BASE_URL")
        else:
            os.environ["AIRFLOW__API__BASE_URL"] = previous
    for key, link in links.items():
        reply = api.post(f"{ti}/xcomEntries", json={"key": key, "value": link})
        assert reply.status_code in (200, 201), reply.text
    reply = api.patch(ti, json={"new_state": "failed"})
    assert reply.status_code == 200, reply.text
    return links


@pytest.fixture(scope="module")
def browser(airflow_ui):
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; install it (Debian: apt-get install -y chromium chromium-driver)")
    port = _free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _port_open(port), 30, "chromedriver")
        web = WebDriver(f"http://127.0.0.1:{port}")
        try:
            yield web
        finally:
            web.quit()
    finally:
        driver.terminate()
        driver.wait(timeout=30)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_login_dag_and_report_links(airflow_ui, run_with_failed_check, browser):
    url = airflow_ui["url"]

    # The reports are behind the login.
    assert httpx.get(f"{url}/cscnn-reports/").status_code == 401

    browser.get(f"{url}/")
    browser.type(browser.wait_for("input[name=username]"), "admin")
    browser.type(browser.wait_for("input[name=password]"), airflow_ui["password"])
    browser.click(browser.wait_for("button[type=submit]"))
    _wait_for(lambda: "/auth/login" not in browser.url, 60, "the login to complete")

    browser.get(f"{url}/dags")
    browser.wait_for(f"a[href='/dags/{DAG_ID}']", timeout=60)

    details = f"{url}/dags/{DAG_ID}/runs/{RUN_ID}/tasks/{TASK_ID}/details"
    for name, heading in (("Data Docs", "Data Docs of the test"), ("Run report", f"Run report {DS}")):
        browser.get(details)
        browser.click(browser.wait_for("a", text=name))
        _wait_for(lambda: heading in browser.source, 30, f"the page behind {name!r}")
        assert browser.url == run_with_failed_check[
            "_link_DataDocsLink" if name == "Data Docs" else "_link_RunReportLink"]

    browser.get(f"{url}/cscnn-reports/")
    _wait_for(lambda: f"runs/{DS}/report.html" in browser.source, 30, "the reports index")
