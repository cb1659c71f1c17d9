#!/usr/bin/env bash
# The local Airflow UI on http://127.0.0.1:8080 (SQLite, LocalExecutor, this repo's DAGs).
#
#     scripts/airflow_ui.sh start     # migrate the DB, start, wait until healthy, print login
#     scripts/airflow_ui.sh status
#     scripts/airflow_ui.sh stop      # stops every process it started (one process group), and the
#                                     # Spark Connect server its tasks started (core/spark_server.py)
#
# The components of `airflow standalone` (api-server, scheduler, dag-processor, triggerer) run
# as one process group started with setsid, so `stop` ends exactly them. They are started one
# by one rather than through `airflow standalone` because Airflow 3.3 cannot bind the
# scheduler's and triggerer's log servers to 127.0.0.1: they are skipped (--skip-serve-logs);
# the API server reads the local task logs directly. Login: user "admin" with a password
# generated on first start into the simple auth manager's password file (never a default one).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/airflow_env.sh
. "$here/airflow_env.sh"

pid_file="$AIRFLOW_HOME/airflow-ui.pid"
log_file="$AIRFLOW_HOME/airflow-ui.log"
password_file="$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
url="$AIRFLOW__API__BASE_URL"
start_timeout="${CSCNN_AIRFLOW_START_TIMEOUT:-180}"

running_pgid() {
  [ -f "$pid_file" ] || return 1
  local pgid
  pgid="$(cat "$pid_file")"
  if [ -n "$pgid" ] && kill -0 -- "-$pgid" 2>/dev/null; then
    echo "$pgid"
    return 0
  fi
  return 1
}

ensure_password() {
  # The simple auth manager reads {"user": "password"}; write a random one before it can
  # generate (and print to the log) its own.
  if [ ! -s "$password_file" ]; then
    (umask 077 && python - "$password_file" <<'PY'
import json, secrets, sys
with open(sys.argv[1], "w") as f:
    json.dump({"admin": secrets.token_urlsafe(18)}, f)
PY
    )
  fi
  chmod 600 "$password_file"
}

start() {
  if pgid="$(running_pgid)"; then
    echo "Airflow already running (process group $pgid): $url"
    return 0
  fi
  if python - "$AIRFLOW__API__PORT" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
  then
    echo "port $AIRFLOW__API__PORT on 127.0.0.1 is taken by another process; set CSCNN_AIRFLOW_PORT" >&2
    exit 1
  fi
  ensure_password
  cd "$CSCNN_REPO_ROOT"  # relative storage paths of the config resolve against the repo root
  echo "Migrating the metadata DB in $AIRFLOW_HOME ..."
  airflow db migrate >>"$log_file" 2>&1 || { echo "airflow db migrate failed; see $log_file" >&2; exit 1; }
  rm -f "$pid_file"
  # The session leader writes its own pid: it is the process group id `stop` signals.
  CSCNN_PID_FILE="$pid_file" setsid bash -c '
    echo $$ >"$CSCNN_PID_FILE"
    airflow api-server --host 127.0.0.1 --port "$AIRFLOW__API__PORT" &
    airflow scheduler --skip-serve-logs &
    airflow dag-processor &
    airflow triggerer --skip-serve-logs &
    wait
  ' >>"$log_file" 2>&1 </dev/null &
  local waited=0
  for _ in $(seq 1 50); do [ -s "$pid_file" ] && break; sleep 0.2; done
  [ -s "$pid_file" ] || { echo "Airflow failed to start; see $log_file" >&2; exit 1; }
  until curl -fsS "$url/api/v2/monitor/health" >/dev/null 2>&1; do
    if ! running_pgid >/dev/null; then
      echo "Airflow exited during start; see $log_file" >&2
      exit 1
    fi
    if [ "$waited" -ge "$start_timeout" ]; then
      echo "Airflow did not answer on $url within ${start_timeout}s; see $log_file" >&2
      stop
      exit 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
  echo "Airflow UI: $url (user: admin; password in $password_file)"
  echo "Logs: $log_file; stop with: scripts/airflow_ui.sh stop"
}

stop() {
  local pgid
  if ! pgid="$(running_pgid)"; then
    echo "Airflow is not running"
    rm -f "$pid_file"
    return 0
  fi
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 -- "-$pgid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 -- "-$pgid" 2>/dev/null; then
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
  echo "Airflow stopped (process group $pgid)"
  # The Spark Connect server its tasks started (core/spark_server.py) runs in a session of its own.
  python -m core.spark_server stop || true
  python -m core.stage_runner stop || true  # the warm Python its tasks ran their stages in
}

status() {
  if pgid="$(running_pgid)"; then
    echo "Airflow running (process group $pgid): $url"
  else
    echo "Airflow is not running"
    return 1
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
