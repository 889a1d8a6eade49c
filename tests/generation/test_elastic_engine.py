"""ElasticBackend with in-process stand-in servers (tests/backends/slot_backend.py): a server
that dies releases its GPUs and its requests go to the others; a planned server of an
engine already done is skipped; a server that fails to start hands its GPUs on; servers
planned at one time load side by side; an engine
whose last server dies relaunches one on its GPUs within the attempt, up to `max_lost`; a
retry after every server died gets its last GPUs again and finishes the rest."""
from __future__ import annotations

import threading

import pytest

from tasks.errors import EngineDiedError
from tasks.generation.elastic_engine import ElasticBackend
from tasks.generation.gpu_ledger import GpuLedger
from tasks.generation.schedule_plan import Placement, Plan
from tests.backends.slot_backend import SlotBackend
from tests.backends.test_replicas import requests

IDS = [f"r{i:03d}" for i in range(40)]


def _plan(*placements: tuple[str, int, float, float]) -> Plan:
    return Plan(2, 2, [Placement(e, 0, (g,), 1, s, t, 0.5) for e, g, s, t in placements])


class Launcher:
    """The k-th server of the engine, with `per_k[k]`'s SlotBackend settings; records each launch."""

    def __init__(self, **per_k):
        self.per_k, self.launched = per_k, []

    def __call__(self, placement: Placement, k: int) -> SlotBackend:
        backend = SlotBackend(f"s{k}", concurrency=2, latency_s=0.01, **self.per_k.get(f"s{k}", {}))
        self.launched.append((backend, placement.gpus))
        return backend


def _run(engine: ElasticBackend, n: int = 40) -> list[str]:
    with engine:
        return [r["custom_id"] for r in engine.run(requests(n))]


def test_a_server_that_dies_releases_its_gpus_and_loses_nothing():
    ledger = GpuLedger(_plan(("A", 0, 0, 10), ("A", 1, 0, 10), ("B", 0, 10, 12)))
    engine = ElasticBackend("A", ledger, Launcher(s0={"die_after": 3}), s_per_request=0.01)
    ids = _run(engine)
    assert sorted(ids) == IDS  # each once
    assert [(s["gpus"], s["why"]) for s in engine.history()] == [([0], "died"), ([1], "engine done")]
    died = engine.history()[0]
    assert ledger.history()[0]["released_s"] == died["stopped_s"]  # released when it was stopped
    assert ledger.acquire(2)  # so B's server, next on GPU 0, gets it


def test_a_planned_server_of_an_engine_already_done_is_skipped():
    ledger = GpuLedger(_plan(("A", 0, 0, 10), ("B", 1, 0, 5), ("A", 1, 5, 10)))
    assert ledger.acquire(1)  # B holds GPU 1 for the whole of A's run
    launch = Launcher()
    engine = ElasticBackend("A", ledger, launch, s_per_request=0.01)
    with engine:
        ids = [r["custom_id"] for r in engine.run(requests(40))]
        ledger.release(1)  # B stops after A's work is all answered
    assert sorted(ids) == IDS
    assert [gpus for _, gpus in launch.launched] == [(0,)]  # A's second server never launched
    assert [h["state"] for h in ledger.history()] == ["done", "done", "skipped"]


def test_a_server_that_fails_to_start_hands_its_gpus_on():
    ledger = GpuLedger(_plan(("A", 0, 0, 10), ("A", 1, 0, 10), ("B", 1, 10, 12)))
    engine = ElasticBackend("A", ledger, Launcher(s1={"fail_start": True}), s_per_request=0.01)
    assert sorted(_run(engine)) == IDS
    assert engine.failures and engine.failures[0].startswith("s1: EngineDiedError")
    assert ledger.acquire(2)  # GPU 1 went on to B at once


def test_servers_planned_at_one_time_load_side_by_side():
    ledger = GpuLedger(_plan(("A", 0, 0, 10), ("A", 1, 0, 10)))
    launch = Launcher(s0={"start_s": 0.5}, s1={"start_s": 0.5})
    engine = ElasticBackend("A", ledger, launch, s_per_request=0.01)
    assert sorted(_run(engine)) == IDS
    (first, _), (second, _) = launch.launched
    assert second.loading[0] < first.loading[1]  # the second began loading before the first was up
    assert first.answered and second.answered


def test_a_lost_last_server_is_relaunched_on_its_gpus_within_the_attempt():
    ledger = GpuLedger(_plan(("A", 0, 0, 10), ("B", 0, 10, 12)))
    launch = Launcher(s0={"die_after": 5})
    engine = ElasticBackend("A", ledger, launch, s_per_request=0.01)  # no re-planner
    b_waits = threading.Thread(target=ledger.acquire, args=(1,), daemon=True)
    b_waits.start()  # B's server is next on GPU 0 and waits for it
    assert sorted(_run(engine)) == IDS  # each once, in one attempt
    b_waits.join(5)
    assert [gpus for _, gpus in launch.launched] == [(0,), (0,)]
    assert [s["why"] for s in engine.history()] == ["died", "engine done"]
    assert [h["engine_id"] for h in ledger.history()] == ["A", "B", "A"]
    assert ledger.history()[1]["acquired_s"] >= ledger.history()[2]["released_s"]  # A's relaunch went first


def test_servers_that_keep_dying_end_the_attempt_after_max_lost():
    ledger = GpuLedger(_plan(("A", 0, 0, 10)))
    launch = Launcher(s0={"die_after": 3}, s1={"die_after": 3}, s2={"die_after": 3})
    engine = ElasticBackend("A", ledger, launch, s_per_request=0.01, max_lost=2)
    got = []
    with engine, pytest.raises(EngineDiedError):
        for r in engine.run(requests(40)):
            got.append(r["custom_id"])
    assert len(launch.launched) == 2 and len(got) == 6  # one relaunch, then Prefect's retry


def test_a_retry_after_every_server_died_finishes_on_its_last_gpus():
    ledger = GpuLedger(_plan(("A", 0, 0, 10), ("B", 0, 10, 12)))
    first = ElasticBackend("A", ledger, Launcher(s0={"die_after": 5}), s_per_request=0.01, max_lost=0)
    got = []
    with pytest.raises(EngineDiedError):
        with first:
            for r in first.run(requests(40)):
                got.append(r["custom_id"])
    assert len(got) == 5 and ledger.history()[0]["state"] == "done"
    # the orchestrator's retry sends only what is left; it goes ahead of B, not yet started on GPU 0
    retry = ElasticBackend("A", ledger, Launcher(), s_per_request=0.01)
    rest = [r for r in requests(40) if r["custom_id"] not in got]
    with retry:
        assert ledger.claims[2].placement.engine_id == "A"  # requeued on entering, ahead of B's
        b_waits = threading.Thread(target=ledger.acquire, args=(1,), daemon=True)
        b_waits.start()
        got += [r["custom_id"] for r in retry.run(rest)]
    assert sorted(got) == IDS
    b_waits.join(5)
    assert [h["engine_id"] for h in ledger.history()] == ["A", "B", "A"]
    assert ledger.history()[1]["acquired_s"] >= ledger.history()[2]["released_s"]
