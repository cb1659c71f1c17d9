"""Connection arguments for Airflow's SQLite metadata database (scripts/airflow_env.sh).

With SQLite every writer takes one database-wide lock. The scheduler, the DAG processor, the API
server and a command such as `airflow backfill create` all write, and two things make a writer
fail with `database is locked` instead of waiting its turn:

* Python's sqlite3 gives up on a held lock after 5 seconds; on a busy two-core machine the
  scheduler's loop can hold it longer. `BUSY_TIMEOUT_S` raises the wait.
* No wait helps a transaction that read before it wrote. SQLAlchemy's `Session.begin_nested()`
  (Airflow's backfill creation uses it around each run) emits `SAVEPOINT`, which SQLite starts as
  a deferred transaction: the first SELECT pins a snapshot of the WAL, and when the INSERT then
  asks for the write lock after another process has committed, SQLite refuses at once
  (SQLITE_BUSY_SNAPSHOT; the busy handler is never called). `ImmediateSavepointConnection`
  opens such a transaction with `BEGIN IMMEDIATE`, so it waits for the write lock up front and
  reads a snapshot nobody can invalidate. Plain reads and single writes keep sqlite3's usual
  behaviour.

A deployment that needs concurrent writers uses PostgreSQL, where this module is not used.
Airflow reads these through `[database] sql_alchemy_connect_args` (and `..._async`), which
name an importable dict; `aiosqlite` passes the same keywords on to `sqlite3.connect`.
"""

from __future__ import annotations

import sqlite3

BUSY_TIMEOUT_S = 120.0
"""How long a connection waits for another writer's lock before `database is locked`."""


class ImmediateSavepointCursor(sqlite3.Cursor):
    """A cursor that starts a transaction with `BEGIN IMMEDIATE` when a SAVEPOINT would open it."""

    def execute(self, sql, parameters=(), /):
        if not self.connection.in_transaction and sql.lstrip()[:9].upper() == "SAVEPOINT":
            super().execute("BEGIN IMMEDIATE")
        return super().execute(sql, parameters)


class ImmediateSavepointConnection(sqlite3.Connection):
    """sqlite3 connection whose cursors are `ImmediateSavepointCursor`s."""

    def cursor(self, factory=ImmediateSavepointCursor):
        return super().cursor(factory)


SQLITE_CONNECT_ARGS = {"timeout": BUSY_TIMEOUT_S, "factory": ImmediateSavepointConnection}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": BUSY_TIMEOUT_S, "factory": ImmediateSavepointConnection}
