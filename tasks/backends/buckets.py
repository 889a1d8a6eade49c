"""The two primitives under the judge's limiter: a paced token bucket and a concurrency cap.

Inputs/outputs: plain state; callers hold `LOCK` around every method (Slots takes it
itself when a grant finds its waiter gone). Shared across threads and event loops, which is
why neither uses asyncio primitives: waiters park on futures of their own loop and are
woken with call_soon_threadsafe.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

LOCK = threading.RLock()  # guards every limiter's state; waits happen outside it


class Bucket:
    """Continuously refilled bucket. A request may go when the level covers its whole cost;
    the capacity is a small burst, or the largest request seen if that is larger (so a big
    request waits for the tokens it needs instead of never fitting). `t` lies in the future
    during a 429 pause; `level` goes negative when an answer turns out dearer than estimated."""

    def __init__(self, per_window: float, window_s: float, burst: float, headroom: float, level: float | None = None,
                 cushion_s: float = 0.0):
        self.window_s, self.burst, self.headroom, self.cushion_s = window_s, burst, headroom, cushion_s
        self.t = time.monotonic()
        self.largest = 0.0
        self.set_limit(per_window)
        self.level = self.capacity if level is None else min(level, self.capacity)

    def set_limit(self, per_window: float) -> None:
        self.limit = per_window
        self.rate = per_window * self.headroom / self.window_s

    @property
    def capacity(self) -> float:
        return max(self.limit * self.burst, self.largest, 1e-9)

    def _refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits with the cushion left over (0: now). Takes nothing.
        The cushion (cushion_s of refill) stays in the bucket for good: it absorbs requests
        that reach the server bunched together (client or server stalls) and costs no
        throughput once the initial burst is spent."""
        need = cost + self.rate * self.cushion_s
        self.largest = max(self.largest, need)
        self._refill(now)
        return max(0.0, self.t - now) + max(0.0, need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost

    def adjust(self, delta: float) -> None:
        """Debit (delta > 0) or refund (delta < 0) after the answer's usage is known."""
        self.level = min(self.capacity, self.level - delta)

    def pause_until(self, t: float) -> None:
        self.level, self.t = 0.0, max(self.t, t)


class Slots:
    """A concurrency cap shared across threads and event loops; the cap may change."""

    def __init__(self, cap: float):
        self.cap, self.in_use = cap, 0
        self.waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    def try_take(self) -> bool:
        if self.in_use < max(1, int(self.cap)) and not self.waiters:
            self.in_use += 1
            return True
        return False

    def wake(self) -> None:
        while self.waiters and self.in_use < max(1, int(self.cap)):
            loop, fut = self.waiters.popleft()
            self.in_use += 1
            try:
                loop.call_soon_threadsafe(self._grant, fut)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                self.in_use -= 1

    def _grant(self, fut: asyncio.Future) -> None:
        if fut.cancelled():
            self._give_back()
        else:
            fut.set_result(None)

    def _give_back(self) -> None:
        with LOCK:
            self.in_use -= 1
            self.wake()
