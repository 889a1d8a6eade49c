"""The CLI's temporary Prefect server and its error output, through the real command.

- a SIGKILLed `ultrafeedback run` leaves no Prefect server (nor any other process) behind;
- a finished run stops its server; a shard whose engine keeps dying (a transient error,
  retried, then handed to backfill) logs one line per attempt, no traceback;
- with PREFECT_API_URL set, nothing is started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from flows.api_server import temporary_server
from tests.deployments.helpers import SCRIPTED

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)  # the CLI starts its own server
    return env


def _cli(tmp_path: Path, *args: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", SCRIPTED, "--out", str(tmp_path / "run"),
           "--no-progress", *args]
    return subprocess.Popen(cmd, env=_env(tmp_path), cwd=ROOT, **popen)


def _servers(proc: psutil.Process) -> list[psutil.Process]:
    """The API servers the CLI started: its direct children only. A process the server
    forks carries the server's command line until it execs, so a recursive search can
    catch one in that instant and count a second server."""
    found = []
    for child in proc.children():
        try:
            if "flows.api_server" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_a_sigkilled_run_leaves_no_server_behind(tmp_path):
    proc = _cli(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli = psutil.Process(proc.pid)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "sample").exists():  # the flow is running: its server is up
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or never started"
        time.sleep(0.2)
    family = cli.children(recursive=True)
    assert len(_servers(cli)) == 1, [p.cmdline() for p in family]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, [p.cmdline() for p in alive]


def test_transient_failures_log_one_line_each_and_the_server_stops(tmp_path):
    # The first model's engine dies after one result, on every attempt: its engine task is
    # retried twice, then the shards it left fail and are handed to backfill.
    proc = _cli(tmp_path, "--stages", "sample,generate", "--set", "generation.models.0.script.die_after=1",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli, seen = psutil.Process(proc.pid), set()
    while proc.poll() is None:
        seen.update(_servers(cli))
        time.sleep(0.2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    died = [ln for ln in err.splitlines() if "EngineDiedError" in ln and "Task run failed" in ln]
    assert [("Retry 1/2" in ln, "Retry 2/2" in ln, "Retries are exhausted" in ln) for ln in died] == [
        (True, False, False), (False, True, False), (False, False, True)]
    merges = [ln for ln in err.splitlines() if "is not finished" in ln and "Task run failed" in ln]
    assert len(merges) == 5  # one line per instruction shard whose part is missing
    assert "finish the run with: ultrafeedback backfill" in err
    assert len(seen) == 1
    _, alive = psutil.wait_procs(list(seen), timeout=20)
    assert not alive


def test_a_configured_server_is_used_and_nothing_is_started(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    before = psutil.Process().children()
    with temporary_server() as server:
        assert server is None and os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
        assert psutil.Process().children() == before
