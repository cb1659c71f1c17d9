"""A 3-day backfill under a running scheduler, then the Airflow UI in a real browser.

Starts Airflow with scripts/airflow_ui.sh (own AIRFLOW_HOME and port: api-server, scheduler,
dag-processor, triggerer, LocalExecutor) on a tiny simulated world, unpauses the DAG and runs
`airflow backfill create` over three days, exactly as the README tells an operator. Every task
runs for real (spark-submit, GX, torchrun). Then:

* the backfill completes, every run succeeds, and no table holds a duplicated row: bronze has
  each landing impression once, every run date's examples and lookup rows are unique, and the
  registry has exactly one published version per day, in date order;
* Debian's chromium (driven through chromedriver's W3C WebDriver HTTP API, no Selenium or
  Playwright needed: `apt-get install -y chromium chromium-driver`) logs into the UI, sees the
  DAG with its successful runs, and follows a task's "Data Docs" and "Run report" extra links to
  the real GX Data Docs and the run's HTML report, served behind the login by the plugin.

Takes about 10-15 minutes on 2 cores (three whole DAG runs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pyspark.sql import functions as F

from core.config import load_config
from core.paths import Paths, local_path
from features.encoder import MULTI_FIELDS, VOCAB_FIELDS
from features.tables import load_encoder, read_examples
from serving.registry import read_current
from simworld.generate import generate_day
from spark_jobs import ingest
from tests.dags.conftest import REPO_ROOT
from tests.dags.tiny_world import CONFIG, EPOCH

DAG_ID = "cscnn_daily"
HISTORY_DAYS = 2  # the window (features.window_days = 2 in CONFIG)
BACKFILL_DAYS = [EPOCH + dt.timedelta(days=HISTORY_DAYS + i) for i in range(3)]
LINK_TASK = "check_bronze_quality"
BACKFILL_TIMEOUT_S = 2100
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class StaleElement(Exception):
    """The element was re-rendered away between finding and using it."""


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
        if isinstance(reply, dict) and reply.get("error") == "stale element reference":
            raise StaleElement(path)
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

    def text(self, element: str) -> str | None:
        """The element's text, or None when the page re-rendered it away (a stale reference)."""
        try:
            return self._cmd("GET", f"/element/{element}/text").strip()
        except StaleElement:
            return None

    def wait_for(self, css: str, text: str | None = None, timeout: float = 60) -> str:
        """The first element matching css (and text), polling: the UI renders asynchronously."""
        def match():
            for element in self.find_all(css):
                if text is None or self.text(element) == text:
                    return element
            return None
        return _wait_for(match, timeout, f"element {css!r}" + (f" with text {text!r}" if text else ""))

    def type(self, element: str, text: str) -> None:
        self._cmd("POST", f"/element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self._cmd("POST", f"/element/{element}/click", {})

    def login(self, url: str, password: str) -> None:
        """Log into the Airflow UI at `url` as admin."""
        self.get(f"{url}/")
        self.type(self.wait_for("input[name=username]"), "admin")
        self.type(self.wait_for("input[name=password]"), password)
        self.click(self.wait_for("button[type=submit]"))
        _wait_for(lambda: "/auth/login" not in self.url, 60, "the login to complete")

    def quit(self) -> None:
        self.http.delete(self.session)
        self.http.close()


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """A tiny simulated world: two ingested history days and three landed days to backfill."""
    base = tmp_path_factory.mktemp("backfill-world")
    config_file = base / "run.toml"
    config_file.write_text(CONFIG.format(root=base / "var"))
    cfg = load_config(config_file)
    for i in range(HISTORY_DAYS + len(BACKFILL_DAYS)):
        generate_day(cfg, EPOCH + dt.timedelta(days=i))
    ingest.run_range(cfg, spark, EPOCH, EPOCH + dt.timedelta(days=HISTORY_DAYS - 1))
    return {"config_file": config_file, "cfg": cfg}


def _airflow_env(home: Path, port: int, config_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), CSCNN_AIRFLOW_PORT=str(port), LANG="C.UTF-8",
               CSCNN_VENV=str(Path(sys.executable).parent.parent), CSCNN_CONFIG=str(config_file),
               CSCNN_START_DATE=str(EPOCH), CSCNN_END_DATE=str(BACKFILL_DAYS[-1]),
               CSCNN_TASK_RETRIES="1", CSCNN_RETRY_DELAY_S="1", CSCNN_SPARK_DRIVER_MEMORY="2g")
    return env


@pytest.fixture(scope="module")
def airflow_ui(world, tmp_path_factory):
    """A running local Airflow (scripts/airflow_ui.sh) whose DAG runs read the tiny world's config."""
    home = tmp_path_factory.mktemp("airflow-home")
    port = _free_port()
    env = _airflow_env(home, port, world["config_file"])
    script = REPO_ROOT / "scripts" / "airflow_ui.sh"
    start = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, f"airflow_ui.sh start failed:\n{start.stdout}\n{start.stderr}"
        password_file = home / "simple_auth_manager_passwords.json.generated"
        assert str(password_file) in start.stdout  # the script says where the password is
        password = json.loads(password_file.read_text())["admin"]
        assert password != "admin" and len(password) >= 16
        yield {"url": f"http://127.0.0.1:{port}", "password": password, "env": env, "home": home}
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)


def _api(airflow_ui) -> httpx.Client:
    api = httpx.Client(base_url=airflow_ui["url"], timeout=30)
    token = api.post("/auth/token", json={"username": "admin", "password": airflow_ui["password"]}).json()
    api.headers["Authorization"] = f"Bearer {token['access_token']}"
    return api


def _failed_task_logs(home: Path, api: httpx.Client, run_id: str, lines: int = 40) -> str:
    """The last log lines of every failed task of a run (the task logs are JSON lines)."""
    tis = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    out = []
    for ti in tis:
        if ti["state"] != "failed":
            continue
        for log in sorted((home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={ti['task_id']}").glob("*.log")):
            events = []
            for line in log.read_text().splitlines():
                try:
                    events.append(str(json.loads(line).get("event", "")))
                except ValueError:
                    events.append(line)
            out.append(f"--- {log}\n" + "\n".join(events[-lines:]))
    return "\n".join(out) or "(no failed task logs)"


@pytest.fixture(scope="module")
def backfill(airflow_ui):
    """Unpause the DAG, backfill the three days (one run at a time), wait for the runs to end."""
    api = _api(airflow_ui)
    _wait_for(lambda: api.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 180, f"the DAG {DAG_ID} to be parsed")
    reply = api.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    assert reply.status_code == 200, reply.text
    cmd = (". scripts/airflow_env.sh && airflow backfill create --dag-id {dag} --from-date {first} "
           "--to-date {last} --max-active-runs 1").format(dag=DAG_ID, first=BACKFILL_DAYS[0], last=BACKFILL_DAYS[-1])
    proc = subprocess.run(["bash", "-c", cmd], cwd=REPO_ROOT, env=airflow_ui["env"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"backfill create failed:\n{proc.stdout}\n{proc.stderr}"

    def runs_ended():
        runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100}).json()["dag_runs"]
        ended = [r for r in runs if r["state"] in ("success", "failed")]
        if any(r["state"] == "failed" for r in runs) or (len(runs) >= len(BACKFILL_DAYS) and len(ended) == len(runs)):
            return runs
        return None

    runs = _wait_for(runs_ended, BACKFILL_TIMEOUT_S, "the backfill's runs to end", interval=5)
    for run in sorted(runs, key=lambda r: r["logical_date"]):
        tis = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances").json()["task_instances"]
        took = ", ".join(f"{t['task_id']} {t['duration'] or 0:.0f}s" for t in sorted(tis, key=lambda t: t["start_date"] or ""))
        print(f"{run['dag_run_id']} ({run['run_type']}): {run['state']}: {took}")
    failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
    assert not failed, f"backfill runs failed: {failed}\n" + "\n".join(
        _failed_task_logs(airflow_ui["home"], api, run_id) for run_id in failed)
    return runs


@pytest.mark.timeout(BACKFILL_TIMEOUT_S + 600)
def test_backfill_three_days_under_the_scheduler(world, backfill, spark):
    cfg = world["cfg"]
    paths = Paths.of(cfg)
    assert sorted(r["logical_date"][:10] for r in backfill) == [str(d) for d in BACKFILL_DAYS]
    assert {r["run_type"] for r in backfill} == {"backfill"}

    # Bronze: every landing impression of every backfilled day once (or quarantined), no duplicates.
    bronze = spark.read.format("delta").load(paths.bronze_impressions)
    for day in BACKFILL_DAYS:
        landing = spark.read.parquet(paths.landing_impressions(day)).count()
        rows = bronze.where(F.col("dt") == F.lit(day))
        kept = rows.count()
        assert 0 < kept <= landing
        assert rows.select("impression_id").distinct().count() == kept, f"duplicated bronze rows on {day}"

    # Features and lookup table: unique per run date.
    lookup = spark.read.format("delta").load(paths.lookup_table)
    for day in BACKFILL_DAYS:
        ex = read_examples(cfg, spark, day)
        assert ex.count() > 0 and ex.select("split", "impression_id").distinct().count() == ex.count()
        table = lookup.where(F.col("run_date") == F.lit(day))
        assert table.count() > 0 and table.select("ad_id").distinct().count() == table.count()

    # One published version per day, in date order; the last one is live.
    registry = spark.read.format("delta").load(paths.registry).select("version", "run_date", "action").collect()
    assert sorted((r["version"], str(r["run_date"]), r["action"]) for r in registry) == [
        (i + 1, str(day), "publish") for i, day in enumerate(BACKFILL_DAYS)]
    assert read_current(cfg)["run_date"] == str(BACKFILL_DAYS[-1])
    for day in BACKFILL_DAYS:
        assert os.path.exists(paths.run_report(day))

    # Days 2 and 3 warm-started from the day before's published model, rows remapped by value: the
    # manifest's counts are those of the two run dates' stored vocabularies.
    for before, day in zip(BACKFILL_DAYS, BACKFILL_DAYS[1:]):
        manifest = json.loads(Path(local_path(paths.model_manifest(day))).read_text())
        assert manifest["warm_start_from"].endswith(f"-{before}/model/model.pt"), manifest["warm_start_from"]
        tables = manifest["warm_start"]["tables"]
        old, new = load_encoder(cfg, spark, before), load_encoder(cfg, spark, day)
        for name in VOCAB_FIELDS:
            shared = int(np.isin(new.vocab[name][0], old.vocab[name][0]).sum())
            dropped = int(old.vocab[name][0].size - shared)
            key = f"embedding.{'multi' if name in MULTI_FIELDS else 'single'}.{name}.weight"
            assert tables[key] == {"carried": 1 + shared, "new": new.vocab_size(name) - 1 - shared,
                                   "dropped": dropped}, (day, key)


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


def test_browser_sees_the_successful_runs_and_opens_the_report_links(airflow_ui, backfill, browser):
    url = airflow_ui["url"]
    last = max(backfill, key=lambda r: r["logical_date"])
    ds = last["logical_date"][:10]

    # The reports are behind the login.
    assert httpx.get(f"{url}/cscnn-reports/").status_code == 401

    browser.login(url, airflow_ui["password"])

    browser.get(f"{url}/dags")
    browser.wait_for(f"a[href='/dags/{DAG_ID}']", timeout=60)

    # The DAG's runs page lists the backfill's runs; each run's page shows its state badge: Success.
    browser.get(f"{url}/dags/{DAG_ID}/runs")
    for run in backfill:
        browser.wait_for(f"a[href='/dags/{DAG_ID}/runs/{run['dag_run_id']}']", timeout=60)
    for run in backfill:
        browser.get(f"{url}/dags/{DAG_ID}/runs/{run['dag_run_id']}")
        browser.wait_for("[data-testid='state-badge']", text="Success", timeout=60)

    details = f"{url}/dags/{DAG_ID}/runs/{last['dag_run_id']}/tasks/{LINK_TASK}/details"
    expected = {"Data Docs": (f"{url}/cscnn-reports/data_docs/index.html", "bronze_impressions"),
                "Run report": (f"{url}/cscnn-reports/runs/{ds}/report.html", f"CSCNN run report: {ds}")}
    for name, (target, content) in expected.items():
        browser.get(details)
        browser.click(browser.wait_for("a", text=name))
        _wait_for(lambda: content in browser.source, 60, f"the page behind {name!r}")
        assert browser.url == target

    browser.get(f"{url}/cscnn-reports/")
    _wait_for(lambda: f"runs/{ds}/report.html" in browser.source, 30, "the reports index")
