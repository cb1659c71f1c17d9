#!/usr/bin/env bash
# The run command: simulate the default world and run the daily DAG end to end (see scripts/demo.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
source scripts/bootstrap.sh
bash scripts/install_system_deps.sh
exec python scripts/demo.py "$@"
