#!/usr/bin/env bash
# The test command: installs what it needs (venv keyed by the lock file, Debian tools for the
# compose and browser tests) and runs the whole suite, on CSCNN_TEST_WORKERS pytest-xdist workers
# (default: the machine's cores, at most 4; each worker has its own Spark JVMs). Extra arguments
# go to pytest, after ours, so they win.
#   ./scripts/test.sh                 # everything (see the README for its time)
#   ./scripts/test.sh -m "not slow"   # the fast tests: no JVM, no Airflow run
#   ./scripts/test.sh tests/ingest    # one folder
#   ./scripts/test.sh -n 0 tests/x.py # in this process, no workers (pdb, -s)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
source scripts/bootstrap.sh
bash scripts/install_system_deps.sh
export CSCNN_LOG_LEVEL="${CSCNN_LOG_LEVEL:-WARNING}"
workers="${CSCNN_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
# loadfile: a module's tests share a worker, so a module-scoped fixture (a DAG run, an Airflow) is
# made once; the module order tests/conftest.py sets (longest first) is kept.
exec python -m pytest -q -p no:cacheprovider --timeout=1200 -n "$workers" --dist loadfile --no-loadscope-reorder \
  "${@:-tests}"
