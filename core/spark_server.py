"""The machine's long-lived Spark: a Spark Connect server that the stages reach as `sc://` clients.

    python -m core.spark_server start [--config FILE]   # start it (or find it running); prints its URL
    python -m core.spark_server status [--config FILE]  # every server of this state folder, one line each
    python -m core.spark_server stop                    # stop every server of this state folder

A spark-submit per stage pays, every time, for a JVM start, Delta's classes, a SparkSession and a
JIT that has not warmed up; on small data that is nearly all of a stage. With `spark.remote =
"local"` (the default, core.config.SparkConfig) a stage's `core.spark.get_spark` calls
`ensure_server` instead, which, under a file lock:

* reads the server's record (<state>/<key>/server.json: pid, port), and uses that server when its
  process is alive, is a Spark Connect server, and its port answers;
* otherwise starts one: Spark's own `SparkConnectServer` through pyspark's spark-submit, with
  Delta's jars by path (core.jars), the config's master, driver memory and extra settings,
  bound to 127.0.0.1 on a free port, in a session of its own (the task that started it may end;
  the server stays), logging to <state>/<key>/server.log.

<key> is a hash of everything the server is started with (master, memory, settings, jars, this
Python), so a config that needs another server gets its own. <state> is
CSCNN_SPARK_SERVER_DIR or ~/.cache/cscnn-pipeline/spark-connect; the test suite sets its own.

A server that dies (killed, out of memory) ends the sessions of the stages running on it: those
tasks fail and Airflow retries them, and the retry's `ensure_server` finds the record stale and
starts a new server. Every stage writes its outputs whole (replaceWhere, MERGE, a swapped-in
table), so a retry leaves no duplicated rows (tests/test_spark_server.py kills one mid-stage).

Standard library and core (config, files, jars, cli) only at import time; pyspark is located
only to start a server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cli import CliParser, run_cli, setup_logging
from core.config import SparkConfig, load_config, parse_overrides
from core.files import locked, state_folder, write_json
from core.jars import DEFAULT_JARS_CACHE, SPARK_CONF_DIR, delta_jars

log = logging.getLogger(__name__)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
DEFAULT_STATE_DIR = "~/.cache/cscnn-pipeline/spark-connect"
START_TIMEOUT_S = 180.0  # a cold JVM with Delta's jars on a busy two-core machine: ~10-40 s
STOP_TIMEOUT_S = 30.0
RECORD = "server.json"
LOG = "server.log"


class SparkServerError(RuntimeError):
    """The Spark Connect server could not be started (the message names its log)."""


@dataclass(frozen=True)
class Server:
    """A running server: its URL, process and folder."""

    url: str
    pid: int
    port: int
    folder: Path


def state_dir() -> Path:
    """Where the servers' records and logs live (CSCNN_SPARK_SERVER_DIR, else a per-user cache)."""
    return state_folder("CSCNN_SPARK_SERVER_DIR", DEFAULT_STATE_DIR)


def spark_conf(cfg: SparkConfig) -> dict[str, str]:
    """The JVM settings of every Spark the project starts (this server, or one in a stage's process):
    Delta's jars and those of `cfg.packages` by path (plus `spark.jars` of `cfg.extra_conf`), its extensions and catalog, the
    UI as configured, and then `cfg.extra_conf`."""
    ivy_dir = cfg.ivy_dir or os.path.expanduser(DEFAULT_JARS_CACHE)
    jars = [j for package in (cfg.delta_package, *cfg.packages) for j in delta_jars(package, ivy_dir)]
    jars = list(dict.fromkeys(jars))  # a jar two packages share, once
    extra = dict(cfg.extra_conf)
    conf = {
        "spark.jars": ",".join([*jars, *([extra.pop("spark.jars")] if extra.get("spark.jars") else [])]),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.ui.enabled": "true" if cfg.ui_enabled else "false",
        "spark.ui.showConsoleProgress": "false",
    }
    conf.update(extra)
    return conf


def server_conf(cfg: SparkConfig) -> dict[str, str]:
    """The settings a server is started with: `spark_conf`, loopback only."""
    return {"spark.connect.grpc.binding.address": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1", "spark.sql.session.timeZone": "UTC", **spark_conf(cfg)}


def server_key(cfg: SparkConfig) -> str:
    """Names the server a config needs: equal for configs that need the same server."""
    what = {"master": cfg.master, "driver_memory": cfg.driver_memory, "conf": server_conf(cfg),
            "python": sys.executable, "conf_dir": os.environ.get("SPARK_CONF_DIR") or SPARK_CONF_DIR}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def _spark_home() -> str:
    import pyspark  # only here: starting a server is the one step that needs the Spark distribution

    return os.path.dirname(pyspark.__file__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _is_server_process(pid: int, main_class: str = SERVER_CLASS) -> bool:
    """Whether `pid` is alive and runs `main_class`, by default a Spark Connect server (not a
    process that reused the pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return main_class.encode() in f.read()
    except OSError:
        return False


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _running(folder: Path) -> Server | None:
    record = _read_record(folder)
    if record is None or not _is_server_process(int(record["pid"])) or not _answers(int(record["port"])):
        return None
    return Server(f"sc://127.0.0.1:{record['port']}", int(record["pid"]), int(record["port"]), folder)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start(cfg: SparkConfig, folder: Path) -> Server:
    port = _free_port()
    cmd = [os.path.join(_spark_home(), "bin", "spark-submit"), "--class", SERVER_CLASS,
           "--name", "cscnn-spark-connect", "--master", cfg.master, "--driver-memory", cfg.driver_memory]
    for k, v in {**server_conf(cfg), "spark.connect.grpc.binding.port": str(port)}.items():
        cmd += ["--conf", f"{k}={v}"]
    cmd.append("spark-internal")
    env = dict(os.environ, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_CONF_DIR=os.environ.get("SPARK_CONF_DIR") or SPARK_CONF_DIR)
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("SPARK_REMOTE", None)
    log_path = folder / LOG
    print(f"core.spark_server: starting a Spark Connect server ({cfg.master}) on 127.0.0.1:{port}, "
          f"log {log_path}", file=sys.stderr, flush=True)
    started = time.monotonic()
    with open(log_path, "ab") as out:
        # Its own session: the task that starts it may end (and have its process group killed).
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=folder, start_new_session=True)
    write_json(folder / RECORD, {"pid": proc.pid, "port": port, "master": cfg.master,
                                 "started_at": time.time(), "command": cmd}, sort_keys=False)
    while time.monotonic() - started < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise SparkServerError(f"the Spark Connect server exited with code {proc.returncode} while starting; "
                                   f"{log_path} ends:\n{_log_tail(log_path)}")
        if _answers(port):
            log.info("Spark Connect server up on 127.0.0.1:%d in %.1f s", port, time.monotonic() - started)
            return Server(f"sc://127.0.0.1:{port}", proc.pid, port, folder)
        time.sleep(0.25)
    _kill(proc.pid)
    raise SparkServerError(f"the Spark Connect server did not answer on 127.0.0.1:{port} within "
                           f"{START_TIMEOUT_S:.0f} s; {log_path} ends:\n{_log_tail(log_path)}")


def ensure_server(cfg: SparkConfig) -> Server:
    """The running server for `cfg`, started first when there is none (see the module docstring)."""
    folder = state_dir() / server_key(cfg)
    server = _running(folder)  # the common case: no lock needed to find a live server
    if server is not None:
        return server
    with locked(folder / ".start.lock"):
        return _running(folder) or _start(cfg, folder)


def _kill(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group (its JVM and Python workers), SIGKILL what is left.

    A leader that this process started is reaped here: until then its zombie keeps the group in
    existence, and the wait would last the whole timeout.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass  # not this process's child (or reaped already)
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def servers() -> list[tuple[Path, dict[str, Any], bool]]:
    """(folder, record, running) of every server recorded in the state folder."""
    out = []
    for folder in sorted(p for p in state_dir().glob("*") if p.is_dir()):
        record = _read_record(folder)
        if record is not None:
            out.append((folder, record, _running(folder) is not None))
    return out


def _stop_folder(folder: Path, record: dict[str, Any]) -> bool:
    """Stop the server recorded in `folder` and drop its record; whether it was running."""
    with locked(folder / ".start.lock"):
        was = _is_server_process(int(record["pid"]))
        if was:
            _kill(int(record["pid"]))
        (folder / RECORD).unlink(missing_ok=True)
    return was


def stop_all() -> int:
    """Stop every server of the state folder; returns how many were running."""
    return sum(_stop_folder(folder, record) for folder, record, _ in servers())


def stop(cfg: SparkConfig) -> bool:
    """Stop the server that `cfg` needs (e.g. one whose cluster is going away); whether it ran."""
    folder = state_dir() / server_key(cfg)
    record = _read_record(folder)
    return record is not None and _stop_folder(folder, record)


def main(argv: list[str] | None = None) -> int:
    def run(args_list: list[str]) -> int:
        parser = CliParser(description="Start, list or stop the machine's Spark Connect server (core/spark_server.py).")
        parser.add_argument("action", choices=("start", "status", "stop"))
        parser.add_argument("--config", default=None, help="config file whose [spark] section the server follows")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="dotted override, e.g. spark.master=local[4] (repeatable)")
        args = parser.parse_args(args_list)
        setup_logging()
        if args.action == "start":
            print(ensure_server(load_config(args.config, parse_overrides(args.set)).spark).url)
        elif args.action == "status":
            for folder, record, running in servers():
                print(f"{'running' if running else 'stopped'}  sc://127.0.0.1:{record['port']}  pid {record['pid']}  "
                      f"{record.get('master', '?')}  {folder / LOG}")
        else:
            print(f"stopped {stop_all()} Spark Connect server(s)")
        return 0

    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
