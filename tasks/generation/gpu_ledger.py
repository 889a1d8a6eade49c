"""The GPUs of one flow run's elastic plan: who may hold which GPU, and when.

Inputs: a `Plan`'s placements (one per server segment). Output: a `GpuLedger` that the
engine tasks of one run share in-process (`open_ledger` / `ledger` by a run-local key;
the tasks run in threads of the flow's process).

Per GPU the ledger keeps the ordered placements planned on it (the cluster simulation's
lanes, bench/cluster_des.py): a placement may take its GPUs once it is first in every
lane of its GPUs and each of them has been released by the server before it. A server
holds its GPUs from its launch until it stops (`release`). A placement whose engine is
done is skipped (`skip`, or `finish` for every placement an engine task left unused), so
it neither launches nor holds back the ones after it. A retried engine task whose
placements are all used gets its last placement's GPUs again (`requeue`), first in line,
so it waits only for the servers holding them now; so does, without re-planning, an engine
whose last server was lost within its attempt (on that server's GPUs).

A run-time re-plan (tasks/generation/replanner.py) replaces the placements not yet taken
of the engines it re-planned (`replace_planned`; their state becomes "replaced") with its
own, appended in plan order after every claim in the lanes, and moves those engines'
planned ends. An engine task that has ended (`finish`) is out of any later plan until its
retry enters again (`reopen`).

Placements are numbered in plan order (planned start, then engine id), the order the
engine tasks are submitted in; since every lane is in that order, the first placement
not yet started can always go once its GPUs are released: the ledger cannot deadlock.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from tasks.generation.schedule_plan import Placement, Plan

PLANNED, RUNNING, DONE, SKIPPED, REPLACED = "planned", "running", "done", "skipped", "replaced"


@dataclass
class Claim:
    """One placement's life in the ledger (times in seconds since the ledger opened)."""

    index: int
    placement: Placement
    state: str = PLANNED
    acquired_s: float | None = None
    released_s: float | None = None


class GpuLedger:
    def __init__(self, plan: Plan, clock=time.monotonic):
        self.clock = clock
        self.t0 = clock()
        self.gpus, self.per_node = plan.gpus, plan.gpus_per_node
        ordered = sorted((p for p in plan.placements if p.gpus), key=lambda p: (p.start_s, p.engine_id))
        self.claims = [Claim(i, p) for i, p in enumerate(ordered)]
        self.lanes: dict[int, deque[int]] = {g: deque() for g in range(plan.gpus)}
        for c in self.claims:
            for g in c.placement.gpus:
                self.lanes[g].append(c.index)
        self.busy: dict[int, int] = {}  # GPU -> the claim holding it
        self.engine_end_s = {}  # engine -> its planned end
        for c in self.claims:
            p = c.placement
            self.engine_end_s[p.engine_id] = max(self.engine_end_s.get(p.engine_id, 0.0), p.end_s)
        self.ended: set[str] = set()  # engines whose task has ended (finish), until a retry reopens
        self.replanner = None  # tasks.generation.replanner.Replanner when the run re-plans
        self.cond = threading.Condition()

    def now(self) -> float:
        return self.clock() - self.t0

    def planned(self, engine_id: str) -> list[int]:
        """The engine's placements not yet taken or skipped, in plan order."""
        with self.cond:
            return [c.index for c in self.claims if c.placement.engine_id == engine_id and c.state == PLANNED]

    def pending(self, engine_id: str) -> int:
        return len(self.planned(engine_id))

    def next_planned(self, engine_id: str) -> int | None:
        """The engine's first placement not yet taken, skipped or replaced."""
        planned = self.planned(engine_id)
        return planned[0] if planned else None

    def wait(self, timeout_s: float) -> None:
        """Sleep until the ledger changes (a release, a skip, a new plan) or the timeout."""
        with self.cond:
            self.cond.wait(timeout_s)

    def reopen(self, engine_id: str) -> None:
        """A (retried) task of the engine has entered: later re-plans include it again."""
        with self.cond:
            self.ended.discard(engine_id)

    def replace_planned(self, engine_ids: set[str], placements: list[Placement],
                        engine_end_s: dict[str, float]) -> list[int]:
        """A new plan for the rest: the untaken placements of `engine_ids` are replaced by
        `placements`, those engines' planned ends by `engine_end_s`. Placements of an engine
        whose task has ended meanwhile are dropped (nobody would take them, and they would
        hold back the lanes they are in). Returns the new claims' indices."""
        with self.cond:
            engine_ids = set(engine_ids) - self.ended
            for c in self.claims:
                if c.state == PLANNED and c.placement.engine_id in engine_ids:
                    for g in c.placement.gpus:
                        self.lanes[g].remove(c.index)
                    c.state = REPLACED
            new = []
            for p in sorted((p for p in placements if p.gpus and p.engine_id in engine_ids),
                            key=lambda p: (p.start_s, p.engine_id)):
                claim = Claim(len(self.claims), p)
                self.claims.append(claim)
                for g in p.gpus:
                    self.lanes[g].append(claim.index)
                new.append(claim.index)
            for e in engine_ids:
                if e in engine_end_s:
                    self.engine_end_s[e] = engine_end_s[e]
            self.cond.notify_all()
            return new

    def _ready(self, i: int) -> bool:
        gpus = self.claims[i].placement.gpus
        return all(self.lanes[g] and self.lanes[g][0] == i and g not in self.busy for g in gpus)

    def acquire(self, i: int, cancel: threading.Event | None = None, poll_s: float = 0.2) -> bool:
        """Wait until placement i may take its GPUs and take them; False when `cancel` is set
        first or the placement was skipped meanwhile."""
        with self.cond:
            claim = self.claims[i]
            while claim.state == PLANNED and not self._ready(i):
                if cancel is not None and cancel.is_set():
                    return False
                self.cond.wait(poll_s)
            if claim.state != PLANNED:
                return False
            for g in claim.placement.gpus:
                self.lanes[g].popleft()
                self.busy[g] = i
            claim.state, claim.acquired_s = RUNNING, self.now()
            self.cond.notify_all()
            return True

    def release(self, i: int, state: str = DONE) -> None:
        """The server of placement i stopped: its GPUs go to the placements after it."""
        with self.cond:
            claim = self.claims[i]
            if claim.state != RUNNING:
                return
            for g in claim.placement.gpus:
                if self.busy.get(g) == i:
                    del self.busy[g]
            claim.state, claim.released_s = state, self.now()
            self.cond.notify_all()

    def skip(self, i: int) -> None:
        """Placement i will not launch (its engine is done): out of every lane it is in, or,
        if it has just taken its GPUs, it gives them back at once."""
        with self.cond:
            claim = self.claims[i]
            if claim.state == RUNNING:
                self.release(i, SKIPPED)
                return
            if claim.state != PLANNED:
                return
            for g in claim.placement.gpus:
                self.lanes[g].remove(i)
            claim.state = SKIPPED
            self.cond.notify_all()

    def finish(self, engine_id: str) -> None:
        """The engine's task ended: release what it holds, skip what it did not use."""
        with self.cond:
            self.ended.add(engine_id)
            for c in self.claims:
                if c.placement.engine_id == engine_id and c.state == RUNNING:
                    self.release(c.index)
                elif c.placement.engine_id == engine_id and c.state == PLANNED:
                    self.skip(c.index)

    def requeue(self, engine_id: str, placement: Placement | None = None) -> int:
        """A new placement on the GPUs of `placement` (by default the engine's last one),
        first in their lanes."""
        with self.cond:
            last = [c for c in self.claims if c.placement.engine_id == engine_id]
            if not last:
                raise KeyError(f"engine {engine_id!r} has no placement on a GPU")
            claim = Claim(len(self.claims), placement or last[-1].placement)
            self.claims.append(claim)
            for g in claim.placement.gpus:
                self.lanes[g].appendleft(claim.index)
            self.cond.notify_all()
            return claim.index

    def history(self) -> list[dict]:
        """Every placement's fate, for the stage summary and tests."""
        with self.cond:
            return [{"engine_id": c.placement.engine_id, "gpus": list(c.placement.gpus),
                     "replicas": c.placement.replicas, "state": c.state,
                     "acquired_s": None if c.acquired_s is None else round(c.acquired_s, 3),
                     "released_s": None if c.released_s is None else round(c.released_s, 3)}
                    for c in self.claims]


_LEDGERS: dict[str, GpuLedger] = {}
_LOCK = threading.Lock()


def open_ledger(key: str, plan: Plan) -> GpuLedger:
    with _LOCK:
        _LEDGERS[key] = GpuLedger(plan)
        return _LEDGERS[key]


def ledger(key: str) -> GpuLedger:
    with _LOCK:
        if key not in _LEDGERS:
            raise KeyError(f"no GPU ledger {key!r} in this process: elastic engine tasks must run in the flow's "
                           "process (a thread pool task runner)")
        return _LEDGERS[key]


def close_ledger(key: str) -> None:
    with _LOCK:
        _LEDGERS.pop(key, None)
