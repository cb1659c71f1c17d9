"""Start the training processes of one machine, listening on the loopback interface only.

    python -m models.launch --nproc-per-node N -m spark_jobs.train_model --date 2026-02-02 --config FILE
    python -m models.launch --nproc-per-node N path/to/script.py ARGS...

One process (N = 1): the target replaces this process with no distributed environment, so
training opens no socket at all (a module target runs as `python -m core.stage_runner run
MODULE ...`: in a fork of the warm stage runner, which has torch imported already).
Several: this process is their agent. It serves the c10d store on 127.0.0.1 (a socket it
binds itself and hands to TCPStore, whose own server would listen on every interface) and
starts N workers with RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/MASTER_PORT naming that store and TORCHELASTIC_USE_AGENT_STORE=True (so rank 0
connects to it instead of serving another), and with gloo and NCCL bound to the loopback
interface. torchrun is not used: its rendezvous stores listen on all interfaces and its
dynamic rendezvous unpickles what it reads from them.

A worker that fails stops the others (SIGTERM, then SIGKILL after a grace period) and its exit
status is the launcher's; a signal to the launcher is passed on to the workers; workers die
with the launcher (PR_SET_PDEATHSIG) even when it is killed with SIGKILL.

torch is imported inside `run_workers` only, so that with one process the launcher execs the
target without paying for a torch import of its own.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger("launch")

LOOPBACK_ADDR = "127.0.0.1"
LOOPBACK_IFNAME = "lo"
GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


def worker_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """The environment of worker `rank` of `nproc`, all on this machine and the loopback interface."""
    return {
        "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
        "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "ROLE_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": LOOPBACK_ADDR, "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True",
        "GLOO_SOCKET_IFNAME": LOOPBACK_IFNAME, "NCCL_SOCKET_IFNAME": LOOPBACK_IFNAME,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or "1",  # torchrun's default for N > 1
    }


def _die_with_parent(parent: int):
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return preexec


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_workers(nproc: int, target: list[str]) -> int:
    """Run `python <target>` as `nproc` workers around a loopback store; their exit status."""
    from torch.distributed import TCPStore

    listener = socket.create_server((LOOPBACK_ADDR, 0))
    port = listener.getsockname()[1]
    # Workers start before the store's server thread: fork before threads exist in this process.
    preexec = _die_with_parent(os.getpid())
    workers = [subprocess.Popen([sys.executable, *target], env={**os.environ, **worker_env(rank, nproc, port)},
                                preexec_fn=preexec) for rank in range(nproc)]
    try:
        store = TCPStore(LOOPBACK_ADDR, port, world_size=nproc, is_master=True,
                         master_listen_fd=listener.fileno(), wait_for_workers=False)
    except BaseException:
        _stop(workers)
        listener.close()
        raise
    listener.detach()  # the store owns the socket now and closes it
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    log.info("%d workers on %s:%d: %s", nproc, LOOPBACK_ADDR, port, " ".join(target))
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = next((w for w, code in zip(workers, codes) if code not in (None, 0)), None)
            if failed is not None:
                log.error("worker %d exited with status %d; stopping the others", workers.index(failed),
                          _exit_status(failed.returncode))
                return _exit_status(failed.returncode)
            if all(code == 0 for code in codes):
                return 128 + received[0] if received else 0
            time.sleep(0.2)
    finally:
        _stop(workers)
        del store


def _stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        if w.poll() is None:
            w.terminate()
    deadline = time.monotonic() + GRACE_S
    for w in workers:
        try:
            w.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CSCNN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description="Run one training process, or N around a loopback-only store.")
    ap.add_argument("--nproc-per-node", type=int, required=True, help="training processes (one per GPU)")
    ap.add_argument("-m", "--module", action="store_true", help="`script` is a module, run as python -m does")
    ap.add_argument("script", help="the script (or module, with -m) every process runs")
    ap.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    args = ap.parse_args(argv)
    if args.nproc_per_node < 1:
        ap.error(f"bad value for --nproc-per-node: {args.nproc_per_node}; allowed: an integer >= 1")
    target = ["-m", args.script, *args.script_args] if args.module else [args.script, *args.script_args]
    if args.nproc_per_node == 1:
        sys.stdout.flush(), sys.stderr.flush()
        if args.module:
            os.execv(sys.executable, [sys.executable, "-m", "core.stage_runner", "run", args.script, *args.script_args])
        os.execv(sys.executable, [sys.executable, *target])
    return run_workers(args.nproc_per_node, target)


if __name__ == "__main__":
    sys.exit(main())
