"""The warm stage runner (core/stage_runner.py): `run` behaves as `python -m MODULE ARGS` would
(output, exit status, environment, working directory, signals), a killed `run` or a killed runner
leaves no stage running, a fresh checkout's modules are never stale, and nothing listens on a port.

Most tests preload one light module (CSCNN_STAGE_RUNNER_PRELOAD) so that the runner starts in a
fraction of a second; the DAG tests run every stage in a runner with the default preload.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import stage_runner

STAGE = '''
import os, signal, sys, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "X", os.environ.get("X"), flush=True)
print("warm", "colorsys" in sys.modules, "runner code", "core.stage_runner" in sys.modules, flush=True)
print("stdin", sys.stdin.read().strip(), flush=True)
print("to stderr", file=sys.stderr, flush=True)
with open(os.environ["PID_FILE"], "w") as f:
    f.write(str(os.getpid()))
mode = sys.argv[1]
if mode == "exit":
    sys.exit(int(sys.argv[2]))
if mode == "raise":
    raise RuntimeError("stage failed")
if mode == "kill-self":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "term-handler":
    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, on_term)
if mode in ("sleep", "term-handler"):
    with open(os.environ["PID_FILE"] + ".ready", "w") as f:
        f.write("ready")
    time.sleep(300)
'''


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A stage module in a folder of its own, a runner folder of this test, a light preload."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "fake_stage.py").write_text(STAGE)
    monkeypatch.setenv("CSCNN_STAGE_RUNNER_DIR", str(tmp_path / "runners"))
    monkeypatch.setenv("CSCNN_STAGE_RUNNER_PRELOAD", "colorsys")
    e = dict(os.environ, PID_FILE=str(tmp_path / "stage.pid"), X="x-value",
             PYTHONPATH=os.pathsep.join([str(tmp_path / "mods"), os.environ.get("PYTHONPATH", "")]))
    yield e
    stage_runner.stop_all()


def run(env, *args, stdin: bytes = b"from stdin", **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.stage_runner", "run", "fake_stage", *args], env=env,
                          input=stdin, capture_output=True, cwd=Path(env["PID_FILE"]).parent / "mods",
                          timeout=120, **kw)


def start(env, *args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "core.stage_runner", "run", "fake_stage", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(env["PID_FILE"]).parent / "mods")
    ready = Path(env["PID_FILE"] + ".ready")
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def runner_pid() -> int:
    [(_folder, record, running)] = stage_runner.runners()
    assert running
    return int(record["pid"])


def test_run_is_the_command_it_stands_for(env):
    out = run(env, "exit", "3")
    assert out.returncode == 3
    stdout = out.stdout.decode()
    assert "argv ['exit', '3']" in stdout and f"cwd {Path(env['PID_FILE']).parent / 'mods'}" in stdout
    assert "X x-value" in stdout and "stdin from stdin" in stdout
    assert "to stderr" in out.stderr.decode() and "to stderr" not in stdout
    # it ran in a fork of the runner, with the runner's own copy of the project's modules dropped
    assert "runner code False" in stdout
    first = runner_pid()
    assert int(Path(env["PID_FILE"]).read_text()) != first
    again = run(env, "exit", "0")
    assert again.returncode == 0
    assert runner_pid() == first  # found, not started again
    # The runner preloads while no request waits: by the second stage the module is there.
    assert "warm True runner code False" in again.stdout.decode()


def test_pythonpath_and_startup_settings_are_the_run_commands(env, tmp_path):
    """sys.path follows the run command's PYTHONPATH (here the module is found only through it);
    a setting read when an interpreter starts, which a fork cannot change, runs cold."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "only_here.py").write_text("import sys\nprint('found', sys.path[1])\n")
    assert run(env, "exit", "0").returncode == 0  # the runner starts without `elsewhere` on its path
    out = subprocess.run([sys.executable, "-m", "core.stage_runner", "run", "only_here"], capture_output=True,
                         text=True, env={**env, "PYTHONPATH": str(other)}, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"found {other}", out.stderr
    hashed = run({**env, "PYTHONHASHSEED": "123"}, "exit", "0")
    assert hashed.returncode == 0 and "warm False" in hashed.stdout.decode()
    assert "PYTHONHASHSEED='123' differs from the warm runner's None" in hashed.stderr.decode()


def test_exit_status_of_an_exception_and_of_a_signal(env):
    out = run(env, "raise")
    assert out.returncode == 1 and "RuntimeError: stage failed" in out.stderr.decode()
    assert run(env, "kill-self").returncode == 128 + signal.SIGKILL


def test_sigterm_to_run_reaches_the_stage(env):
    proc = start(env, "term-handler")
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 7 and b"got SIGTERM" in stdout


def test_a_killed_run_command_leaves_no_stage_running(env):
    proc = start(env, "sleep")
    child = int(Path(env["PID_FILE"]).read_text())
    assert alive(child)
    proc.kill()
    proc.wait()
    assert gone_within(child, 15)
    assert run(env, "exit", "0").returncode == 0  # the runner itself carries on


def test_a_killed_runner_fails_the_stage_and_the_next_run_starts_a_new_one(env):
    proc = start(env, "sleep")
    child, first = int(Path(env["PID_FILE"]).read_text()), runner_pid()
    os.killpg(first, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1 and b"the runner died" in stderr
    assert gone_within(child, 10)
    assert run(env, "exit", "0").returncode == 0
    assert runner_pid() != first


def test_edited_modules_are_never_stale(env, tmp_path):
    (tmp_path / "mods" / "fake_stage.py").write_text('print("version 1")')
    assert run(env).stdout.decode().strip() == "version 1"
    (tmp_path / "mods" / "fake_stage.py").write_text('print("version 2")')
    assert run(env).stdout.decode().strip() == "version 2"


def test_cold_runs_a_new_interpreter_and_starts_no_runner(env):
    out = run({**env, "CSCNN_STAGE_RUNNER": "cold"}, "exit", "4")
    assert out.returncode == 4 and "warm False" in out.stdout.decode()
    assert stage_runner.runners() == []


def test_the_runner_listens_on_a_private_unix_socket_only(env):
    assert run(env, "exit", "0").returncode == 0
    [(folder, record, _)] = stage_runner.runners()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / stage_runner.SOCKET).stat().st_mode) == 0o600
    inodes = {os.readlink(f"/proc/{record['pid']}/fd/{fd}")[8:-1]
              for fd in os.listdir(f"/proc/{record['pid']}/fd")
              if os.readlink(f"/proc/{record['pid']}/fd/{fd}").startswith("socket:[")}
    unix = {line.split()[6] for line in Path("/proc/net/unix").read_text().splitlines()[1:]}
    assert inodes and inodes <= unix  # every socket it holds is a Unix socket: no TCP or UDP port
    status = subprocess.run([sys.executable, "-m", "core.stage_runner", "status"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert f"running  pid {record['pid']}" in status.stdout
    stopped = subprocess.run([sys.executable, "-m", "core.stage_runner", "stop"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert stopped.stdout.strip() == "stopped 1 stage runner(s)" and gone_within(int(record["pid"]), 10)


def test_an_idle_runner_exits_and_the_next_run_starts_one(env):
    env = {**env, "CSCNN_STAGE_RUNNER_IDLE_S": "1"}
    assert run(env, "exit", "0").returncode == 0
    [(_folder, record, _)] = stage_runner.runners()
    assert gone_within(int(record["pid"]), 15)
    assert run(env, "exit", "5").returncode == 5


def test_run_without_a_module_is_a_one_line_error(env):
    out = subprocess.run([sys.executable, "-m", "core.stage_runner", "run"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == "error: usage: python -m core.stage_runner run MODULE [ARG ...]"
