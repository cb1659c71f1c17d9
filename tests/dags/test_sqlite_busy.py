"""A command-line write waits for the scheduler's SQLite lock instead of failing.

With SQLite one writer holds the database lock at a time. `airflow backfill create` against a
running scheduler failed on CI with `database is locked` after sqlite3's default 5 s wait;
scripts/airflow_env.sh now sets Airflow's connect args from core.airflow_db. Here another
connection holds the write lock for longer than 5 s while `airflow variables set` runs: with the
project's environment the command waits and succeeds; with the connect args unset (the control)
the same command fails, which shows the lock really was in the way. Airflow's own engine is also
checked to hand out core.airflow_db's connection class (tests/test_airflow_db.py shows what it
changes for a savepoint that reads before it writes, as backfill creation does).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time

import pytest

from core.airflow_db import BUSY_TIMEOUT_S
from tests.dags.conftest import REPO_ROOT

HOLD_S = 30.0


def _airflow(env: dict[str, str], command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f". scripts/airflow_env.sh && {command}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _while_locked(db: str, run):
    """Call run() while another connection holds the database's write lock for HOLD_S seconds."""
    taken = threading.Event()

    def hold():
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(HOLD_S)
        con.execute("ROLLBACK")
        con.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(30)
    try:
        return run()
    finally:
        holder.join()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_cli_write_waits_for_the_lock_and_the_control_without_the_wait_fails(tmp_path):
    assert BUSY_TIMEOUT_S > HOLD_S
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    migrate = _airflow(env, "airflow db migrate")
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    db = str(tmp_path / "airflow" / "airflow.db")

    probe = _airflow(env, "python -c 'from airflow import settings; c = settings.engine.raw_connection(); "
                          "print(type(c.dbapi_connection).__name__)'")
    assert probe.returncode == 0 and probe.stdout.split()[-1] == "ImmediateSavepointConnection", (
        probe.stdout[-1000:] + probe.stderr[-2000:])

    control = _while_locked(db, lambda: _airflow(
        env, "unset AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS && airflow variables set cscnn_probe control"))
    assert control.returncode != 0 and "database is locked" in control.stdout + control.stderr, (
        f"the control did not meet the lock (exit {control.returncode}):\n{control.stderr[-2000:]}")

    started = time.monotonic()
    proc = _while_locked(db, lambda: _airflow(env, "airflow variables set cscnn_probe waited"))
    assert proc.returncode == 0, f"the write failed under the project's settings:\n{proc.stderr[-3000:]}"
    assert time.monotonic() - started >= HOLD_S
    got = _airflow(env, "airflow variables get cscnn_probe")
    assert got.returncode == 0 and got.stdout.strip().splitlines()[-1] == "waited", got.stdout[-2000:]
