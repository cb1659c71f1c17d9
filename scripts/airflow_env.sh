# Environment of the local Airflow used by tests and demos. Source it, do not run it:
#
#     . scripts/airflow_env.sh
#
# Sets AIRFLOW_HOME (default <repo>/var/airflow, ignored by git), a SQLite metadata DB with the
# LocalExecutor, this repo's dags/ and plugins/ folders, loopback-only servers and the
# spark_default connection (local[*]). Values already in the environment win where noted.
# shellcheck shell=bash

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "scripts/airflow_env.sh must be sourced: . scripts/airflow_env.sh" >&2
  exit 2
fi

CSCNN_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CSCNN_REPO_ROOT

# The project's venv (<repo>/.venv, as scripts/bootstrap.sh makes it, with this repo installed
# in it) puts airflow, spark-submit and torchrun on PATH. CSCNN_VENV overrides it.
export CSCNN_VENV="${CSCNN_VENV:-$CSCNN_REPO_ROOT/.venv}"
if [ -x "$CSCNN_VENV/bin/airflow" ]; then
  case ":$PATH:" in *":$CSCNN_VENV/bin:"*) ;; *) export PATH="$CSCNN_VENV/bin:$PATH" ;; esac
else
  echo "airflow_env.sh: no airflow in $CSCNN_VENV/bin; set CSCNN_VENV to the project's venv" >&2
fi

export AIRFLOW_HOME="${AIRFLOW_HOME:-$CSCNN_REPO_ROOT/var/airflow}"
mkdir -p "$AIRFLOW_HOME"

export AIRFLOW__CORE__DAGS_FOLDER="$CSCNN_REPO_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$CSCNN_REPO_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
# SQLite has one lock for all writers: wait for it up to core.airflow_db.BUSY_TIMEOUT_S instead of
# sqlite3's 5 s, and take it first in a savepoint that opens a transaction (a CLI command racing
# the scheduler otherwise fails with `database is locked`; core/airflow_db.py says why).
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=core.airflow_db.SQLITE_CONNECT_ARGS
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC=core.airflow_db.SQLITE_CONNECT_ARGS_ASYNC

# Servers on the loopback interface only. Airflow 3.3 has no setting for the bind address of
# the worker/triggerer log servers (they listen on all interfaces); scripts/airflow_ui.sh
# therefore starts the scheduler and triggerer with --skip-serve-logs: with the LocalExecutor
# the API server reads task logs from the local log folder. The ports are still pinned here.
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="${CSCNN_AIRFLOW_PORT:-8080}"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW__API__PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT:-8793}"
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT:-8794}"
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=127.0.0.1

# Spark through spark-submit; a cluster only changes this connection (and CSCNN_SPARK_CONF).
if [ -z "${AIRFLOW_CONN_SPARK_DEFAULT:-}" ]; then
  export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]", "extra": {"deploy-mode": "client"}}'
fi
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
