#!/usr/bin/env bash
# Builds the zip that spark-submit ships to a cluster with --py-files: the project's import
# packages (those pyproject.toml installs; a wheel of the project, renamed .zip because Spark puts
# only .zip/.egg files on the executors' sys.path). Third-party packages are not in it: the
# cluster's Python must have requirements.lock.txt installed.
#   scripts/build_pyfiles.sh                  # -> dist/cscnn_pipeline.zip
#   scripts/build_pyfiles.sh /shared/cscnn.zip
#   export CSCNN_SPARK_PY_FILES="$PWD/dist/cscnn_pipeline.zip"   # what the DAG's stages then ship
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${1:-$here/dist/cscnn_pipeline.zip}")"
source "$here/scripts/uv.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Built from a copy of what the wheel is made of (the packaging files and every top-level package
# folder), so nothing stale in an old build/ folder (a module moved or deleted since) gets in.
mkdir "$work/src"
(cd "$here" && tar --exclude=__pycache__ -cf - pyproject.toml README.md requirements.in requirements-test.in \
   $(dirname */__init__.py)) | tar -C "$work/src" -xf -
"$UV" build -q --wheel --out-dir "$work" "$work/src"
wheels=("$work"/cscnn_pipeline-*.whl)
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || { echo "build_pyfiles: expected one wheel in $work" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
mv "${wheels[0]}" "$out"
echo "$out"
