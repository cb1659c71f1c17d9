"""Where a daily run's time goes: one whole DAG run per world, per task, from Airflow and core.timing.

    python -m bench.daily_overhead --label after                       # tiny and demo, this checkout
    python -m bench.daily_overhead --label before --checkout /tmp/old  # the same, an older checkout's DAG
    python -m bench.daily_overhead --worlds tiny --label after
    python -m bench.daily_overhead --worlds tiny --label after-warm --warm-server
    python -m bench.daily_overhead --worlds tiny --label after-steady --steady

For each world (tiny: conf/tiny.toml; demo: conf/demo.toml) the inputs are made once per
invocation with this checkout's code: the simulated days [D-W, D] and the window's history
[D-W, D-1] ingested into bronze, D = epoch + W, as the demo does. Then `airflow dags test
cscnn_daily D` runs the DAG of `--checkout` (default: this one), in that checkout's venv, on a
copy of those inputs, in a fresh AIRFLOW_HOME. Per task it reads Airflow's own record (the
task_instance rows of the metadata DB: state, duration) and, where the checkout writes them, the
stage's core.timing record (launch, imports, spark session, quality, writes, work).

Spark: a checkout whose stages share the machine's Spark Connect server (core/spark_server.py)
runs with a server folder of this invocation (CSCNN_SPARK_SERVER_DIR), and no server is running
when the DAG run starts (the preparation's is stopped), so by default the run pays for starting
it: what a fresh machine's first run pays. `--warm-server` starts it before the run instead, as
it is on every later day of a machine that keeps it; the result records which
(`spark_server`). A checkout that runs spark-submit per stage starts no server either way. The
same holds for the warm stage runner of a checkout that has one (core/stage_runner.py, its own
folder CSCNN_STAGE_RUNNER_DIR of this invocation; `stage_runner` in the result). A server that
has just started is slow for its first minutes of work (class loading, a cold JIT: the first
ingest of a fresh server takes about twice as long as a later one). `--steady` measures what a
machine that runs the DAG every day sees: the inputs include day D+1, the run of D goes first
(kept under `previous_day`), and the recorded run is D+1's, on the same storage, Airflow home,
server and stage runner.

Results merge into bench/results/daily_overhead.json under results[<label>][<world>], so a
`before` and an `after` invocation in one session sit side by side. Every number is measured.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from bench.common import RESULTS, checkout_version, machine
from core.cli import CliParser, run_cli
from core.config import load_config
from core.files import write_json
from core import stage_runner
from core.spark_server import stop_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLDS = {"tiny": "conf/tiny.toml", "demo": "conf/demo.toml"}
RESULT = "daily_overhead.json"
DAG_ID = "cscnn_daily"
GOALS = {"tiny": {"dag_run_s": 60}, "demo": {"dag_run_s": 240}}


def sh(cmd: list[str], env: dict[str, str], cwd: str = ROOT, timeout: float = 3600) -> float:
    """Run `cmd` (output passed through); return its wall time. A failure stops the bench."""
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, cwd=cwd, env=env, timeout=timeout)
    return round(time.monotonic() - t0, 1)


def world_config(world: str, root: str, path: str) -> None:
    """Write the world's TOML with storage.root = `root`: the file's own text, so that an older
    checkout (which may not know every key of this one's resolved config) reads it too."""
    with open(os.path.join(ROOT, WORLDS[world]), encoding="utf-8") as f:
        text = f.read()
    line = f"root = {json.dumps(root)}"
    if re.search(r"(?m)^\[storage\]\s*$", text):
        text, n = re.subn(r"(?ms)(^\[storage\]\s*$.*?)^root\s*=.*?$", lambda m: m.group(1) + line, text, count=1)
        if n != 1:
            text = re.sub(r"(?m)^\[storage\]\s*$", "[storage]\n" + line, text, count=1)
    else:
        text = f"[storage]\n{line}\n\n{text}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def prepare(world: str, work: str, env: dict[str, str], extra_days: int = 0) -> tuple[str, dt.date, dict[str, float]]:
    """Simulate the world's days (and `extra_days` after D) and ingest the window's history once;
    returns (base root, D, wall times)."""
    base = os.path.join(work, world, "base")
    config = os.path.join(work, world, "base.toml")
    world_config(world, base, config)
    cfg = load_config(config)
    os.makedirs(base)
    W = cfg.features.window_days
    day = dt.date.fromisoformat(cfg.world.epoch) + dt.timedelta(days=W)
    first = day - dt.timedelta(days=W)
    walls = {"simulate_s": sh([sys.executable, "-m", "simworld", "--config", config, "--start", str(first),
                               "--end", str(day + dt.timedelta(days=extra_days))], env),
             "ingest_history_s": sh([sys.executable, os.path.join(ROOT, "spark_jobs", "ingest.py"), "--config",
                                     config, "--date", str(first), "--end-date", str(day - dt.timedelta(days=1))],
                                    env)}
    return base, day, walls


def task_instances(airflow_home: str, day: dt.date) -> list[dict]:
    """The task_instance rows (the last try of each task) of the DAG's run for `day` from the SQLite metadata DB."""
    with sqlite3.connect(os.path.join(airflow_home, "airflow.db")) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT ti.task_id, ti.state, ti.start_date, ti.end_date, ti.duration, ti.try_number "
                          "FROM task_instance ti JOIN dag_run dr ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id "
                          "WHERE ti.dag_id = ? AND date(dr.logical_date) = ? ORDER BY ti.start_date",
                          (DAG_ID, day.isoformat())).fetchall()
    return [dict(r) for r in rows]


def run_dag(world: str, base: str, day: dt.date, label: str, checkout: str, work: str,
            env: dict[str, str], warm_server: bool = False, again: bool = False) -> dict:
    """One `airflow dags test` of the checkout's DAG on a copy of the prepared inputs; its per-task times.

    `again`: the run continues the storage, Airflow home, Spark server and stage runner of the
    previous run_dag call of this label (the run of the day before), instead of fresh ones."""
    root = os.path.join(work, world, label)
    config = os.path.join(work, world, f"{label}.toml")
    home = os.path.join(work, world, f"airflow-{label}")
    if not again:
        shutil.copytree(base, root, symlinks=True)
        world_config(world, root, config)
        os.makedirs(home)
    cfg = load_config(config)
    # The checkout's own venv (scripts/bootstrap.sh: seconds from uv's cache), so its stages import its code.
    run_env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW") and k not in ("CSCNN_VENV", "VIRTUAL_ENV")}
    run_env.update(CSCNN_CONFIG=config, CSCNN_START_DATE=cfg.world.epoch, CSCNN_END_DATE=str(day),
                   CSCNN_TASK_RETRIES="0", AIRFLOW_HOME=home)
    has_server = os.path.isfile(os.path.join(checkout, "core", "spark_server.py"))
    has_runner = os.path.isfile(os.path.join(checkout, "core", "stage_runner.py"))
    start_server = (f"python -m core.spark_server start --config {config} >/dev/null && "
                    if warm_server and has_server else "")
    if warm_server and has_runner:
        start_server += "python -m core.stage_runner start >/dev/null && "
    command = ("source scripts/bootstrap.sh >/dev/null && . scripts/airflow_env.sh && airflow db migrate >/dev/null && "
               f"{start_server}airflow dags test {DAG_ID} {day}")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "-c", command], cwd=checkout, env=run_env, capture_output=True, text=True,
                          timeout=3 * 3600)
    command_s = round(time.monotonic() - t0, 1)
    out = proc.stdout + proc.stderr
    states = re.findall(rf"DagRun Finished: dag_id={DAG_ID}.*?state=(\w+)", out)
    if not states:
        raise RuntimeError(f"no finished run of {DAG_ID} in the output of {world}/{label} "
                           f"(exit {proc.returncode}):\n{out[-3000:]}")
    tis = task_instances(home, day)
    tasks = {}
    timings_dir = os.path.join(root, "artifacts", "runs", str(day), "timings")
    for ti in tis:
        entry = {"state": ti["state"], "airflow_s": round(ti["duration"] or 0.0, 1)}
        rec_path = os.path.join(timings_dir, f"{ti['task_id']}.json")
        if os.path.isfile(rec_path):
            with open(rec_path) as f:
                rec = json.load(f)
            entry.update(process_s=rec["total_s"], startup_s=rec["startup_s"], phases=rec["phases"],
                         outside_process_s=round(entry["airflow_s"] - rec["total_s"], 1))
        tasks[ti["task_id"]] = entry
    starts = [dt.datetime.fromisoformat(t["start_date"]) for t in tis if t["start_date"]]
    ends = [dt.datetime.fromisoformat(t["end_date"]) for t in tis if t["end_date"]]
    dag_run_s = round((max(ends) - min(starts)).total_seconds(), 1) if starts and ends else None
    result = {"state": states[-1], "run_date": str(day), "dag_run_s": dag_run_s, "command_s": command_s,
              "sum_of_tasks_s": round(sum(t["airflow_s"] for t in tasks.values()), 1), "tasks": tasks,
              "impressions_per_day": cfg.world.impressions_per_day, "window_days": cfg.features.window_days,
              "checkout": checkout_version(checkout),
              "spark_server": ("none (spark-submit per stage)" if not has_server else
                               "the previous day's run's" if again else
                               "running before the run" if warm_server else "started by the run's first stage"),
              "stage_runner": ("none (a new interpreter per stage)" if not has_runner else
                               "the previous day's run's" if again else
                               "running before the run" if warm_server else "started by the run's first stage")}
    print(f"{world}/{label}: {result['state']}, DAG run {dag_run_s} s (command {command_s} s)", flush=True)
    for task_id, t in tasks.items():
        extra = (f"  process {t['process_s']:.1f} s, start-up {t['startup_s']:.1f} s" if "process_s" in t else "")
        print(f"  {task_id:<26} {t['state']:<10} {t['airflow_s']:7.1f} s{extra}", flush=True)
    if result["state"] != "success":
        print(out[-3000:], file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="the results' key, e.g. before or after")
    ap.add_argument("--checkout", default=ROOT, help="the checkout whose DAG and stages run (default: this one)")
    ap.add_argument("--worlds", default="tiny,demo", help="comma-separated, of: " + ", ".join(WORLDS))
    ap.add_argument("--work", help="folder for the worlds' storage and Airflow homes (default: a temporary one)")
    ap.add_argument("--warm-server", action="store_true",
                    help="start the Spark Connect server before the DAG run (default: the run starts it)")
    ap.add_argument("--steady", action="store_true",
                    help="measure the run of day D+1 that follows the run of day D on the same machine (its Spark "
                         "server and stage runner kept, as on every day of a machine that runs the DAG daily); "
                         "the run of D is recorded as previous_day")
    args = ap.parse_args(argv)
    if args.steady and args.warm_server:
        ap.error("--steady and --warm-server exclude each other: --steady's server is the previous day's run's")
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    bad = [w for w in worlds if w not in WORLDS]
    if bad or not worlds:
        ap.error(f"bad --worlds {args.worlds!r}; allowed: a comma-separated list of {', '.join(WORLDS)}")
    checkout = os.path.abspath(args.checkout)
    if not os.path.isfile(os.path.join(checkout, "dags", "cscnn_daily.py")):
        ap.error(f"bad --checkout {args.checkout!r}: no dags/cscnn_daily.py there")
    work = args.work or tempfile.mkdtemp(prefix="cscnn-overhead-")
    os.environ["CSCNN_SPARK_SERVER_DIR"] = os.path.join(work, "spark-servers")  # this invocation's servers only
    os.environ["CSCNN_STAGE_RUNNER_DIR"] = os.path.join(work, "stage-runners")
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1")
    path = os.path.join(RESULTS, RESULT)
    data = json.load(open(path)) if os.path.isfile(path) else {}
    data.update(machine=machine(), goals=GOALS)
    for world in worlds:
        base, day, prep = prepare(world, work, env, extra_days=1 if args.steady else 0)
        stop_all()  # the preparation's server: the run starts with none (or its own, --warm-server)
        try:
            result = run_dag(world, base, day, args.label, checkout, work, env, args.warm_server)
            if args.steady:
                previous = result
                result = run_dag(world, base, day + dt.timedelta(days=1), args.label, checkout, work, env, again=True)
                result["previous_day"] = previous
        finally:
            stop_all()
            stage_runner.stop_all()
        result["prepare"] = prep
        result["measured_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        data.setdefault("results", {}).setdefault(args.label, {})[world] = result
        os.makedirs(RESULTS, exist_ok=True)
        write_json(path, data, sort_keys=False)  # after each world: a later failure keeps what was measured
        print(f"wrote {path}", flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
