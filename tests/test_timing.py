"""core.timing: exclusive phase accounting, the record a stage's main writes (also when it fails),
and the launcher's start read from /proc for a real child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from core import timing
from core.records import TimingRecord, read_record


@pytest.fixture
def clock(monkeypatch):
    fresh = timing._Clock()
    monkeypatch.setattr(timing, "_CLOCK", fresh)
    return fresh


def test_a_nested_phase_is_taken_out_of_the_outer_one(clock):
    with timing.phase("writes"):
        time.sleep(0.05)
        with timing.phase("quality"):
            time.sleep(0.10)
    assert clock.totals["quality"] == pytest.approx(0.10, abs=0.04)
    assert clock.totals["writes"] == pytest.approx(0.05, abs=0.04)


def test_timed_charges_every_call_and_an_unknown_phase_is_refused(clock):
    @timing.timed("writes")
    def write():
        time.sleep(0.02)
        return 7

    assert write() + write() == 14
    assert clock.totals["writes"] == pytest.approx(0.04, abs=0.03)
    with pytest.raises(ValueError, match="unknown timing phase 'commit'"):
        with timing.phase("commit"):
            pass


def test_the_phases_add_up_to_the_total():
    rec = timing.build_record("build_window", "2026-02-03", "ok", main_started=100.0, finished=110.0,
                              totals={"spark_session": 3.0, "writes": 2.0, "imports": 0.5},
                              process_started=98.0, launcher_started=95.0)
    assert rec["phases"] == {"launch": 3.0, "imports": 2.5, "spark_session": 3.0, "quality": 0.0,
                             "writes": 2.0, "work": 4.5}
    assert rec["total_s"] == pytest.approx(sum(rec["phases"].values())) == 15.0
    assert rec["startup_s"] == 8.5
    # A launcher that is not older than the process (pid reuse, clock skew) counts as no launch.
    rec = timing.build_record("t", "2026-02-03", "ok", 100.0, 101.0, {}, process_started=99.0,
                              launcher_started=99.5)
    assert rec["phases"]["launch"] == 0.0 and rec["total_s"] == 2.0


def test_stage_timing_writes_the_record_also_when_the_stage_fails(tmp_path, clock):
    path = tmp_path / "runs" / "2026-02-03" / "timings" / "publish.json"
    with pytest.raises(RuntimeError):
        with timing.stage_timing(str(path), "publish", "2026-02-03"):
            with timing.phase("writes"):
                raise RuntimeError("disk full")
    rec = read_record(TimingRecord, str(path))
    assert rec.task == "publish" and rec.status == "failed: RuntimeError"
    assert rec.total_s >= rec.phases["writes"] >= 0
    assert rec.total_s == pytest.approx(sum(rec.phases.values()), abs=0.01)


def test_a_stage_main_run_by_a_launcher_records_the_launch(tmp_path):
    """A real parent process whose command line names models.launch: the child's record counts the
    time from the parent's start (it sleeps before starting the child) as launch."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc: launch and imports are not measured on this system")
    record = tmp_path / "t.json"
    child = textwrap.dedent(f"""
        from core import timing
        with timing.stage_timing({str(record)!r}, "train_model", "2026-02-03"):
            pass
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        time.sleep(1.0)
        sys.exit(subprocess.run([sys.executable, "-c", {child!r}]).returncode)
    """)
    # `-c CODE models.launch`: the marker appears in the parent's /proc cmdline, as for the real launcher.
    proc = subprocess.run([sys.executable, "-c", parent, "models.launch"], cwd=os.getcwd(), timeout=60)
    assert proc.returncode == 0
    rec = json.loads(record.read_text())
    assert rec["phases"]["launch"] >= 0.9, rec
    assert rec["total_s"] >= rec["phases"]["launch"] + rec["phases"]["imports"] - 0.01  # each rounded to ms
