"""The demo: simulate the default world, run the daily DAG for one date end to end, report.

    ./scripts/demo.sh [--config conf/demo.toml] [--date 2026-02-02] [--fresh]

1. writes the simulated world's landing drops for the window [D-W, D-1] and the day D;
2. ingests the window's days into bronze (one Spark session; the history a team would have);
3. starts the local Airflow (scripts/airflow_ui.sh: api-server, scheduler, dag-processor,
   triggerer) on the demo's AIRFLOW_HOME, triggers the daily DAG `cscnn_daily` for logical date D
   and lets the scheduler run it (real Airflow, spark-submit, Spark + Delta, GX, PyTorch): ingest
   D -> quality -> features -> train -> lookup table -> gates -> publish -> report. The run is
   recorded as any triggered run is: real start and end times, each task's log in the UI;
4. prints each task's state and duration (and the end of a failed task's log), where the
   published table, the Data Docs and the report are, stops Airflow, and writes the wall time to
   bench/results/demo.json.

`airflow dags test` is not used: Airflow 3.3 records such a run's start date as its logical date
(apache/airflow#66127), so the UI would show a run of D lasting from D until now.
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

from bench.common import machine, write_result
from core.cli import CliParser, date_arg, run_cli
from core.config import load_config
from core.paths import Paths, local_path
from serving.registry import read_current, version_uri

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DAG_ID = "cscnn_daily"
RUN_TIMEOUT_S = 3 * 3600


def sh(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def free_port(preferred: int = 8080) -> int:
    """`preferred` when nothing listens on it on 127.0.0.1, else the next free port after it."""
    for port in range(preferred, preferred + 50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {preferred}..{preferred + 49} on 127.0.0.1; set CSCNN_AIRFLOW_PORT")


def api_client(url: str, home: str):
    """An httpx client with a bearer token for the local API server (admin, generated password)."""
    with open(os.path.join(home, "simple_auth_manager_passwords.json.generated")) as f:
        password = json.load(f)["admin"]
    api = httpx.Client(base_url=url, timeout=30)
    token = api.post("/auth/token", json={"username": "admin", "password": password})
    token.raise_for_status()
    api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return api


def wait_for(predicate, timeout: float, what: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def task_log_tail(home: str, run_id: str, task_id: str, lines: int = 25) -> str:
    """The last events of a task's newest log file (JSON lines) under AIRFLOW_HOME/logs."""
    folder = Path(home) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return f"    (no log file under {folder})"
    events = []
    for line in logs[-1].read_text(errors="replace").splitlines():
        try:
            events.append(str(json.loads(line).get("event", "")))
        except ValueError:
            events.append(line)
    return "\n".join("    " + e for e in events[-lines:])


def run_dag(day: dt.date, env: dict[str, str]) -> str:
    """Start Airflow, trigger the DAG for `day`, wait for the run to end under the scheduler,
    print its tasks; stop Airflow. Returns the run's state."""
    home, url = env["AIRFLOW_HOME"], f"http://127.0.0.1:{env['CSCNN_AIRFLOW_PORT']}"
    ui = os.path.join(ROOT, "scripts", "airflow_ui.sh")
    sh([ui, "start"], env)
    try:
        api = api_client(url, home)
        wait_for(lambda: api.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 300, f"the DAG {DAG_ID} to be parsed")
        api.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        logical = f"{day}T00:00:00Z"
        runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"logical_date_gte": logical,
                                                                  "logical_date_lte": logical}).json()["dag_runs"]
        for old in runs:  # a re-run of the demo replaces the date's earlier run
            api.delete(f"/api/v2/dags/{DAG_ID}/dagRuns/{old['dag_run_id']}").raise_for_status()
        reply = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": logical})
        reply.raise_for_status()
        run_id = reply.json()["dag_run_id"]
        print(f"triggered {DAG_ID} run {run_id}; the scheduler runs it (task logs: {home}/logs)", flush=True)
        seen: dict[str, str] = {}

        def ended():
            tis = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
            for ti in sorted(tis, key=lambda t: t["start_date"] or "~"):
                if ti["state"] in ("success", "failed", "upstream_failed", "skipped") and ti["task_id"] not in seen:
                    seen[ti["task_id"]] = ti["state"]
                    print(f"  {ti['task_id']:<26} {ti['state']:<16} {ti['duration'] or 0:7.1f} s", flush=True)
            state = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
            return state if state in ("success", "failed") else None

        state = wait_for(ended, RUN_TIMEOUT_S, f"run {run_id} to end", interval=5)
        for task_id, task_state in seen.items():
            if task_state == "failed":
                print(f"--- end of the {task_id} log:\n{task_log_tail(home, run_id, task_id)}")
        print(f"run {run_id}: {state}")
        return state
    finally:
        sh([ui, "stop"], env)


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "conf", "demo.toml"))
    ap.add_argument("--date", type=date_arg, help="logical date D (default: the world's epoch + window_days)")
    ap.add_argument("--fresh", action="store_true", help="delete the demo's storage root first")
    args = ap.parse_args(argv)

    t0 = time.time()
    cfg = load_config(args.config)
    paths = Paths.of(cfg)
    W = cfg.features.window_days
    day = dt.date.fromisoformat(args.date) if args.date else dt.date.fromisoformat(cfg.world.epoch) + dt.timedelta(days=W)
    first = day - dt.timedelta(days=W)
    root = local_path(cfg.storage.resolved().root)
    if args.fresh and os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root, exist_ok=True)
    # The DAG's start_date must not be after the run date, or Airflow creates no task instances;
    # its end date D keeps the scheduler from creating runs of later days (without data).
    home = os.path.abspath(os.path.join(root, "airflow"))
    port = os.environ.get("CSCNN_AIRFLOW_PORT") or str(free_port())
    env = dict(os.environ, CSCNN_CONFIG=os.path.abspath(args.config), CSCNN_START_DATE=cfg.world.epoch,
               CSCNN_END_DATE=str(day), AIRFLOW_HOME=home, CSCNN_AIRFLOW_PORT=port)

    steps = {}
    s = time.time()
    sh([sys.executable, "-m", "simworld", "--config", args.config, "--start", str(first), "--end", str(day)], env)
    steps["simulate_s"] = round(time.time() - s, 1)
    s = time.time()
    sh([sys.executable, os.path.join("spark_jobs", "ingest.py"), "--config", args.config, "--date", str(first),
        "--end-date", str(day - dt.timedelta(days=1))], env)
    steps["ingest_history_s"] = round(time.time() - s, 1)
    s = time.time()
    state = run_dag(day, env)
    steps["dag_run_s"] = round(time.time() - s, 1)
    wall = round(time.time() - t0, 1)

    current = read_current(cfg)
    print("\n== demo finished in %.0f s ==" % wall)
    if current is None or current.get("run_date") != str(day):
        print(f"the run for {day} ended {state} and published nothing: see the run report "
              f"{local_path(paths.run_report(day))} and the task logs in the UI", file=sys.stderr)
        return 1
    print(f"published version {current['version']} for {day}: {version_uri(cfg, current)}")
    print(f"lookup table (Delta): {paths.lookup_table} (run_date = {day})")
    print(f"Data Docs:   {local_path(paths.data_docs)}/index.html")
    print(f"run report:  {local_path(paths.run_report(day))}")
    print(f"Airflow UI with this run: AIRFLOW_HOME={os.path.relpath(home, ROOT)} CSCNN_CONFIG="
          f"{os.path.relpath(os.path.abspath(args.config), ROOT)} scripts/airflow_ui.sh start")
    out = {"wall_s": wall, "impressions_per_day": cfg.world.impressions_per_day, "days": W + 1,
           "run_date": str(day), "steps": steps, "config": os.path.relpath(args.config, ROOT)}
    out["machine"] = machine()
    write_result("demo.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
