"""ReplicatedBackend for elastic engines: a replica joins mid-run and is handed requests at
once; a replica leaves gracefully (no new request, its in-flight ones answered, then it is
gone); a run with no replica yet waits for one to join."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tasks.backends.replicas import ReplicatedBackend
from tasks.errors import EngineDiedError
from tests.backends.slot_backend import SlotBackend
from tests.backends.test_replicas import requests

IDS = [f"r{i:03d}" for i in range(60)]


def _join_when(rep: ReplicatedBackend, backend: SlotBackend, answered: int, joined: list) -> threading.Thread:
    def later():
        deadline = time.monotonic() + 20
        while len(rep.answered_by) < answered and time.monotonic() < deadline:
            time.sleep(0.002)
        backend.__enter__()
        joined.append(len(rep.answered_by))
        rep.join(backend)
        rep.close_joins()

    t = threading.Thread(target=later, daemon=True)
    t.start()
    return t


def test_a_replica_joins_mid_run_and_shares_the_queue():
    first, late = SlotBackend("first", concurrency=2, latency_s=0.01), SlotBackend("late", concurrency=2, latency_s=0.01)
    rep = ReplicatedBackend("m", [first], joins=True)
    joined: list = []
    with rep:
        t = _join_when(rep, late, 10, joined)
        results = list(rep.run(requests(60)))
        t.join(5)
    assert sorted(r["custom_id"] for r in results) == IDS
    assert joined and joined[0] >= 10 and len(late.answered) > 10  # it came late and still did its share
    assert Counter(cid for _, cid in rep.dispatch) == Counter(IDS)  # nothing sent twice


def test_a_replica_leaves_gracefully_and_the_others_finish():
    leaver, stayer = SlotBackend("leaver", concurrency=3, latency_s=0.01), SlotBackend("stayer", concurrency=3,
                                                                                       latency_s=0.01)
    gone = []

    def should_leave(i, view):
        return rep.replicas[i].name == "leaver" and view.answered >= 12

    rep = ReplicatedBackend("m", [leaver, stayer], should_leave=should_leave,
                            on_gone=lambda i, why: gone.append((rep.replicas[i].name, why, list(leaver.pulled))))
    with rep:
        results = list(rep.run(requests(60)))
    assert sorted(r["custom_id"] for r in results) == IDS
    # it left once, after answering everything it had taken: nothing went to the other twice
    assert [g[:2] for g in gone] == [("leaver", "left")] and rep.left == ["leaver"]
    assert sorted(leaver.answered) == sorted(leaver.pulled) == sorted(gone[0][2])
    assert Counter(cid for _, cid in rep.dispatch) == Counter(IDS)
    assert 0 < len(leaver.answered) < 30 < len(stayer.answered)
    assert rep.alive == [False, True]


def test_a_run_waits_for_its_first_replica_to_join():
    rep = ReplicatedBackend("m", [], joins=True)
    joined: list = []
    with rep:
        t = _join_when(rep, SlotBackend("only", concurrency=4), 0, joined)
        results = list(rep.run(requests(20)))
        t.join(5)
    assert len(results) == 20 and joined == [0]


def test_no_replica_and_no_more_joins_raises():
    rep = ReplicatedBackend("m", [], joins=True)
    with rep:
        threading.Timer(0.2, rep.close_joins).start()
        with pytest.raises(EngineDiedError, match="every replica is gone"):
            list(rep.run(requests(5)))


def test_the_replica_that_dies_is_reported_gone():
    gone = []
    dying, other = SlotBackend("dying", die_after=3), SlotBackend("other")
    rep = ReplicatedBackend("m", [dying, other], on_gone=lambda i, why: gone.append((rep.replicas[i].name, why)))
    with rep:
        assert len(list(rep.run(requests(30)))) == 30
    assert gone == [("dying", "died")]
