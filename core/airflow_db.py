"""Connection arguments for Airflow's SQLite metadata database (scripts/airflow_env.sh).

With SQLite every writer takes one database-wide lock. The scheduler, the DAG processor, the API
server and a command such as `airflow backfill create` all write, and Python's sqlite3 gives up
on a held lock after 5 seconds with `database is locked`: on a busy two-core machine the
scheduler's loop can hold it longer than that, and the command fails. Waiting longer is all a
single-file database can do; a deployment that needs concurrent writers uses PostgreSQL, where
this module is not used.

Airflow reads these through `[database] sql_alchemy_connect_args` (and `..._async`), which
name an importable dict; `aiosqlite` passes the same keywords on to `sqlite3.connect`.
"""

from __future__ import annotations

BUSY_TIMEOUT_S = 120.0
"""How long a connection waits for another writer's lock before `database is locked`."""

SQLITE_CONNECT_ARGS = {"timeout": BUSY_TIMEOUT_S}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": BUSY_TIMEOUT_S}
