#!/usr/bin/env bash
# Source me: makes (once per checkout and lock file) and activates the project's venv.
#
# The venv is <checkout>/.venv (ignored by git), one per clone, because it holds this clone
# installed in editable mode (`pip install -e .`): `import core` (and spark_jobs, models, ...)
# works in every Python of the venv (spark-submit's driver and workers, torchrun, airflow)
# without PYTHONPATH. It is made by uv (scripts/uv.sh) with exactly the pins of
# requirements.lock.txt (`uv pip sync`), then the project without dependencies. uv's wheel cache,
# ${CSCNN_CACHE:-~/.cache/cscnn-pipeline}/uv-cache, is shared by every clone on the machine and
# hardlinked into each venv (same filesystem; uv copies otherwise), so a second clone's venv
# takes seconds and almost no disk; the first one on a machine downloads ~4 GB (minutes).
#
# .venv/.cscnn-stamp records what the venv was made from: a changed lock file (its hash), Python
# or checkout path rebuilds the venv; a changed pyproject.toml or set of top-level packages
# only reinstalls the project. Also pins Spark to the loopback interface and the venv's Python.
_cscnn_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CSCNN_VENV="$_cscnn_here/.venv"

_cscnn_build_venv() (
  set -euo pipefail
  here="$_cscnn_here" venv="$CSCNN_VENV"
  python="${CSCNN_PYTHON:-python3.11}"
  command -v "$python" >/dev/null || { echo "bootstrap: $python not found; set CSCNN_PYTHON to a Python 3.11" >&2; exit 1; }
  command -v java >/dev/null || { echo "bootstrap: java not found; Spark needs a JDK 17 (apt-get install -y openjdk-17-jdk-headless)" >&2; exit 1; }
  python="$("$python" -c 'import sys; print(sys.executable)')"  # the interpreter itself, not a pyenv shim
  source "$here/scripts/uv.sh"
  deps="lock $(sha256sum "$here/requirements.lock.txt" | cut -c1-12) python $("$python" -c 'import platform; print(platform.python_version())') at $here"
  project="project $(cat "$here/pyproject.toml" "$here/requirements.in" "$here/requirements-test.in" | sha256sum | cut -c1-12) $(cd "$here" && echo */__init__.py)"
  exec 9>"$here/.venv.lock"
  flock 9  # one build at a time per checkout (tests source this script from parallel shells)
  stamp="$venv/.cscnn-stamp"
  if [ "$(sed -n 1p "$stamp" 2>/dev/null)" != "$deps" ]; then
    echo "bootstrap: creating $venv from requirements.lock.txt (the first venv on a machine downloads ~4 GB: minutes)" >&2
    rm -rf "$venv"
    "$UV" venv -q --python "$python" "$venv"
    "$UV" pip sync -q --python "$venv/bin/python" --link-mode=hardlink "$here/requirements.lock.txt"
    printf '%s\n' "$deps" >"$stamp"
  fi
  if [ "$(sed -n 2p "$stamp" 2>/dev/null)" != "$project" ]; then
    "$UV" pip install -q --python "$venv/bin/python" --link-mode=hardlink --no-deps -e "$here"
    printf '%s\n%s\n' "$deps" "$project" >"$stamp"
  fi
)

if _cscnn_build_venv; then
  export CSCNN_VENV
  export PATH="$CSCNN_VENV/bin:$PATH"
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
  export PYSPARK_PYTHON="$CSCNN_VENV/bin/python"
  export PYSPARK_DRIVER_PYTHON="$CSCNN_VENV/bin/python"
  unset -f _cscnn_build_venv
  unset _cscnn_here
else
  unset -f _cscnn_build_venv
  unset _cscnn_here CSCNN_VENV
  echo "bootstrap: the venv was not made (see above)" >&2
  return 1 2>/dev/null || exit 1
fi
