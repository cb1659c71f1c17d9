"""core/standalone.py's command line without a cluster, and stopping a process group this process
started (tests/cluster/test_standalone.py starts a real cluster and runs the stages on it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from core.spark_server import _kill
from tests.dags.conftest import REPO_ROOT


def _cli(*args: str, state: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CSCNN_STANDALONE_DIR=state)
    return subprocess.run([sys.executable, "-m", "core.standalone", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_and_stop_without_a_cluster(tmp_path):
    status = _cli("status", state=str(tmp_path))
    assert status.returncode == 0 and status.stdout.strip() == "not running"
    stopped = _cli("stop", state=str(tmp_path))
    assert stopped.returncode == 0 and stopped.stdout.strip() == "no standalone cluster was running"


def test_a_bad_core_count_is_one_line_naming_it(tmp_path):
    out = _cli("start", "--cores", "0", state=str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "--cores must be >= 1, got 0" in out.stderr
    assert not list(tmp_path.iterdir())  # nothing was started or recorded


def test_stopping_a_group_this_process_started_does_not_wait_for_its_zombie():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started = time.monotonic()
    _kill(proc.pid, timeout=20.0)
    # Without reaping, the leader's zombie keeps the group alive until the 20 s SIGTERM wait ends.
    assert time.monotonic() - started < 10.0
    assert proc.wait(timeout=1) is not None
