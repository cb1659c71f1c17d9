"""A SQLAlchemy savepoint that reads, then writes, survives another process's commit (core.airflow_db).

This is the shape of Airflow's backfill creation (`session.begin_nested()`, a SELECT for the
latest run, then INSERT dag_run) that failed on CI with `database is locked` while the scheduler
wrote. With sqlite3's own connection the savepoint's deferred transaction pins a WAL snapshot, the
other process commits, and the INSERT is refused at once whatever the busy timeout (the control).
With core.airflow_db's connect args the savepoint takes the write lock first: the other writer
waits its turn instead, and both rows land.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.airflow_db import SQLITE_CONNECT_ARGS, ImmediateSavepointConnection


def _database(tmp_path) -> str:
    db = str(tmp_path / "airflow.db")
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")  # as Airflow's connect handler sets it
    con.execute("CREATE TABLE dag_run (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT)")
    con.commit()
    con.close()
    return db


def _other_process_writes(db: str, done: list[float]) -> None:
    con = sqlite3.connect(db, timeout=30)
    con.execute("INSERT INTO dag_run (who) VALUES ('scheduler')")
    con.commit()
    con.close()
    done.append(time.monotonic())


def _backfill_shaped_transaction(db: str, connect_args: dict, *, pause_s: float):
    """Read inside a savepoint, let another connection write meanwhile, then insert."""
    engine = create_engine(f"sqlite:///{db}", connect_args=connect_args)
    done: list[float] = []
    other = threading.Thread(target=_other_process_writes, args=(db, done))
    try:
        with Session(engine) as session:
            with session.begin_nested():
                session.execute(text("SELECT count(*) FROM dag_run")).scalar_one()
                other.start()
                time.sleep(pause_s)  # the other writer commits now, or queues behind us
                session.execute(text("INSERT INTO dag_run (who) VALUES ('backfill')"))
            session.commit()
            committed = time.monotonic()
    finally:
        other.join(60)
        engine.dispose()
    return committed, done


def test_the_control_without_the_project_connection_is_refused_at_once(tmp_path):
    db = _database(tmp_path)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="database is locked"):
        _backfill_shaped_transaction(db, {"timeout": 30}, pause_s=1.0)
    assert time.monotonic() - started < 20, "refused at once, not after the busy timeout"


def test_a_savepoint_takes_the_write_lock_first_and_the_other_writer_waits(tmp_path):
    db = _database(tmp_path)
    assert SQLITE_CONNECT_ARGS["factory"] is ImmediateSavepointConnection
    committed, done = _backfill_shaped_transaction(db, SQLITE_CONNECT_ARGS, pause_s=1.0)
    assert len(done) == 1 and done[0] >= committed, "the other writer went after the savepoint's commit"
    con = sqlite3.connect(db)
    rows = [who for (who,) in con.execute("SELECT who FROM dag_run ORDER BY id")]
    con.close()
    assert rows == ["backfill", "scheduler"]


def test_plain_reads_and_writes_keep_sqlite3_behaviour(tmp_path):
    db = _database(tmp_path)
    con = sqlite3.connect(db, **SQLITE_CONNECT_ARGS)
    con.execute("SELECT count(*) FROM dag_run").fetchall()
    assert not con.in_transaction, "a read outside a savepoint must not hold the write lock"
    con.execute("INSERT INTO dag_run (who) VALUES ('cli')")
    assert con.in_transaction
    con.commit()
    assert not con.in_transaction
    con.close()
