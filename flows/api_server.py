"""The Prefect API server of one CLI command: the configured one, or a temporary one that dies with it.

Inputs: the environment. With `PREFECT_API_URL` set, that server is used and nothing is
started. Otherwise `temporary_server()` starts a Prefect API server (SQLite under
`PREFECT_HOME`, as Prefect's own temporary server does) as a child process on a free
127.0.0.1 port and sets `PREFECT_API_URL` in this process's environment, so Prefect,
imported afterwards, talks to it. Output: the API URL; on exit the server is stopped
(SIGTERM, then SIGKILL).

Why not Prefect's own temporary server: it is stopped only by an `atexit` hook, so a
SIGKILLed CLI left its uvicorn process running, orphaned; and it is started only at the
first flow call, after the CLI's imports and config checks, which then wait for it. Here:
- the child asks the kernel for SIGTERM when its parent dies (Linux `PR_SET_PDEATHSIG`)
  and, on any POSIX system, also watches its parent id and stops itself once it changes;
- it starts before the CLI imports Prefect and loads its config, so the two overlap, and
  the CLI waits for /api/health only right before the flow needs it;
- it runs what a one-run server needs: no UI, no block registration on start (a run
  registers no blocks; a configured server still does), no scheduler, late-run, foreman,
  cancellation or pause services, no automations. The task-run recorder and the event
  persister stay, so task runs are recorded as usual.

Run as `python -m flows.api_server --fd FD --parent PID` by `temporary_server` only.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Iterator

# What the child runs with (on top of the caller's environment): a one-run server.
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT__SERVER_EPHEMERAL": "1",  # Prefect's own flag for its temporary server: only run-time services
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_LOGGER_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
STOP_GRACE_S = 10.0


class ServerStartError(RuntimeError):
    pass


class TemporaryServer:
    """A started child server; `wait_ready()` blocks until it answers /api/health."""

    def __init__(self, proc: subprocess.Popen, api_url: str, timeout_s: float):
        self.proc, self.api_url, self.timeout_s = proc, api_url, timeout_s

    def wait_ready(self) -> str:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"the temporary Prefect server exited with code {self.proc.returncode}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self.api_url
            time.sleep(0.05)
        raise ServerStartError(f"the temporary Prefect server did not answer within {self.timeout_s:.0f} s "
                               "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # lets it flush the last task-run events
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start() -> TemporaryServer:
    """Start the child on a socket bound here (no race for the port); do not wait for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "flows.api_server", "--fd", str(sock.fileno()), "--parent", str(os.getpid())]
    env = {**os.environ, **SERVER_ENV}
    env.pop("PREFECT_API_URL", None)
    try:
        # Its own session: a Ctrl-C at the terminal reaches the CLI, which stops the server last.
        proc = subprocess.Popen(cmd, env=env, pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    finally:
        sock.close()  # the child holds its own copy
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 120)
    return TemporaryServer(proc, f"http://127.0.0.1:{port}/api", timeout)


@contextlib.contextmanager
def temporary_server() -> Iterator[TemporaryServer | None]:
    """None when PREFECT_API_URL names a server; else a started child, stopped on exit."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    server = start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server
    finally:
        _drain_prefect_clients()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _drain_prefect_clients(timeout_s: float = 10.0) -> None:
    """Send the logs and events still queued in this process while the server is up: stopped
    first, Prefect's exit hooks retried against a closed port for about a minute."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # never started, or already drained
            worker.drain_all(timeout=timeout_s)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG).

    The kernel ties the signal to the thread that started the child: start it from one that
    lives as long as the command (the CLI's main thread)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _watch_parent(parent: int, period_s: float = 0.5) -> None:
    """Stop this server once its parent is gone (re-parented: the parent id changes)."""
    while os.getppid() == parent:
        time.sleep(period_s)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE_S)
    os._exit(1)  # a shutdown that hangs must not keep the orphan alive


def _serve(fd: int, parent: int) -> None:
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, fd=fd, log_level="error", lifespan="on")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the temporary Prefect API server of one CLI command")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    a = ap.parse_args()
    _serve(a.fd, a.parent)
