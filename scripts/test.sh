#!/usr/bin/env bash
# The test command: installs what it needs (venv keyed by the lock file, Debian tools for the
# compose and browser tests) and runs the whole suite. Extra arguments go to pytest.
#   ./scripts/test.sh                 # everything (see the README for its time)
#   ./scripts/test.sh tests/ingest    # one folder
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
source scripts/bootstrap.sh
bash scripts/install_system_deps.sh
export CSCNN_LOG_LEVEL="${CSCNN_LOG_LEVEL:-WARNING}"
exec python -m pytest -q -p no:cacheprovider --timeout=1200 "${@:-tests}"
