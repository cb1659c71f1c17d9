"""A Spark standalone cluster on this machine: one master and one worker, from the Spark pyspark ships.

    python -m core.standalone start [--cores N] [--memory 2g]   # start it (or find it running); prints its URL
    python -m core.standalone status                            # its URL and processes, or "not running"
    python -m core.standalone stop                              # stop the master, the worker and its executors

The same kind of cluster a team runs on many machines, shrunk to one: the master schedules, the
worker starts each application's executors as JVMs of their own, and a stage's Spark (the Spark
Connect server of core/spark_server.py, a spark-submit) is the cluster's driver. A config reaches
it with `spark.master = "spark://127.0.0.1:<port>"` (the URL `start` prints). The tests run the
daily stages on it (tests/cluster/test_standalone.py) and compare every output with `local[*]`'s.

Everything listens on 127.0.0.1 only: the master (its port and web UI), the worker (its port and
web UI), on free ports; the master's REST submission server is off. Both run in one process
session of their own, so `stop` ends them and the executors the worker started. The record and
the logs are in CSCNN_STANDALONE_DIR, else ~/.cache/cscnn-pipeline/standalone; a worker's
scratch and the executors' logs are under its `work/` folder.

Standard library and core only; pyspark is located only to start the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cli import CliParser, run_cli, setup_logging
from core.files import locked, state_folder, write_json
from core.jars import SPARK_CONF_DIR
from core.spark_server import _answers, _free_port, _is_server_process as _alive, _kill, _log_tail, _spark_home

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "~/.cache/cscnn-pipeline/standalone"
START_TIMEOUT_S = 120.0  # two cold JVMs on a busy two-core machine: ~10-30 s
RECORD = "cluster.json"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(RuntimeError):
    """The cluster could not be started (the message names the log to read)."""


@dataclass(frozen=True)
class Cluster:
    """A running cluster: the master URL, its web UI, the processes and the state folder."""

    url: str
    ui_url: str
    master_pid: int
    worker_pid: int
    folder: Path


def state_dir() -> Path:
    """Where the record and logs live (CSCNN_STANDALONE_DIR, else a per-user cache)."""
    return state_folder("CSCNN_STANDALONE_DIR", DEFAULT_STATE_DIR)


def alive_workers(ui_url: str) -> int:
    """How many workers the master counts as alive (its web UI's JSON), 0 when it does not answer."""
    try:
        with urllib.request.urlopen(f"{ui_url}/json/", timeout=2.0) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def running(folder: Path | None = None) -> Cluster | None:
    """The cluster recorded in `folder` (default: state_dir()) when master and worker are up."""
    folder = folder or state_dir()
    record = _read_record(folder)
    if (record is None or not _alive(int(record["master_pid"]), MASTER_CLASS)
            or not _alive(int(record["worker_pid"]), WORKER_CLASS) or not _answers(int(record["port"]))):
        return None
    return Cluster(record["url"], record["ui_url"], int(record["master_pid"]), int(record["worker_pid"]), folder)


def _env() -> dict[str, str]:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1",
               SPARK_CONF_DIR=os.environ.get("SPARK_CONF_DIR") or SPARK_CONF_DIR,
               # The master's REST submission server would listen on a fixed port (6066).
               SPARK_MASTER_OPTS=(os.environ.get("SPARK_MASTER_OPTS", "") + " -Dspark.master.rest.enabled=false").strip())
    for k in ("PYSPARK_GATEWAY_PORT", "SPARK_REMOTE"):
        env.pop(k, None)
    return env


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        # A session of its own: `stop` kills the group (the worker's group holds its executors).
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)


def _start(folder: Path, cores: int, memory: str) -> Cluster:
    spark_class = os.path.join(_spark_home(), "bin", "spark-class")
    port, ui_port, worker_ui_port = _free_port(), _free_port(), _free_port()
    url, ui_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    env = _env()
    work = folder / "work"
    work.mkdir(parents=True, exist_ok=True)
    print(f"core.standalone: starting a Spark standalone cluster at {url} (web UI {ui_url}), logs in {folder}",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    master = _spawn([spark_class, MASTER_CLASS, "--host", "127.0.0.1", "--port", str(port),
                     "--webui-port", str(ui_port)], folder / "master.log", env, folder)
    worker = _spawn([spark_class, WORKER_CLASS, "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
                     "--webui-port", str(worker_ui_port), "--work-dir", str(work), url],
                    folder / "worker.log", env, folder)
    write_json(folder / RECORD, {"url": url, "ui_url": ui_url, "port": port, "master_pid": master.pid,
                                 "worker_pid": worker.pid, "cores": cores, "memory": memory,
                                 "started_at": time.time()}, sort_keys=False)
    while time.monotonic() - started < START_TIMEOUT_S:
        for proc, name in ((master, "master"), (worker, "worker")):
            if proc.poll() is not None:
                _kill(master.pid)
                _kill(worker.pid)
                raise ClusterError(f"the standalone {name} exited with code {proc.returncode} while starting; "
                                   f"{folder / (name + '.log')} ends:\n{_log_tail(folder / (name + '.log'))}")
        if alive_workers(ui_url) >= 1:
            log.info("standalone cluster up at %s in %.1f s", url, time.monotonic() - started)
            return Cluster(url, ui_url, master.pid, worker.pid, folder)
        time.sleep(0.5)
    _kill(master.pid)
    _kill(worker.pid)
    raise ClusterError(f"the standalone cluster at {url} had no live worker within {START_TIMEOUT_S:.0f} s; "
                       f"{folder / 'worker.log'} ends:\n{_log_tail(folder / 'worker.log')}")


def ensure_cluster(cores: int = 2, memory: str = "2g", folder: Path | None = None) -> Cluster:
    """The running cluster of `folder` (default: state_dir()), started first when there is none."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    folder = folder or state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".start.lock"):
        return running(folder) or _start(folder, cores, memory)


def stop(folder: Path | None = None) -> bool:
    """Stop the master, the worker and its executors; whether any of them was running."""
    folder = folder or state_dir()
    record = _read_record(folder)
    if record is None:
        return False
    with locked(folder / ".start.lock"):
        was = False
        for key, main_class in (("worker_pid", WORKER_CLASS), ("master_pid", MASTER_CLASS)):
            if _alive(int(record[key]), main_class):
                _kill(int(record[key]))
                was = True
        (folder / RECORD).unlink(missing_ok=True)
    return was


def main(argv: list[str] | None = None) -> int:
    def run(args_list: list[str]) -> int:
        parser = CliParser(description="Start, show or stop a Spark standalone cluster on this machine "
                                       "(core/standalone.py).")
        parser.add_argument("action", choices=("start", "status", "stop"))
        parser.add_argument("--cores", type=int, default=2, help="cores the worker offers (default 2)")
        parser.add_argument("--memory", default="2g", help="memory the worker offers its executors (default 2g)")
        args = parser.parse_args(args_list)
        if args.cores < 1:
            parser.error(f"--cores must be >= 1, got {args.cores}")
        setup_logging()
        if args.action == "start":
            print(ensure_cluster(args.cores, args.memory).url)
        elif args.action == "status":
            cluster = running()
            print(f"running  {cluster.url}  web UI {cluster.ui_url}  master pid {cluster.master_pid}  "
                  f"worker pid {cluster.worker_pid}  {cluster.folder}" if cluster else "not running")
        else:
            print("stopped the standalone cluster" if stop() else "no standalone cluster was running")
        return 0

    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
