"""Every command of the README's ```bash blocks runs as written and exits 0 (except EXCLUDED).

The commands run in a temporary copy of the repository (its tracked and untracked, not ignored
files), so `var/` of this checkout is never touched, in README order, one bash process per block
(what a block sources carries to its next lines) after the README's own setup,
`source scripts/bootstrap.sh`. What the copy changes, and why:

- `conf/demo.toml` is the README's file with the tiny world of the whole-DAG tests
  (tests/dags/tiny_world.py: a few thousand impressions a day, a 2-day window, opened AUC
  gates) and its epoch moved so that the demo's date is still DEMO_DATE, the date the README's
  stage command uses. The storage root stays `var/demo`, so `./scripts/demo.sh` runs the real
  DAG in minutes rather than 10, and the stage, predictor and registry commands read what it
  published.
- `requests.jsonl`, the predictor's input file that the README leaves to the user, is written
  from the demo's landing day (impressions joined with their ads, contract fields only).
- `/tmp/world`, a scratch root of a simworld example, becomes a folder of the test's scratch folder.
- The Airflow UI listens on a free port (CSCNN_AIRFLOW_PORT, as scripts/airflow_ui.sh says), and
  the Spark Connect servers the commands start keep their records in the scratch folder
  (CSCNN_SPARK_SERVER_DIR), like the standalone cluster (CSCNN_STANDALONE_DIR); the test stops
  them at the end.
  After `airflow_ui.sh start` the test waits until the dag-processor has stored `cscnn_daily`,
  as a user would see it in the UI before stopping; the backfill block then runs after `stop`, so
  `airflow backfill create` registers its runs without a scheduler that would start seven DAG
  runs (tests/dags/test_scheduler_ui.py runs backfills under a scheduler).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from serving.requests import ALLOWED_FIELDS, IGNORED_FIELDS
from tests.dags.tiny_world import CONFIG as TINY_WORLD_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DEMO_DATE = dt.date(2026, 2, 2)  # the date of the README's stage command and of the full demo

# Commands not run, with the reason (each must still appear in the README: a test checks it).
EXCLUDED = {
    "./scripts/test.sh": "the whole test suite, which contains this test",
    "python -m bench.simulate_ingest": "a benchmark at 100k and 1M impressions a day (many minutes); "
                                       "it rewrites a committed result file",
    "python -m bench.features": "a benchmark up to 1M impressions a day (many minutes)",
    "python -m bench.scale": "features and six trainings at each of three window sizes (about 45 minutes); "
                             "it rewrites a committed result file; tests/models/test_streaming.py covers the "
                             "streamed trainer",
    "python -m models.bench_speed": "a training-speed benchmark (many minutes on 2 cores)",
    "python -m bench.ablation": "five variants x three seeds of training, about 32 minutes",
    "python -m bench.lookup_serving": "a latency benchmark with thousands of timed rounds (minutes on a "
                                      "loaded machine); tests/serving covers the table and predictor",
    "python -m bench.daily_overhead --label after": "whole DAG runs of the tiny and the demo world (many "
                                                    "minutes); it rewrites a committed result file",
    "python -m bench.warm_start": "eight daily runs with two trainings each (about 10 minutes); it rewrites a "
                                  "committed result file; tests/bench covers its summary",
    "python -m bench.beyond": "two worlds x three seeds x three variants of training (about 40 minutes); "
                              "it rewrites committed result files; tests/bench covers its claims",
    "python -m bench.headroom": "six training settings on one seed (about 20 minutes); it rewrites committed "
                                "result files; tests/bench covers its summary",
}
BLOCK_TIMEOUT_S = 2400  # the demo block: about 4 minutes on 2 idle cores, far more on a loaded machine


def _without_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command).strip()


def readme_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, comment lines dropped."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        commands, pending = [], ""
        for line in body.splitlines():
            line = f"{pending} {line.strip()}" if pending else line.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            if line and not line.startswith("#"):
                commands.append(line)
        blocks.append(commands)
    return blocks


BLOCKS = readme_blocks(README.read_text())
COMMANDS = [(b, i, cmd) for b, block in enumerate(BLOCKS) for i, cmd in enumerate(block)
            if _without_comment(cmd) not in EXCLUDED]


def _copy_repository(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    if listed.returncode != 0:  # not a git checkout: everything but the storage folder
        shutil.copytree(REPO_ROOT, dest, ignore=shutil.ignore_patterns("var", ".git", "__pycache__"))
        return
    for rel in filter(None, listed.stdout.split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _toml(data: dict) -> str:
    """TOML for {section: {key: scalar}} (the shape of conf/demo.toml)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    return "".join(f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) + "\n"
                   for section, keys in data.items())


def small_demo_config(readme_config: str) -> str:
    """The README's demo config with the tiny world; the demo's date stays DEMO_DATE."""
    config = tomllib.loads(readme_config)
    for section, keys in tomllib.loads(TINY_WORLD_CONFIG.format(root="var/demo")).items():
        config.setdefault(section, {}).update(keys)
    window = config["features"]["window_days"]
    config["world"]["epoch"] = str(DEMO_DATE - dt.timedelta(days=window))
    return _toml(config)


def write_requests(clone: Path, n: int = 50) -> None:
    """requests.jsonl from the demo's landing day: impressions with their ads' fields."""
    landing = clone / "var" / "demo" / "landing" / str(DEMO_DATE)
    impressions = pq.read_table(landing / "impressions.parquet").slice(0, n).to_pylist()
    ads = {row["ad_id"]: row for row in pq.read_table(landing / "ads.parquet").to_pylist()}
    with open(clone / "requests.jsonl", "w") as f:
        for row in impressions:
            request = {**ads.get(row["ad_id"], {}), **row}
            fields = {k: v for k, v in request.items() if k in ALLOWED_FIELDS and k not in IGNORED_FIELDS}
            f.write(json.dumps(fields) + "\n")


WAIT_FOR_DAG = """python - var/airflow/airflow.db <<'PY'
import sqlite3, sys, time
deadline = time.time() + 300
while time.time() < deadline:
    try:
        if sqlite3.connect(sys.argv[1]).execute(
                "select count(*) from serialized_dag where dag_id = 'cscnn_daily'").fetchone()[0]:
            sys.exit(0)
    except sqlite3.Error:
        pass
    time.sleep(3)
sys.exit("the dag-processor did not store cscnn_daily within 300 s")
PY"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_block(clone: Path, logs: Path, b: int, commands: list[str], env: dict[str, str],
               scratch: Path) -> None:
    """One bash process for block b; command i's output goes to b-i.log, its exit code to b-i.rc."""
    lines = [f"cd {clone}", "source scripts/bootstrap.sh >/dev/null"]
    for i, command in enumerate(commands):
        if _without_comment(command) in EXCLUDED:
            continue
        command = command.replace("/tmp/world", str(scratch / "world"))
        lines.append(f"{{ {command}\n}} >{logs}/{b}-{i}.log 2>&1 </dev/null; echo $? >{logs}/{b}-{i}.rc")
        if "airflow_ui.sh start" in command:
            lines.append(f"{{ {WAIT_FOR_DAG}\n}} >>{logs}/{b}-{i}.log 2>&1 || echo 1 >{logs}/{b}-{i}.rc")
    proc = subprocess.Popen(["bash", "-c", "\n".join(lines)], cwd=clone, env=env, start_new_session=True)
    try:
        proc.wait(timeout=BLOCK_TIMEOUT_S)
    finally:  # a timeout (here or pytest's) leaves nothing of the block running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="module")
def readme_run():
    """Runs every block once; {(block, index): (exit code or None if it never finished, output)}."""
    # Its own folder, not pytest's tmp_path: pytest deletes old base folders when other sessions
    # start, which can happen during this test's minutes on a shared machine.
    tmp = Path(tempfile.mkdtemp(prefix="cscnn-readme-"))
    try:
        clone, logs, scratch = tmp / "clone", tmp / "logs", tmp / "scratch"
        for d in (clone, logs, scratch):
            d.mkdir()
        _copy_repository(clone)
        (clone / "conf" / "demo.toml").write_text(small_demo_config((REPO_ROOT / "conf" / "demo.toml").read_text()))
        keep = ("CSCNN_CACHE", "CSCNN_PYTHON", "CSCNN_LOG_LEVEL")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CSCNN_", "AIRFLOW", "PYSPARK_", "SPARK_")) and k != "PYTHONPATH" or k in keep}
        env["CSCNN_AIRFLOW_PORT"] = str(_free_port())
        env["CSCNN_AIRFLOW_START_TIMEOUT"] = "600"  # scripts/airflow_ui.sh: 180 s is short on a loaded machine
        env["CSCNN_SPARK_SERVER_DIR"] = str(scratch / "spark-servers")  # never a developer's own servers
        env["CSCNN_STAGE_RUNNER_DIR"] = str(scratch / "stage-runners")
        env["CSCNN_STANDALONE_DIR"] = str(scratch / "standalone")  # nor a developer's own cluster
        try:
            for b, commands in enumerate(BLOCKS):
                if any("serving.predict" in c for c in commands):
                    try:
                        write_requests(clone)
                    except Exception as e:  # the predictor's command then fails, naming the missing file
                        (logs / "requests.jsonl.error").write_text(repr(e))
                _run_block(clone, logs, b, commands, env, scratch)
        finally:  # whatever happened, no Airflow or Spark server of the copy outlives the test
            subprocess.run(["bash", "scripts/airflow_ui.sh", "stop"], cwd=clone, env=env, capture_output=True,
                           timeout=120)
            subprocess.run(["bash", "-c", "source scripts/bootstrap.sh && python -m core.spark_server stop && "
                            "python -m core.stage_runner stop && python -m core.standalone stop"],
                           cwd=clone, env=env, capture_output=True, timeout=120)
        results = {}
        for b, i, _ in COMMANDS:
            rc_file, log_file = logs / f"{b}-{i}.rc", logs / f"{b}-{i}.log"
            rc = int(rc_file.read_text().split()[-1]) if rc_file.exists() else None
            results[(b, i)] = (rc, log_file.read_text(errors="replace") if log_file.exists() else "")
        yield results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _command_id(entry: tuple[int, int, str]) -> str:
    command = _without_comment(entry[2]).removeprefix("source scripts/bootstrap.sh && ").removeprefix("./")
    return re.sub(r"[^\w./=-]+", "_", command)[:60]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first command's test also runs every block (the module's fixture)
@pytest.mark.parametrize("block,index,command", COMMANDS, ids=[_command_id(c) for c in COMMANDS])
def test_readme_command_runs_as_written(readme_run, block, index, command):
    rc, output = readme_run[(block, index)]
    assert rc == 0, f"`{command}` exited {rc}:\n{output[-5000:]}"


def test_the_exclusions_are_readme_commands():
    written = {_without_comment(c) for block in BLOCKS for c in block}
    assert set(EXCLUDED) <= written, sorted(set(EXCLUDED) - written)
    assert len(COMMANDS) >= 10, COMMANDS
