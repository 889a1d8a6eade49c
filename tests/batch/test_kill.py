"""SIGKILL a batch-mode rating process after the upload, after the create, while polling and
while downloading; the rerun answers no request twice, creates no second batch for the same
requests, and gives the same ratings as an uninterrupted run.

The worker (tests/batch/batch_worker.py) runs in its own process against the Files +
Batches test server in this process; the server holds back its answer to the upload, the
create or the download for a while after the effect took place, which is where the kill lands.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.batch.batch_worker import rate
from tests.batch.conftest import control
from tests.servers.fixtures import get_stats

pytestmark = pytest.mark.http
ROOT = Path(__file__).resolve().parents[2]


def start(url: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.batch.batch_worker", url, str(out), "batch"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(proc: subprocess.Popen, condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    try:
        while not condition():
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "kill point not reached"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def counters(srv) -> dict:
    return control(srv.url, "/_batch_stats")


@pytest.mark.parametrize("point", ["upload", "create", "polling", "download"])
def test_sigkill_then_rerun_pays_nothing_twice(batch_server_factory, tmp_path, point):
    ref_srv = batch_server_factory()
    reference, _ = rate(ref_srv.url, tmp_path / "ref", "batch")
    delays = {"upload": {"upload_delay_s": 60.0}, "create": {"create_delay_s": 60.0},
              "download": {"download_delay_s": 60.0}, "polling": {"polls_per_status": 1000}}[point]
    srv = batch_server_factory(**delays)
    condition = {"upload": lambda: counters(srv)["uploads"] >= 1, "create": lambda: counters(srv)["creates"] >= 1,
                 "polling": lambda: counters(srv)["retrieves"] >= 3,
                 "download": lambda: counters(srv)["downloads_started"] >= 1}[point]
    out = tmp_path / "run"
    kill_when(start(srv.url, out), condition)
    srv.upload_delay_s = srv.create_delay_s = srv.download_delay_s = 0.0
    srv.polls_per_status = 0
    proc = start(srv.url, out)
    assert proc.wait(timeout=120) == 0, proc.stdout.read().decode(errors="replace")[-3000:]
    table = pq.read_table(out / "ratings.parquet")
    assert table.equals(reference)
    c, stats = counters(srv), get_stats(srv.url)
    assert (c["uploads"], c["creates"]) == (1, 1), c  # the file and the batch were found again, not redone
    assert stats["answered"] == 24 and stats["duplicates"] == []
