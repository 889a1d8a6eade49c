"""ReplicatedBackend on scripted replicas: balancing, fail-over, start failures, and two real
HTTP server processes (the OpenAI-protocol test server) with one SIGKILLed mid-run."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

import pytest

from tasks.backends.base import make_request
from tasks.backends.faults import RequestPolicy
from tasks.backends.openai_http import OpenAIHTTPBackend
from tasks.backends.replicas import ReplicatedBackend
from tasks.backends.scripted import ScriptedBackend
from tasks.errors import EngineDiedError
from tests.backends.slot_backend import SlotBackend
from tests.servers.fixtures import get_stats


def requests(n: int, model: str = "judge") -> list[dict]:
    return [make_request(f"r{i:03d}", {"model": model, "max_tokens": 16,
                                       "messages": [{"role": "user", "content": f"Name the number {i} in words."}]})
            for i in range(n)]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def run_all(backend: ReplicatedBackend, reqs: list[dict]) -> list[dict]:
    with backend:
        return list(backend.run(reqs))


def test_a_small_shard_is_split_evenly():
    a, b = SlotBackend("a", concurrency=8), SlotBackend("b", concurrency=8)
    results = run_all(ReplicatedBackend("m", [a, b]), requests(10))
    assert sorted(r["custom_id"] for r in results) == [f"r{i:03d}" for i in range(10)]
    assert len(a.pulled) == len(b.pulled) == 5


def test_the_faster_replica_takes_more_when_saturated():
    fast, slow = SlotBackend("fast", concurrency=2, latency_s=0.002), SlotBackend("slow", concurrency=2, latency_s=0.03)
    rep = ReplicatedBackend("m", [fast, slow])
    results = run_all(rep, requests(80))
    assert len({r["custom_id"] for r in results}) == len(results) == 80
    assert len(fast.answered) > 3 * len(slow.answered)
    assert max(fast.max_held, slow.max_held) <= 2  # never more than a replica's own slots
    assert Counter(rep.answered_by.values()) == {"fast": len(fast.answered), "slow": len(slow.answered)}


def test_a_replica_that_dies_hands_its_unanswered_requests_to_the_others():
    dying, other = SlotBackend("dying", concurrency=4, die_after=3), SlotBackend("other", concurrency=4)
    rep = ReplicatedBackend("m", [dying, other])
    results = run_all(rep, requests(40))
    ids = [r["custom_id"] for r in results]
    assert sorted(ids) == [f"r{i:03d}" for i in range(40)]  # nothing lost, nothing twice
    sends = Counter(cid for _, cid in rep.dispatch)
    # What the dead replica answered was sent once; what it held unanswered went to the other.
    assert dying.answered and all(sends[cid] == 1 for cid in dying.answered)
    lost = set(dying.pulled) - set(dying.answered)
    assert lost and all(sends[cid] == 2 for cid in lost) and lost <= set(other.answered)
    assert sum(sends.values()) == 40 + len(lost)
    assert rep.alive == [False, True] and "died holding" in rep.failures["dying"]


def test_a_replica_that_dies_after_the_others_went_idle_is_still_covered():
    # The scripted backend takes one request at a time; the slow one dies on its fourth, when the
    # fast one has already answered everything else and is waiting.
    slow = ScriptedBackend("slow", die_after=3)
    fast = SlotBackend("fast", concurrency=2, latency_s=0.001)
    rep = ReplicatedBackend("m", [slow, fast])
    with rep:
        results = list(rep.run(requests(30)))
    assert sorted(r["custom_id"] for r in results) == [f"r{i:03d}" for i in range(30)]
    assert Counter(rep.answered_by.values())["slow"] == 3


def test_every_replica_dead_raises_after_yielding_what_was_answered():
    a, b = SlotBackend("a", die_after=2), SlotBackend("b", die_after=2)
    rep = ReplicatedBackend("m", [a, b])
    got = []
    with rep, pytest.raises(EngineDiedError, match="every replica is gone"):
        for r in rep.run(requests(20)):
            got.append(r["custom_id"])
    assert sorted(got) == sorted(a.answered + b.answered) and len(got) == 4


def test_a_replica_that_fails_to_start_is_left_out():
    bad, good = SlotBackend("bad", fail_start=True), SlotBackend("good")
    rep = ReplicatedBackend("m", [bad, good])
    results = run_all(rep, requests(6))
    assert len(results) == 6 and good.answered and not bad.pulled
    assert rep.failures["bad"].startswith("start: EngineDiedError")
    assert good.exited == 1 and bad.exited == 1  # stop is safe on a replica that never started


def test_no_replica_starting_raises_the_first_error():
    with pytest.raises(EngineDiedError, match="x did not start"):
        ReplicatedBackend("m", [SlotBackend("x", fail_start=True), SlotBackend("y", fail_start=True)]).__enter__()


def _spawn_server(latency_s: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "tests/servers/openai_server.py", "--port", "0", "--latency-s",
                             str(latency_s), "--max-seconds", "120"], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_two_http_servers_one_killed_mid_run():
    """Real server processes, the real client: SIGKILL one mid-run; the other answers the rest
    and each request is answered once."""
    procs = [_spawn_server(0.02) for _ in range(2)]
    try:
        (victim, url0), (_, url1) = procs
        # As for a launched server: a dropped connection asks the endpoint whether it still answers.
        clients = [OpenAIHTTPBackend(f"ep{i}", url, max_concurrency=4, policy=RequestPolicy(timeout_s=10), launched=True,
                                     alive=lambda url=url: answers(url)) for i, url in enumerate((url0, url1))]
        rep = ReplicatedBackend("judge", clients)
        killed_after = []

        def kill_later():
            deadline = time.monotonic() + 20
            while get_stats(url0)["answered"] < 8 and time.monotonic() < deadline:
                time.sleep(0.005)
            killed_after.append(get_stats(url0)["answered"])
            victim.send_signal(signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()
        with rep:
            results = list(rep.run(requests(120)))
        assert killed_after and victim.wait(5) == -signal.SIGKILL
        assert sorted(r["custom_id"] for r in results) == [f"r{i:03d}" for i in range(120)]
        assert [r["error"] for r in results if r["error"]] == []
        by = Counter(rep.answered_by.values())
        assert by["ep0"] >= 8 and by["ep1"] > 0 and rep.alive == [False, True]
        sends = Counter(cid for _, cid in rep.dispatch)
        assert all(sends[cid] == 1 for cid, who in rep.answered_by.items() if who == "ep0")
        stats1 = get_stats(url1)
        assert stats1["duplicates"] == [] and stats1["answered"] == by["ep1"]
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait(5)
