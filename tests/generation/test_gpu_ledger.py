"""The GPU ledger of an elastic plan: per GPU the placements in plan order, each taking its
GPUs once the ones before it there released them; skipped, finished and requeued ones."""
from __future__ import annotations

import threading
import time

from tasks.generation.gpu_ledger import GpuLedger
from tasks.generation.schedule_plan import Placement, Plan


def _plan(*placements: tuple[str, tuple[int, ...], float, float], gpus: int = 2) -> Plan:
    return Plan(gpus, gpus, [Placement(e, 0, g, len(g), s, t, 0.5) for e, g, s, t in placements])


def _acquire_later(ledger: GpuLedger, i: int) -> tuple[threading.Thread, list]:
    got: list = []
    t = threading.Thread(target=lambda: got.append(ledger.acquire(i)), daemon=True)
    t.start()
    return t, got


def swap_plan() -> Plan:
    # A then B on GPU 0, B then A on GPU 1: each engine moves to the other GPU half way
    return _plan(("A", (0,), 0, 2), ("B", (1,), 0, 2), ("A", (1,), 2, 4), ("B", (0,), 2, 4))


def test_a_placement_waits_for_the_one_before_it_on_its_gpu():
    ledger = GpuLedger(swap_plan())
    assert [c.placement.engine_id for c in ledger.claims] == ["A", "B", "A", "B"]
    assert ledger.acquire(0) and ledger.acquire(1)
    t, got = _acquire_later(ledger, 2)  # A's second server, on GPU 1, which B holds
    time.sleep(0.3)
    assert got == [] and ledger.pending("A") == 1
    ledger.release(0)  # A's first server stops: GPU 0 is B's next, not A's
    time.sleep(0.3)
    assert got == []
    ledger.release(1)
    t.join(2)
    assert got == [True] and ledger.pending("A") == 0
    assert ledger.acquire(3)  # GPU 0 was released by A's first server
    states = [h["state"] for h in ledger.history()]
    assert states == ["done", "done", "running", "running"]


def test_a_wide_placement_waits_for_all_its_gpus():
    ledger = GpuLedger(_plan(("A", (0,), 0, 1), ("B", (1,), 0, 3), ("C", (0, 1), 3, 5)))
    assert ledger.acquire(0) and ledger.acquire(1)
    t, got = _acquire_later(ledger, 2)
    ledger.release(0)
    time.sleep(0.3)
    assert got == []  # GPU 0 is free, GPU 1 is not
    ledger.release(1)
    t.join(2)
    assert got == [True]


def test_an_engine_that_is_done_skips_its_placements_and_frees_the_lanes():
    ledger = GpuLedger(_plan(("A", (0,), 0, 2), ("B", (1,), 0, 2), ("A", (1,), 2, 4), ("C", (1,), 4, 6)))
    assert ledger.acquire(0) and ledger.acquire(1)
    ledger.finish("A")  # A's task ended: it releases GPU 0 and will not launch on GPU 1
    assert [h["state"] for h in ledger.history()] == ["done", "running", "skipped", "planned"]
    ledger.release(1)
    assert ledger.acquire(3)  # C goes straight after B on GPU 1
    assert not ledger.acquire(2)  # a skipped placement takes nothing


def test_a_retry_gets_its_last_gpus_first_in_line():
    ledger = GpuLedger(_plan(("A", (0,), 0, 2), ("B", (0,), 2, 4)))
    assert ledger.acquire(0)
    ledger.finish("A")  # the attempt failed
    again = ledger.requeue("A")
    assert ledger.planned("A") == [again]
    assert ledger.acquire(again)  # ahead of B, planned next on GPU 0
    t, got = _acquire_later(ledger, 1)
    time.sleep(0.2)
    assert got == []
    ledger.release(again)
    t.join(2)
    assert got == [True]


def test_acquire_gives_up_when_cancelled():
    ledger = GpuLedger(_plan(("A", (0,), 0, 2), ("B", (0,), 2, 4)))
    assert ledger.acquire(0)
    stop = threading.Event()
    t = threading.Thread(target=lambda: got.append(ledger.acquire(1, stop, poll_s=0.05)), daemon=True)
    got: list = []
    t.start()
    stop.set()
    t.join(2)
    assert got == [False] and ledger.pending("B") == 1
