"""A real `prefect server start` on a free 127.0.0.1 port, SQLite in a temporary PREFECT_HOME.

Inputs: a folder for PREFECT_HOME (the database and the server's log live there) and
whether to serve the web UI too (`ui=True`, at `.ui_url`; off by default). Outputs:
`PrefectServer` with `.api_url`, `.env()` (the environment for subprocess clients: CLI,
workers, deploy scripts) and `.settings()` (the same for in-process clients), plus
`start_worker`. Readiness is polled on /api/health; every process started here runs in its
own process group and is killed at teardown (SIGTERM, then SIGKILL).

Use it through the module-scoped fixture `prefect_server` (one server per test module).
Tests that only need an API which outlives the processes they start and kill (CLI runs,
SIGKILLs, reruns) take `prefect_api` instead: the same client interface on the session's
test API (`prefect_test_harness`, itself a Prefect API server in a subprocess, SQLite),
so such a module starts no server of its own (a `prefect server` start costs 10-15 s of CPU).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

PREFECT = str(Path(sys.executable).with_name("prefect"))
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after `grace_s`."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class ApiClients:
    """What a test hands to Prefect clients: `.env()` for subprocesses, `.settings()` in process."""
    api_url: str
    home: Path

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return {**env, **QUIET, "PREFECT_HOME": str(self.home)}

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client process of this server."""
        return {**self._base_env(), "PREFECT_API_URL": self.api_url, **extra}

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Point this process's Prefect client at the server for the block."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield


class HarnessApi(ApiClients):
    """The session's test API; `home` is the clients' PREFECT_HOME (a folder of the module)."""

    def __init__(self, api_url: str, home: Path):
        self.api_url, self.home = api_url, Path(home)


class PrefectServer(ApiClients):
    def __init__(self, home: Path, startup_timeout_s: float = 120.0, ui: bool = False):
        self.home = Path(home)
        self.ui = ui  # serve the web UI too (at `.ui_url`), for the browser tests
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "server.log"
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.children: list[subprocess.Popen] = []

    def start(self) -> "PrefectServer":
        env = {**self._base_env(), "PREFECT_UI_ENABLED": str(self.ui).lower(),
               "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
        if self.ui:  # the UI's scripts call this URL from the browser; its default is port 4200
            env["PREFECT_UI_API_URL"] = self.api_url
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {self.startup_timeout_s}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def start_worker(self, pool: str, log_name: str = "worker.log", **env: str) -> subprocess.Popen:
        """A process worker polling `pool` every second; stopped with the server."""
        log = open(self.home / log_name, "ab")
        proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
                                env=self.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="2",
                                             **env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.children.append(proc)
        return proc

    def stop(self) -> None:
        for child in self.children:
            stop_process(child)
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prefect_api(prefect_harness, tmp_path_factory) -> HarnessApi:
    from prefect.settings import PREFECT_API_URL

    return HarnessApi(PREFECT_API_URL.value(), tmp_path_factory.mktemp("prefect-home"))
