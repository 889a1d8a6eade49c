"""The rate stage against the OpenAI-protocol test server over real HTTP (marker `http`):
exact values in both modes, cost equal to the server's token counts, and a SIGKILL mid-shard
whose rerun the server sees send nothing that was already answered."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tasks.backends.journal import Journal
from tasks.rating.cost import summarize_table
from tasks.rating.judges import judge_backend
from tasks.rating.stage import rate_shard
from tests.rating.conftest import ANSWERS, QUESTIONS, ROOT
from tests.rating.crash_worker import http_config, shard
from tests.servers.fixtures import get_stats
from tests.servers.scripted import scripted_overall, scripted_rating, scripted_types

pytestmark = pytest.mark.http
TOTAL = 24


@pytest.mark.parametrize("mode", ["text", "structured"])
def test_exact_values_and_cost_match_the_server(judge_server, tmp_path, mode):
    cfg = http_config(judge_server.url, mode, concurrency=8)
    table, stats = rate_shard(*shard(), cfg, 42, judge_backend(cfg.endpoint), Journal(tmp_path / "j.jsonl"))
    responses = {(q["prompt_id"], i): a for q, ans in zip(QUESTIONS, ANSWERS) for i, a in enumerate(ans)}
    for row in table.to_pylist():
        text = responses[(row["prompt_id"], row["completion_index"])]
        if row["aspect"] == "critique":
            assert row["rating"] == float(scripted_overall(text))
            continue
        want = scripted_rating(row["aspect"], text)
        assert (row["rating"], row["rating_na"]) == ((None, True) if want == "N/A" else (float(want), False))
        if row["aspect"] in ("truthfulness", "helpfulness"):
            assert row["types"] == scripted_types(row["aspect"], text)
    server = get_stats(judge_server.url)
    assert server["answered"] == TOTAL and server["duplicates"] == []
    [cost] = summarize_table(table, "rate")
    assert (cost["requests"], cost["prompt_tokens"], cost["completion_tokens"]) == \
        (server["answered"], server["prompt_tokens"], server["completion_tokens"])
    assert cost["usd"] == pytest.approx((server["prompt_tokens"] * 1.0 + server["completion_tokens"] * 2.0) / 1e6)


def _journaled(path) -> set[str]:
    out = set()
    for line in path.read_bytes().splitlines():
        try:
            out.add(json.loads(line)["custom_id"])
        except ValueError:
            pass
    return out


def test_sigkill_mid_shard_then_rerun_the_server_counts(judge_server_factory, tmp_path):
    server = judge_server_factory(latency_s=0.1)
    path = tmp_path / "j.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.rating.crash_worker", str(path), str(tmp_path / "log"),
                             server.url], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not path.exists() or len(_journaled(path)) < 8):
            assert proc.poll() is None, "worker finished before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    answered = _journaled(path)
    assert 8 <= len(answered) < TOTAL
    cfg = http_config(server.url)
    table, stats = rate_shard(*shard(), cfg, 42, judge_backend(cfg.endpoint), Journal(path))
    assert stats.from_journal == len(answered) and stats.sent == TOTAL - len(answered)
    s = get_stats(server.url)
    # Only requests in flight at the kill (two at most) were answered twice; nothing journaled was resent.
    assert len(s["duplicates"]) <= 2
    assert s["answered"] == TOTAL + len(s["duplicates"])
    assert table.num_rows == 60 and stats.failed_rows == 0 and stats.unparsed_rows == 0
