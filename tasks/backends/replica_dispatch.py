"""Shared state of one ReplicatedBackend run (tasks/backends/replicas.py).

Inputs: the run's requests, each replica's slot count and liveness. Outputs: `Dispatch`
(what is left, who holds what, guarded by its condition) and `RunView`, the snapshot a
leave rule is given.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from tasks.backends.base import BatchRequest


class Dispatch:
    """Shared state of one `run`: what is left, who holds what. Guarded by `cond`."""

    def __init__(self, requests: Iterable[BatchRequest], caps: list[float], alive: list[bool]):
        self.source = iter(requests)
        self.exhausted = False
        self.retry: deque[BatchRequest] = deque()
        self.caps = caps
        self.alive = list(alive)
        self.leaving = [False] * len(caps)
        self.held: list[dict[str, BatchRequest]] = [{} for _ in caps]
        self.answered: set[str] = set()
        self.stop = False
        self.running = 0  # driver threads not yet ended
        self.cond = threading.Condition()

    def add(self, cap: float) -> None:
        self.caps.append(cap)
        self.alive.append(True)
        self.leaving.append(False)
        self.held.append({})

    def outstanding(self, i: int) -> int:
        return len(self.held[i])

    def others_busy(self, i: int) -> bool:
        return any(self.alive[j] and self.held[j] for j in range(len(self.caps)) if j != i)

    def finished(self) -> bool:
        return self.exhausted and not self.retry and not any(self.held)

    def my_turn(self, i: int) -> bool:
        """No live replica with a free slot holds fewer requests than replica i."""
        mine = self.outstanding(i)
        return all(not self.alive[j] or self.leaving[j] or self.outstanding(j) >= self.caps[j]
                   or self.outstanding(j) >= mine for j in range(len(self.caps)) if j != i)

    def next_request(self) -> BatchRequest | None:
        if self.retry:
            return self.retry.popleft()
        try:
            return next(self.source)
        except StopIteration:
            self.exhausted = True
            return None


@dataclass(frozen=True)
class RunView:
    """What a leave rule sees of the run at one moment."""

    answered: int  # requests answered so far (each id once)
    in_flight: int  # requests handed to a replica and not answered
    others: tuple[int, ...]  # the other replicas that are live and not leaving


def run_view(d: Dispatch, i: int) -> RunView:
    others = tuple(j for j in range(len(d.caps)) if j != i and d.alive[j] and not d.leaving[j])
    return RunView(len(d.answered), sum(len(h) for h in d.held), others)
