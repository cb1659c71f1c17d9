#!/usr/bin/env bash
# Regenerates requirements.lock.txt (every transitive pin, Python 3.11 on Linux x86_64) from the
# top-level requirements.in and requirements-test.in. uv keeps the pins already in the lock
# where they still satisfy the inputs; extra arguments go to `uv pip compile`:
#   scripts/lock.sh                          # after editing requirements*.in
#   scripts/lock.sh --upgrade-package numpy  # move one pin to its newest allowed version
#   scripts/lock.sh --upgrade                # every pin to its newest allowed version
# A new lock means a new venv: scripts/bootstrap.sh rebuilds .venv when the lock's hash changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/uv.sh
exec "$UV" pip compile requirements.in requirements-test.in \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command scripts/lock.sh \
  -o requirements.lock.txt "$@"
