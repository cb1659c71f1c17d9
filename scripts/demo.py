"""The demo: simulate the default world, run the daily DAG for one date end to end, report.

    ./scripts/demo.sh [--config conf/demo.toml] [--date 2026-02-02] [--fresh]

1. writes the simulated world's landing drops for the window [D-W, D-1] and the day D;
2. ingests the window's days into bronze (one Spark session; the history a team would have);
3. runs the daily DAG `cscnn_daily` for D with `airflow dags test` (real Airflow, spark-submit,
   Spark + Delta, GX, PyTorch): ingest D -> quality -> features -> train -> lookup table ->
   gates -> publish -> report;
4. prints where the published table, the Data Docs and the report are, and writes the wall time
   to bench/results/demo.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from core.cli import CliParser, date_arg, run_cli  # noqa: E402
from core.config import load_config  # noqa: E402
from core.paths import Paths, local_path  # noqa: E402


def sh(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


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
    # The DAG's start_date must not be after the run date, or Airflow creates no task instances.
    env = dict(os.environ, CSCNN_CONFIG=os.path.abspath(args.config), CSCNN_START_DATE=cfg.world.epoch,
               AIRFLOW_HOME=os.path.join(root, "airflow"))

    steps = {}
    s = time.time()
    sh([sys.executable, "-m", "simworld", "--config", args.config, "--start", str(first), "--end", str(day)], env)
    steps["simulate_s"] = round(time.time() - s, 1)
    s = time.time()
    sh([sys.executable, os.path.join("spark_jobs", "ingest.py"), "--config", args.config, "--date", str(first),
        "--end-date", str(day - dt.timedelta(days=1))], env)
    steps["ingest_history_s"] = round(time.time() - s, 1)
    s = time.time()
    airflow = ["bash", "-c", ". scripts/airflow_env.sh && airflow db migrate >/dev/null && "
               f"airflow dags test cscnn_daily {day}"]
    sh(airflow, env)
    steps["dag_run_s"] = round(time.time() - s, 1)
    wall = round(time.time() - t0, 1)

    from serving.registry import read_current, version_dir

    current = read_current(cfg)
    print("\n== demo finished in %.0f s ==" % wall)
    if current is None or current.get("run_date") != str(day):
        print(f"the run for {day} published nothing: see the run report and the task logs above", file=sys.stderr)
        return 1
    print(f"published version {current['version']} for {day}: {version_dir(cfg, current)}")
    print(f"lookup table (Delta): {paths.lookup_table} (run_date = {day})")
    print(f"Data Docs:   {local_path(paths.data_docs)}/index.html")
    print(f"run report:  {local_path(paths.run_report(day))}")
    out = {"wall_s": wall, "impressions_per_day": cfg.world.impressions_per_day, "days": W + 1,
           "run_date": str(day), "steps": steps, "config": os.path.relpath(args.config, ROOT)}
    sys.path.insert(0, ROOT)
    from bench.common import machine, write_result

    out["machine"] = machine()
    write_result("demo.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
