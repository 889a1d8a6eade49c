"""The request journal: a crashed or killed shard is rerun paying only for unanswered requests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.backends.base import make_request, result_error
from tasks.backends.journal import Journal, JournaledBackend, journal_path
from tasks.rating.config import RatingConfig
from tasks.rating.scripted import ScriptedCrash, ScriptedJudge
from tasks.rating.stage import rate_shard
from tests.rating.crash_worker import CFG
from tests.rating.crash_worker import shard as worker_shard

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 24  # 3 instructions x 4 aspects + 12 critiques


def cfg() -> RatingConfig:
    return RatingConfig.model_validate(CFG)


def journal_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_bytes().splitlines():
        try:
            ids.append(json.loads(line)["custom_id"])
        except ValueError:
            pass
    return ids


def test_crash_mid_shard_plus_torn_line_then_rerun_sends_only_the_missing(tmp_path):
    path = tmp_path / "j.jsonl"
    clean, _ = rate_shard(*worker_shard(), cfg(), 42, ScriptedJudge(), Journal(tmp_path / "clean.jsonl"))
    first = ScriptedJudge(fail_after=9)
    with pytest.raises(ScriptedCrash):
        rate_shard(*worker_shard(), cfg(), 42, first, Journal(path))
    assert len(journal_ids(path)) == 9
    with open(path, "ab") as fh:  # a record cut short by the crash
        fh.write(b'{"custom_id": "rq-torn", "response": {"status_co')
    second = ScriptedJudge()
    table, stats = rate_shard(*worker_shard(), cfg(), 42, second, Journal(path))
    assert stats.torn_journal_lines == 1 and stats.from_journal == 9
    assert len(second.sent) == TOTAL - 9 and not set(second.sent) & set(first.sent)
    assert sorted(first.sent + second.sent) == sorted(set(first.sent + second.sent))
    assert table.equals(clean)  # resumed answers give the same shard as an uninterrupted run
    assert len(journal_ids(path)) == TOTAL  # the torn line did not swallow the next record


def test_sigkill_mid_shard_then_rerun_pays_only_for_unanswered(tmp_path):
    path, log = tmp_path / "j.jsonl", tmp_path / "sent.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.rating.crash_worker", str(path), str(log)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not path.exists() or len(journal_ids(path)) < 8):
            assert proc.poll() is None, "worker finished before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    answered = set(journal_ids(path))
    sent_before = log.read_text().split()
    assert 8 <= len(answered) < TOTAL
    rerun = ScriptedJudge()
    table, stats = rate_shard(*worker_shard(), cfg(), 42, rerun, Journal(path))
    assert not set(rerun.sent) & answered  # nothing answered is paid again
    assert len(rerun.sent) == TOTAL - len(answered)
    # At most the one request in flight at the kill was sent twice (its answer never landed).
    twice = set(rerun.sent) & set(sent_before)
    assert len(twice) <= 1 and not twice & answered
    assert table.num_rows == 60 and stats.failed_rows == 0


def test_errors_are_not_journaled_and_are_asked_again(tmp_path):
    class Failing(ScriptedJudge):
        def _answer(self, req):
            return result_error(req["custom_id"], "http_503", "busy") if req["custom_id"] == "b" else super()._answer(req)

    body = {"model": "m", "messages": [{"role": "system", "content": "s"},
                                       {"role": "user", "content": "Aspect: critique\n\n<response>\nx\n</response>"}]}
    reqs = [make_request("a", body), make_request("b", body)]
    with JournaledBackend(Failing(), Journal(tmp_path / "j.jsonl")) as jb:
        got = {r["custom_id"]: r for r in jb.run(reqs)}
    assert got["b"]["error"]["code"] == "http_503" and (jb.answered, jb.errors) == (1, 1)
    again = ScriptedJudge()
    with JournaledBackend(again, Journal(tmp_path / "j.jsonl")) as jb:
        got = {r["custom_id"]: r for r in jb.run(reqs)}
    assert again.sent == ["b"] and got["a"]["journaled"] is True


def test_journal_locations(tmp_path, monkeypatch):
    assert journal_path("runs/demo", "s-0") == Path("runs/demo/journal/rate/s-0.jsonl")
    assert journal_path("file:///data/run", "s-0") == Path("/data/run/journal/rate/s-0.jsonl")
    assert journal_path("s3://b/run", "s-0", journal_dir=str(tmp_path)) == tmp_path / "s-0.jsonl"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    remote = journal_path("s3://b/run", "s-0")
    assert remote.is_relative_to(tmp_path / "ultrafeedback" / "journal") and remote.name == "s-0.jsonl"
    assert remote != journal_path("s3://b/other", "s-0")
