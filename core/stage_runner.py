"""A warm Python for the stages: a fork server that has the heavy libraries imported already.

    python -m core.stage_runner run MODULE [ARG ...]   # as `python -m MODULE ARG ...`, in a fork of the warm process
    python -m core.stage_runner start                  # start it (or find it running)
    python -m core.stage_runner status                 # every runner of this state folder, one line each
    python -m core.stage_runner stop                   # stop them (stages running in them are stopped too)

A stage that starts a fresh interpreter pays, every time, for importing Great Expectations (~6 s
on two cores), torch (~3 s), pandas, pyarrow and pyspark's Connect client: on small data more than
the stage's own work. The runner imports those once (`PRELOAD`, third-party modules only) and then
forks a child per stage. The child is the stage's process in every way that matters:

* its stdin, stdout and stderr are the `run` command's own (passed over the socket), so the output
  reaches the task log as before;
* it gets the `run` command's working directory, environment and arguments, a session of its own,
  and Python's default signal handlers; its `sys.path` is the one `python -m` builds (the working
  directory, then the `run` command's PYTHONPATH, then the interpreter's own entries); and it
  imports the project's modules fresh (the runner's own copies of project modules are dropped in
  the child, so an edited checkout is never stale);
* its exit status is the `run` command's exit status (a signal N: 128 + N, as a shell reports it);
* SIGTERM or SIGINT to the `run` command is passed on to the child's process group, and a `run`
  command that disappears (SIGKILL, a killed task) has its child's process group killed.

`run` starts the runner when none is running (under a file lock, in a session of its own: the
task that started it may end) and finds it afterwards by its record (pid checked to be a runner,
socket answering). When the runner cannot be started, or CSCNN_STAGE_RUNNER=cold, `run` executes
`python -m MODULE ARG ...` itself: slower, never different. So does a `run` command whose
environment differs from the runner's in a variable read only when an interpreter or a preloaded
library starts (`STARTUP_ENV`: PYTHONHASHSEED, PYTHONWARNINGS, OMP_NUM_THREADS, ...): a fork
could not honour it. The socket is a Unix socket in a
folder only its user can enter (0700, the socket 0600): the runner listens on no network port.

<state> is CSCNN_STAGE_RUNNER_DIR, else ~/.cache/cscnn-pipeline/stage-runner; a runner's folder
<state>/<key> is named by a hash of this interpreter, its site-packages (a reinstalled venv gets a
new runner) and the modules it preloads (`PRELOAD`, or CSCNN_STAGE_RUNNER_PRELOAD: a comma-separated
list; the tests use a light one). The runner listens before it preloads, and imports those modules one
at a time while no request waits: the first stage of a fresh runner is forked at once and imports
what it needs itself, instead of waiting ~10 s for libraries it may not use (ingest uses neither
Great Expectations nor torch); later stages find them imported. Standard library and core.files
only at import time, so `run` itself starts in ~50 ms.
A runner with no stage running for CSCNN_STAGE_RUNNER_IDLE_S seconds (default 3600) exits; the
next `run` starts a new one. The runner forks while only the libraries' own native thread pools exist (OpenBLAS, jemalloc),
which handle fork; it never runs torch, Spark or GX work itself.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import importlib
import json
import logging
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from core.files import locked, state_folder

log = logging.getLogger("core.stage_runner")

PRELOAD = ("numpy", "pandas", "pyarrow", "pyarrow.parquet", "PIL.Image", "pyspark.sql.connect.session",
           "great_expectations", "torch")
DEFAULT_STATE_DIR = "~/.cache/cscnn-pipeline/stage-runner"
MARKER = "core.stage_runner serve"  # in the runner's command line: `python -m core.stage_runner serve`
SOCKET, RECORD, LOG = "runner.sock", "runner.json", "runner.log"
START_TIMEOUT_S = 120.0  # it answers before it preloads: seconds, more on a cold page cache
KILL_GRACE_S = 10.0
DEFAULT_IDLE_S = 3600.0
MAX_REQUEST = 1 << 20
_LEN = struct.Struct("!I")
# Read when an interpreter or a preloaded library starts, so a fork cannot take another value.
STARTUP_ENV = ("PYTHONHOME", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONOPTIMIZE",
               "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONDEVMODE", "PYTHONMALLOC",
               "PYTHONFAULTHANDLER", "PYTHONTRACEMALLOC", "PYTHONPLATLIBDIR", "PYTHONDONTWRITEBYTECODE",
               "PYTHONINTMAXSTRDIGITS", "PYTHONVERBOSE", "PYTHONINSPECT", "LD_PRELOAD", "LD_LIBRARY_PATH",
               "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ARROW_DEFAULT_MEMORY_POOL")


class RunnerError(RuntimeError):
    """The runner could not be started or reached (the message says why, and names its log)."""


def state_dir() -> Path:
    """Where the runners' sockets, records and logs live (CSCNN_STAGE_RUNNER_DIR, else a per-user cache)."""
    return state_folder("CSCNN_STAGE_RUNNER_DIR", DEFAULT_STATE_DIR)


def preload() -> tuple[str, ...]:
    """The modules the runner imports before it forks (CSCNN_STAGE_RUNNER_PRELOAD, else PRELOAD)."""
    value = os.environ.get("CSCNN_STAGE_RUNNER_PRELOAD")
    return PRELOAD if value is None else tuple(m.strip() for m in value.split(",") if m.strip())


def runner_key() -> str:
    """Names the runner this interpreter needs: its path, its site-packages' state and preload()."""
    site = sysconfig.get_paths()["purelib"]
    try:
        site_mtime = os.stat(site).st_mtime_ns
    except OSError:
        site_mtime = 0
    what = {"python": sys.executable, "site": site, "site_mtime": site_mtime, "preload": preload()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def runner_folder() -> Path:
    return state_dir() / runner_key()


# ----------------------------------------------------------------------------- messages

def _send(conn: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    payload = _LEN.pack(len(data)) + data
    if fds:
        socket.send_fds(conn, [payload], fds)
    else:
        conn.sendall(payload)


def _recv_exact(conn: socket.socket, n: int, fds: list[int]) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk, got, _flags, _addr = socket.recv_fds(conn, n - len(buf), 8)
        fds.extend(got)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def _recv(conn: socket.socket) -> tuple[Any, list[int]]:
    """One message and the file descriptors that came with it."""
    fds: list[int] = []
    (n,) = _LEN.unpack(_recv_exact(conn, _LEN.size, fds))
    if n > MAX_REQUEST:
        raise ValueError(f"message of {n} bytes (at most {MAX_REQUEST})")
    return json.loads(_recv_exact(conn, n, fds)), fds


# ----------------------------------------------------------------------------- the runner

def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _project_packages() -> set[str]:
    """The project's top-level packages: the folders with an __init__.py beside `core`."""
    root = Path(__file__).resolve().parent.parent
    return {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}


def _project_modules(packages: set[str]) -> list[str]:
    """Names of loaded modules of the project's packages (the runner's own copies)."""
    return [name for name in list(sys.modules) if name.split(".", 1)[0] in packages]


def _pythonpath(env: dict[str, str]) -> list[str]:
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _child(request: dict[str, Any], fds: list[int], packages: set[str], base_path: list[str]) -> NoReturn:
    """In the forked child: become the stage's process and run it; never returns."""
    code = 1
    try:
        os.setsid()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name in _project_modules(packages):
            del sys.modules[name]
        for handler in list(logging.getLogger().handlers):  # the runner's; the stage sets up its own
            logging.getLogger().removeHandler(handler)
        for handler in list(log.handlers):
            log.removeHandler(handler)
        log.propagate = True
        if request["env"].get("PYTHONUNBUFFERED"):
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(write_through=True)
        sys.path[:] = [request["cwd"], *_pythonpath(request["env"]), *base_path]  # as `python -m` builds it
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as err:
            if err.code is None:
                code = 0
            elif isinstance(err.code, int):
                code = err.code
            else:
                print(err.code, file=sys.stderr)
                code = 1
        except BaseException:  # what Python prints for an uncaught exception, and its exit code
            traceback.print_exc()
            code = 1
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
    finally:
        os._exit(code & 0xFF)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def serve(folder: Path) -> None:
    """The runner's main loop: preload, listen on <folder>/runner.sock, fork a child per request."""
    handler = logging.FileHandler(folder / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    started = time.monotonic()
    modules = preload()
    pending = list(modules)  # imported one at a time while no request waits (see the loop)
    packages = _project_packages()
    own = set(_pythonpath(dict(os.environ)))
    base_path = [p for p in sys.path[1:] if p not in own]  # the interpreter's own entries (stdlib, site)
    path = folder / SOCKET
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    listener.setblocking(False)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    record = {"pid": os.getpid(), "socket": str(path), "started_at": time.time(), "preload_s": None,
              "python": sys.executable, "startup_env": {k: os.environ.get(k) for k in STARTUP_ENV}}
    _write_record(folder, record)
    log.info("runner %d up; preloading %s between requests", os.getpid(), ", ".join(modules) or "nothing")
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    wake_r, wake_w = socket.socketpair()  # a child's exit (SIGCHLD) wakes the loop at once
    for s in (wake_r, wake_w):
        s.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    children: dict[int, socket.socket] = {}  # child pid -> its run command's connection
    doomed: dict[int, float] = {}  # child pid -> when it was sent SIGTERM (its run command is gone)
    idle_s = float(os.environ.get("CSCNN_STAGE_RUNNER_IDLE_S") or DEFAULT_IDLE_S)
    last_busy = time.monotonic()
    while not stopping:
        if children:
            last_busy = time.monotonic()
        elif time.monotonic() - last_busy > idle_s:
            log.info("runner %d: no stage for %.0f s; exiting", os.getpid(), idle_s)
            break
        events = sel.select(timeout=0 if pending else 0.2)
        if pending and not events:
            # Listening comes first: a request that arrives meanwhile is forked at once (its stage
            # imports what is not preloaded yet itself) instead of waiting for every import.
            _preload_one(pending.pop(0))
            if not pending:
                record["preload_s"] = round(time.monotonic() - started, 2)
                _write_record(folder, record)
                log.info("runner %d: preloaded %s in %.1f s", os.getpid(), ", ".join(modules) or "nothing",
                         record["preload_s"])
        for key, _ in events:
            if key.data == "wake":
                with contextlib.suppress(OSError):
                    wake_r.recv(4096)
            elif key.data is None:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    conn, _ = listener.accept()
                    pid = _start_child(conn, listener, children, packages, base_path)
                    if pid is not None:
                        children[pid] = conn
                        sel.register(conn, selectors.EVENT_READ, pid)
            else:  # a run command's connection is readable: it closed (it sends nothing after its request)
                pid = key.data
                with contextlib.suppress(OSError):
                    if key.fileobj.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        continue
                sel.unregister(key.fileobj)
                if pid in children and pid not in doomed:
                    log.info("the run command of child %d is gone; stopping the child's process group", pid)
                    _kill_group(pid, signal.SIGTERM)
                    doomed[pid] = time.monotonic()
        for pid, since in list(doomed.items()):
            if time.monotonic() - since > KILL_GRACE_S:
                _kill_group(pid, signal.SIGKILL)
        _reap(children, doomed, sel)
    if stopping:
        log.info("runner %d stopping (signal %d); %d stage(s) running are stopped", os.getpid(), stopping[0],
                 len(children))
    for pid in children:
        _kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while children and time.monotonic() < deadline:
        _reap(children, doomed, sel)
        time.sleep(0.1)
    for pid in children:
        _kill_group(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)


def _preload_one(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as err:  # a missing optional library: its stages import it themselves
        log.warning("could not preload %s: %s", name, err)


def _start_child(conn: socket.socket, listener: socket.socket, children: dict[int, socket.socket],
                 packages: set[str], base_path: list[str]) -> int | None:
    conn.setblocking(True)
    conn.settimeout(5.0)
    fds: list[int] = []
    try:
        request, fds = _recv(conn)
        if len(fds) != 3 or not isinstance(request.get("module"), str):
            raise ValueError(f"bad request: {len(fds)} file descriptors, module {request.get('module')!r}")
    except EOFError:  # a probe (`connect` checking that the runner answers): nothing asked
        conn.close()
        return None
    except (OSError, ValueError) as err:
        log.warning("refused a request: %s", err)
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        listener.close()
        signal.set_wakeup_fd(-1)
        for other in children.values():
            other.close()
        conn.close()
        _child(request, fds, packages, base_path)
    for fd in fds:
        os.close(fd)
    log.info("child %d: %s %s", pid, request["module"], " ".join(request.get("args", [])))
    try:
        _send(conn, {"pid": pid})
    except OSError:
        pass  # the run command is gone already; the loop sees the closed connection
    conn.setblocking(False)
    return pid


def _reap(children: dict[int, socket.socket], doomed: dict[int, float], sel: selectors.BaseSelector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        doomed.pop(pid, None)
        if conn is None:
            continue
        log.info("child %d exited with status %d", pid, _exit_status(status))
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn)
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.settimeout(5.0)
            _send(conn, {"exit": _exit_status(status)})
        conn.close()


# ----------------------------------------------------------------------------- finding and starting it

def _write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / RECORD)


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _is_runner_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return MARKER.encode() in f.read().replace(b"\0", b" ")
    except OSError:
        return False


def _connect(folder: Path) -> socket.socket | None:
    record = _read_record(folder)
    if record is None or not _is_runner_process(int(record["pid"])):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(folder / SOCKET))
    except OSError:
        conn.close()
        return None
    return conn


def _prepare(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start(folder: Path) -> None:
    print(f"core.stage_runner: starting the stage runner (preloading {', '.join(preload()) or 'nothing'}), "
          f"log {folder / LOG}",
          file=sys.stderr, flush=True)
    (folder / RECORD).unlink(missing_ok=True)
    with open(folder / LOG, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "core.stage_runner", "serve", "--folder", str(folder)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=folder)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunnerError(f"the stage runner exited with code {proc.returncode} while starting; "
                              f"{folder / LOG} ends:\n{_tail(folder / LOG)}")
        conn = _connect(folder)
        if conn is not None:
            conn.close()
            return
        time.sleep(0.1)
    _kill_group(proc.pid, signal.SIGKILL)
    raise RunnerError(f"the stage runner did not answer within {START_TIMEOUT_S:.0f} s; {folder / LOG} ends:\n"
                      f"{_tail(folder / LOG)}")


def connect(folder: Path | None = None) -> socket.socket:
    """A connection to this interpreter's runner, started first when none is running."""
    folder = folder or runner_folder()
    conn = _connect(folder)
    if conn is not None:
        return conn
    _prepare(folder)
    with locked(folder / ".start.lock"):
        conn = _connect(folder)
        if conn is None:
            _start(folder)
            conn = _connect(folder)
    if conn is None:
        raise RunnerError(f"the stage runner started but does not answer on {folder / SOCKET}")
    return conn


def runners() -> list[tuple[Path, dict[str, Any], bool]]:
    """(folder, record, running) of every runner recorded in the state folder."""
    out = []
    for folder in sorted(p for p in state_dir().glob("*") if p.is_dir()):
        record = _read_record(folder)
        if record is not None:
            out.append((folder, record, _is_runner_process(int(record["pid"]))))
    return out


def stop_all() -> int:
    """Stop every runner of the state folder (SIGTERM, then SIGKILL); returns how many were running."""
    stopped = 0
    for folder, record, running in runners():
        with locked(folder / ".start.lock"):
            pid = int(record["pid"])
            if running and _is_runner_process(pid):
                _kill_group(pid, signal.SIGTERM)
                deadline = time.monotonic() + KILL_GRACE_S + 5
                while _is_runner_process(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                _kill_group(pid, signal.SIGKILL)
                stopped += 1
            (folder / RECORD).unlink(missing_ok=True)
    return stopped


# ----------------------------------------------------------------------------- the run command

def run(module: str, args: list[str]) -> int:
    """Run `python -m module args` in a fork of the runner; its exit status (see the module docstring)."""
    if (os.environ.get("CSCNN_STAGE_RUNNER") or "warm").lower() == "cold":
        _exec_cold(module, args)
    try:
        folder = runner_folder()
        conn = connect(folder)
    except (RunnerError, OSError) as err:
        print(f"core.stage_runner: no warm runner ({str(err).splitlines()[0]}); running {module} in a new "
              f"interpreter", file=sys.stderr, flush=True)
        _exec_cold(module, args)
    theirs = (_read_record(folder) or {}).get("startup_env") or {}
    differ = [k for k in STARTUP_ENV if os.environ.get(k) != theirs.get(k)]
    if differ:
        conn.close()
        print(f"core.stage_runner: {differ[0]}={os.environ.get(differ[0])!r} differs from the warm runner's "
              f"{theirs.get(differ[0])!r}; running {module} in a new interpreter", file=sys.stderr, flush=True)
        _exec_cold(module, args)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        _send(conn, {"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
        reply, _ = _recv(conn)
    except (OSError, EOFError, ValueError) as err:
        print(f"core.stage_runner: the runner did not start {module} ({err}); running it in a new interpreter",
              file=sys.stderr, flush=True)
        _exec_cold(module, args)
    child = int(reply["pid"])

    def forward(signum, _frame) -> None:
        _kill_group(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        reply, _ = _recv(conn)
    except (OSError, EOFError, ValueError):
        print(f"core.stage_runner: the runner died while {module} was running (pid {child}); the stage "
              f"is stopped, run it again", file=sys.stderr, flush=True)
        _kill_group(child, signal.SIGKILL)
        return 1
    return int(reply["exit"])


def _exec_cold(module: str, args: list[str]) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # everything after the module is the stage's, unparsed
        if len(argv) < 2 or argv[1].startswith("-"):
            print("error: usage: python -m core.stage_runner run MODULE [ARG ...]", file=sys.stderr)
            return 2
        return run(argv[1], argv[2:])
    parser = argparse.ArgumentParser(prog="python -m core.stage_runner",
                                     description="The stages' warm Python (core/stage_runner.py).")
    parser.add_argument("action", choices=("start", "status", "stop", "serve"))
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.action == "serve":
        serve(Path(args.folder))
    elif args.action == "start":
        connect().close()
        print(runner_folder() / SOCKET)
    elif args.action == "status":
        for folder, record, running in runners():
            preloaded = record.get("preload_s")
            print(f"{'running' if running else 'stopped'}  pid {record['pid']}  "
                  f"{'preloading' if preloaded is None else f'preloaded in {preloaded} s'}  {folder / LOG}")
    else:
        print(f"stopped {stop_all()} stage runner(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
