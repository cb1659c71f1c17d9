#!/usr/bin/env bash
# Source me: makes (once per machine and lock file) and activates the project's venv.
#
# The venv lives outside the clone, keyed by a hash of requirements.lock.txt, so every clone
# and CI run on this machine reuses it while the pins are unchanged:
#   ${CSCNN_CACHE:-~/.cache/cscnn-pipeline}/venv-<hash>
# It also puts the repo root on PYTHONPATH and pins Spark to the loopback interface.
set -euo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_cache="${CSCNN_CACHE:-$HOME/.cache/cscnn-pipeline}"
_hash="$(sha256sum "$_here/requirements.lock.txt" | cut -c1-12)"
CSCNN_VENV="$_cache/venv-$_hash"
_python="${CSCNN_PYTHON:-python3.11}"

if [ ! -f "$CSCNN_VENV/.complete" ]; then
  command -v "$_python" >/dev/null || { echo "bootstrap: $_python not found; set CSCNN_PYTHON to a Python 3.11" >&2; exit 1; }
  command -v java >/dev/null || { echo "bootstrap: java not found; Spark needs a JDK 17 (apt-get install -y openjdk-17-jdk-headless)" >&2; exit 1; }
  echo "bootstrap: creating $CSCNN_VENV (first run on this machine: a few minutes, ~7 GB)" >&2
  rm -rf "$CSCNN_VENV"
  mkdir -p "$_cache"
  "$_python" -m venv "$CSCNN_VENV"
  "$CSCNN_VENV/bin/pip" install -q --upgrade pip
  "$CSCNN_VENV/bin/pip" install -q -r "$_here/requirements.lock.txt"
  touch "$CSCNN_VENV/.complete"
fi
export CSCNN_VENV
export PATH="$CSCNN_VENV/bin:$PATH"
export PYTHONPATH="$_here${PYTHONPATH:+:$PYTHONPATH}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export PYSPARK_PYTHON="$CSCNN_VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$CSCNN_VENV/bin/python"
set +euo pipefail
