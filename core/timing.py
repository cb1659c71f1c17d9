"""Where a stage's time goes: one small record per task and run date.

    <artifacts>/runs/<D>/timings/<task>.json
    {"task": "build_window", "run_date": "2026-02-03", "status": "ok", "total_s": 21.4,
     "phases": {"launch": 3.1, "imports": 2.2, "spark_session": 6.0, "work": 7.9, "writes": 2.2}, ...}

The phases add up to `total_s`, each second counted once (time in a phase nested inside another
is taken out of the outer one):

    launch         the launcher (spark-submit's JVM, models.launch) until this interpreter started
    imports        this interpreter's start until the stage's main ran (module imports), plus
                   heavy imports a stage makes later in `phase("imports")` (torch, on first use)
    spark_session  building the SparkSession: the JVM's gateway, Delta's jars, the session itself
    writes         Delta and file writes, with the lazy Spark work they trigger (a Delta write
                   computes the plan it writes), so a stage that writes once shows most of its
                   Spark work here
    quality        running Great Expectations suites (context, validation, Data Docs)
    work           everything else the stage does

Start-up is `launch + imports + spark_session`. The Airflow task around the stage (its own
process start, spark-submit's argument handling before the JVM) is not seen here; the task's
duration in Airflow minus `total_s` is that part (bench/daily_overhead.py reports it).

A retry overwrites the record: it describes the last attempt. Process start times come from
/proc (Linux); elsewhere `launch` and `imports` are 0 and the record starts at the stage's main.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import socket
import time
from typing import Any, Callable, Iterator, TypeVar

from core import storage

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

PHASES = ("launch", "imports", "spark_session", "quality", "writes", "work")
# Command-line markers of the processes that launch a stage's interpreter.
LAUNCHERS = ("org.apache.spark.deploy.SparkSubmit", "models.launch")


def _proc_start_time(pid: int | str = "self") -> float | None:
    """Unix time at which process `pid` started, from /proc; None where /proc is not there.

    Its age is measured on the boot clock (/proc/uptime and the process's starttime, both in
    seconds since boot), then taken from time.time(): /proc/stat's btime is rounded to the second."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # Field 22 (starttime, in clock ticks since boot); fields after the ")" of the command name.
    fields = stat.rsplit(")", 1)[1].split()
    return time.time() - (uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


def _launcher_start_time() -> float | None:
    """Start time of the parent process when it is a stage launcher (spark-submit's JVM, models.launch)."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            cmdline = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return _proc_start_time(ppid) if any(m in cmdline for m in LAUNCHERS) else None


class _Clock:
    """Exclusive time per phase in this process (a stack: the innermost open phase is charged)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list[Any]] = []  # [name, start, seconds spent in nested phases]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in PHASES:
            raise ValueError(f"unknown timing phase {name!r}; allowed: {', '.join(PHASES)}")
        entry = [name, time.perf_counter(), 0.0]
        self._stack.append(entry)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - entry[1]
            self.totals[name] = self.totals.get(name, 0.0) + elapsed - entry[2]
            if self._stack:
                self._stack[-1][2] += elapsed


_CLOCK = _Clock()


def phase(name: str) -> contextlib.AbstractContextManager[None]:
    """`with phase("writes"): ...` charges the block's time to `name` in this process's record."""
    return _CLOCK.phase(name)


def timed(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is charged to phase `name` (see `phase`)."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _CLOCK.phase(name):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def build_record(task: str, run_date: str, status: str, main_started: float, finished: float,
                 totals: dict[str, float], process_started: float | None,
                 launcher_started: float | None) -> dict[str, Any]:
    """The record's JSON object (see the module docstring); `work` is what no other phase took."""
    process_started = process_started if process_started is not None and process_started <= main_started \
        else main_started
    launcher_started = launcher_started if launcher_started is not None and launcher_started <= process_started \
        else process_started
    phases = {"launch": process_started - launcher_started,
              "imports": main_started - process_started + totals.get("imports", 0.0)}
    phases.update({k: totals.get(k, 0.0) for k in PHASES if k not in ("launch", "imports", "work")})
    phases["work"] = max(0.0, (finished - main_started) - sum(totals.get(k, 0.0) for k in PHASES if k != "work"))
    total = finished - launcher_started
    return {
        "task": task, "run_date": run_date, "status": status,
        "started_at": dt.datetime.fromtimestamp(launcher_started, dt.timezone.utc).isoformat(),
        "finished_at": dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(),
        "total_s": round(total, 3), "startup_s": round(phases["launch"] + phases["imports"]
                                                       + phases["spark_session"], 3),
        "phases": {k: round(phases[k], 3) for k in PHASES},
        "pid": os.getpid(), "host": socket.gethostname(),
    }


@contextlib.contextmanager
def stage_timing(record_path: str | None, task: str, run_date: str) -> Iterator[None]:
    """Time the stage's main and write its record to `record_path` (a local path or an object
    storage URI, core.storage) when it ends, also when it fails (status "failed: <exception
    type>"). None: time nothing. A record that cannot be written is a warning, never the stage's
    failure."""
    main_started = time.time()
    status = "ok"
    try:
        yield
    except BaseException as err:
        status = f"failed: {type(err).__name__}"
        raise
    finally:
        if record_path is not None:
            record = build_record(task, run_date, status, main_started, time.time(), dict(_CLOCK.totals),
                                  _proc_start_time(), _launcher_start_time())
            try:
                storage.write_json(record_path, record, sort_keys=False)
            except OSError as err:
                log.warning("could not write the timing record %s: %s", record_path, err)
            log.info("%s took %.1f s (start-up %.1f s: %s)", task, record["total_s"], record["startup_s"],
                     ", ".join(f"{k} {v:.1f}" for k, v in record["phases"].items() if v >= 0.05))
