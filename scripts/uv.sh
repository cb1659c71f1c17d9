# Source me (scripts/bootstrap.sh and scripts/lock.sh do): defines UV, the project's pinned uv,
# installed once per machine with pip into ${CSCNN_CACHE:-~/.cache/cscnn-pipeline}/uv-<version>,
# and UV_CACHE_DIR, uv's wheel cache beside it (shared by every checkout's .venv).
# shellcheck shell=bash
CSCNN_UV_VERSION=0.13.9
_cscnn_cache="${CSCNN_CACHE:-$HOME/.cache/cscnn-pipeline}"
UV="$_cscnn_cache/uv-$CSCNN_UV_VERSION/bin/uv"
if [ ! -x "$UV" ]; then
  _cscnn_python="${CSCNN_PYTHON:-python3.11}"
  command -v "$_cscnn_python" >/dev/null || { echo "uv.sh: $_cscnn_python not found; set CSCNN_PYTHON to a Python 3.11" >&2; return 1; }
  echo "uv.sh: installing uv $CSCNN_UV_VERSION into $_cscnn_cache/uv-$CSCNN_UV_VERSION" >&2
  rm -rf "$_cscnn_cache/uv-$CSCNN_UV_VERSION"
  mkdir -p "$_cscnn_cache"
  "$_cscnn_python" -m venv "$_cscnn_cache/uv-$CSCNN_UV_VERSION" \
    && "$_cscnn_cache/uv-$CSCNN_UV_VERSION/bin/pip" install -q "uv==$CSCNN_UV_VERSION" \
    || { rm -rf "$_cscnn_cache/uv-$CSCNN_UV_VERSION"; echo "uv.sh: could not install uv $CSCNN_UV_VERSION" >&2; return 1; }
fi
export UV_CACHE_DIR="${UV_CACHE_DIR:-$_cscnn_cache/uv-cache}"
unset _cscnn_cache _cscnn_python
