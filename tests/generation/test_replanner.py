"""Run-time re-planning with in-process stand-in servers (tests/backends/slot_backend.py).

Two engines planned alike on two GPUs; A is far faster than its estimate. Re-planned, the
GPU A frees goes to B, which gets a second server there; following the plan alone, B
finishes on its one server. A server that outstays its planned time asks for a plan once,
and the placements a plan replaces are never launched. A server that dies is relaunched
by a re-plan within the engine's attempt, up to `max_lost` lost servers; then the attempt
fails, for the orchestrator to retry. A retried engine asks for a plan once its requests
are known, so what is left is planned at their count, not at the engine's full estimate.
"""
from __future__ import annotations

import threading

import pytest

from tasks.errors import EngineDiedError
from tasks.generation.elastic_engine import ElasticBackend
from tasks.generation.gpu_ledger import GpuLedger
from tasks.generation.replanner import Replanner
from tasks.generation.schedule_plan import Job, Placement, Plan
from tests.backends.slot_backend import SlotBackend
from tests.backends.test_replicas import requests


class Launcher:
    def __init__(self, latency_s: float):
        self.latency_s, self.launched = latency_s, []

    def __call__(self, placement: Placement, k: int) -> SlotBackend:
        self.launched.append(placement.gpus)
        return SlotBackend(f"s{k}", concurrency=2, latency_s=self.latency_s)


def _plan() -> Plan:
    return Plan(2, 2, [Placement("A", 0, (0,), 1, 0.0, 2.0, 1.0), Placement("B", 0, (1,), 1, 0.0, 2.0, 1.0)])


def _jobs() -> list[Job]:
    return [Job("A", 1, 2.0, 0.05), Job("B", 1, 2.0, 0.05)]


def _run_both(ledger: GpuLedger) -> tuple[dict, dict]:
    """A (20 requests, fast) and B (40 requests, about 0.05 s each on one server) side by side."""
    launch = {"A": Launcher(0.002), "B": Launcher(0.05)}
    engines = {e: ElasticBackend(e, ledger, launch[e], s_per_request=0.05) for e in "AB"}
    answered: dict[str, list[str]] = {}

    def drive(e: str, n: int) -> None:
        with engines[e]:
            answered[e] = [r["custom_id"] for r in engines[e].run(requests(n))]

    threads = [threading.Thread(target=drive, args=(e, n)) for e, n in (("A", 20), ("B", 40))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answered["A"]) == sorted(r["custom_id"] for r in requests(20))
    assert sorted(answered["B"]) == sorted(r["custom_id"] for r in requests(40))  # each once
    return engines, launch


def test_a_gpu_freed_early_goes_to_the_engine_still_at_work():
    ledger = GpuLedger(_plan())
    with Replanner(ledger, _jobs(), min_observed=4) as replanner:
        engines, launch = _run_both(ledger)
    assert launch["B"].launched == [(1,), (0,)]  # B's second server on the GPU A freed
    a, b = engines["A"].history(), engines["B"].history()
    assert b[1]["started_s"] >= a[0]["stopped_s"]
    assert b[1]["started_s"] < b[0]["stopped_s"]  # both of B's servers worked side by side
    assert replanner.history and any(r["new_placements"] for r in replanner.history)
    states = [h["state"] for h in ledger.history()]
    assert states[:2] == ["done", "done"] and "running" not in states and "planned" not in states
    assert ledger.replanner is None  # closed with the run


def test_without_re_planning_the_engine_at_work_keeps_its_one_server():
    ledger = GpuLedger(_plan())
    engines, launch = _run_both(ledger)
    assert launch["B"].launched == [(1,)]
    assert len(ledger.history()) == 2


def test_replaced_placements_are_never_launched_and_ended_engines_get_none():
    plan = Plan(2, 2, [Placement("A", 0, (0,), 1, 0.0, 1.0, 0.5), Placement("A", 0, (1,), 1, 5.0, 6.0, 0.5),
                       Placement("B", 0, (1,), 1, 0.0, 5.0, 1.0)])
    ledger = GpuLedger(plan)
    ledger.finish("B")  # B's task has ended (nothing to do)
    replanner = Replanner(ledger, [Job("A", 1, 2.0, 0.5), Job("B", 1, 5.0, 0.5)])
    record = replanner.replan_now()  # A not started yet: planned at its estimate, B left out
    assert record["engines"] == 1
    states = [(h["engine_id"], h["state"]) for h in ledger.history()]
    assert states[:3] == [("A", "replaced"), ("B", "skipped"), ("A", "replaced")]  # plan order
    new = ledger.history()[3:]
    assert new and {h["engine_id"] for h in new} == {"A"} and all(h["state"] == "planned" for h in new)
    # the new plan uses both GPUs for A at once (B no longer holds GPU 1)
    assert sorted(g for h in new for g in h["gpus"]) == [0, 1]
    assert ledger.replace_planned({"B"}, [Placement("B", 0, (0,), 1, 0.0, 1.0, 1.0)], {"B": 1.0}) == []


def test_a_server_past_its_planned_time_asks_once_for_a_plan():
    plan = Plan(1, 1, [Placement("A", 0, (0,), 1, 0.0, 0.05, 1.0)])  # planned far shorter than it runs
    ledger = GpuLedger(plan)
    replanner = Replanner(ledger, [Job("A", 1, 0.05, 0.0)], min_observed=10_000)  # no pace trigger
    engine = ElasticBackend("A", ledger, Launcher(0.02), s_per_request=0.001)
    with engine:
        ids = [r["custom_id"] for r in engine.run(requests(30))]
    assert len(set(ids)) == 30
    overdue = [w for w in replanner._why if "overdue" in w]
    assert len(overdue) == 1  # asked once: no plan was made since (the thread was not started)


class Failing:
    """Servers by launch number: `die_after` answers, or all fail to start; records each launch."""

    def __init__(self, **per_k):
        self.per_k, self.launched = per_k, []

    def __call__(self, placement: Placement, k: int) -> SlotBackend:
        self.launched.append(placement.gpus)
        return SlotBackend(f"s{k}", concurrency=2, latency_s=0.01, **self.per_k.get(f"s{k}", self.per_k.get("all", {})))


def _one_engine(launch, n: int, max_lost: int = 2) -> tuple[ElasticBackend, GpuLedger, list[str]]:
    ledger = GpuLedger(Plan(1, 1, [Placement("A", 0, (0,), 1, 0.0, 5.0, 1.0)]))
    engine = ElasticBackend("A", ledger, launch, s_per_request=0.01, max_lost=max_lost)
    with Replanner(ledger, [Job("A", 1, 5.0, 0.05)], min_observed=10_000):
        with engine:
            ids = [r["custom_id"] for r in engine.run(requests(n))]
    return engine, ledger, ids


def test_a_server_that_dies_is_relaunched_by_a_re_plan_within_the_attempt():
    launch = Failing(s0={"die_after": 5})
    engine, ledger, ids = _one_engine(launch, 30)
    assert sorted(ids) == sorted(r["custom_id"] for r in requests(30))  # each once, none lost
    assert launch.launched == [(0,), (0,)]
    assert [s["why"] for s in engine.history()] == ["died", "engine done"]
    assert [h["state"] for h in ledger.history()] == ["done", "done"]  # the second placement came from a re-plan


def test_servers_that_keep_failing_end_the_attempt_after_max_lost():
    launch = Failing(all={"fail_start": True})
    ledger = GpuLedger(Plan(1, 1, [Placement("A", 0, (0,), 1, 0.0, 5.0, 1.0)]))
    engine = ElasticBackend("A", ledger, launch, s_per_request=0.01, max_lost=2)
    with Replanner(ledger, [Job("A", 1, 5.0, 0.05)], min_observed=10_000):
        with engine, pytest.raises(EngineDiedError, match="no live replica|every replica is gone"):
            list(engine.run(requests(10)))
    assert launch.launched == [(0,), (0,)]  # one relaunch, then the orchestrator's retry takes over
    assert len(engine.failures) == 2


def test_a_retry_asks_for_a_plan_once_its_requests_are_known():
    ledger = GpuLedger(Plan(1, 1, [Placement("A", 0, (0,), 1, 0.0, 5.0, 1.0)]))
    with Replanner(ledger, [Job("A", 1, 5.0, 0.05)], min_observed=10_000) as replanner:
        first = ElasticBackend("A", ledger, Failing(s0={"die_after": 5}), s_per_request=0.01, max_lost=0)
        got = []
        with first, pytest.raises(EngineDiedError):
            for r in first.run(requests(30)):
                got.append(r["custom_id"])
        assert len(got) == 5
        retry = ElasticBackend("A", ledger, Failing(), s_per_request=0.01)
        with retry:  # the orchestrator's retry sends only what is left
            got += [r["custom_id"] for r in retry.run([r for r in requests(30) if r["custom_id"] not in got])]
    assert sorted(got) == sorted(r["custom_id"] for r in requests(30))
    whys = [w for record in replanner.history for w in record["why"]]
    assert any(w.startswith("A retry: ") and w.endswith(f"{30 - 5} requests left") for w in whys), whys
