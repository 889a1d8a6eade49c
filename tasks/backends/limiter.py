"""Per-endpoint request limiting for every OpenAI-protocol endpoint: RPM and TPM buckets, a concurrency cap
that adapts to 429s (AIMD), and limits learned from the server's headers.

Inputs: for each request, an estimate of its prompt tokens and its answer cap; afterwards
the answer's response headers and `usage`, or the 429's headers. Outputs: `async with
limiter.slot(...)` returns when the request may be sent.

- Tokens are estimated before sending (tiktoken for OpenAI model names when its encoding
  loads offline, else 4 characters per token) plus the running mean answer size for that
  kind of request, then reconciled with the `usage` the answer reports: the difference is
  debited or refunded, and the prompt estimate is corrected by the observed ratio.
- Buckets refill continuously at limit x headroom / window and hold a small burst, so
  requests are paced rather than sent in a minute's worth at once. A request goes when the
  buckets cover its whole estimated cost plus a small cushion (`cushion_s` of refill, kept
  for good: it absorbs requests that reach the server bunched after a stall); nothing is
  booked ahead, so each waiter decides with the latest reconciled levels.
- `x-ratelimit-limit-requests/-tokens` headers lower (or set) the configured limits;
  `x-ratelimit-remaining-*` lowers a bucket that holds more than the server can have left
  (a request that reached the server late, a key shared with another client).
- On a 429 the endpoint pauses for `retry-after-ms` / `Retry-After` / `x-ratelimit-reset-*`
  (full-jitter exponential when none is given, one step up per congestion event, not per
  429: the answers of requests already in flight are echoes of the same event), the
  buckets restart empty after the pause, and the concurrency cap halves once per congestion
  event; each success adds 1/cap back
  (additive increase). With no limit known up front it starts at one request in flight and
  adds one per success until the first 429 or the first limit headers.

One limiter per endpoint per process (`limiter_for`), shared by every thread and event loop:
state sits behind a threading lock and a waiter sleeps (asyncio.sleep) exactly until the
buckets could fit it, then checks again; no per-loop primitives. aiolimiter's
AsyncLimiter is bound to one loop and cannot debit after the fact, hence this class.
Across processes, `gate` names an optional Prefect global concurrency limit taken per request
(coarse; on a SQLite Prefect server it throttles far below its setting).
"""
from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

from tasks.backends.buckets import LOCK as _LOCK
from tasks.backends.buckets import Bucket as _Bucket
from tasks.backends.buckets import Slots as _Slots
from tasks.backends.limit_hints import estimate_prompt_tokens, retry_after_s

RESYNC_ALWAYS_BELOW = 512  # requests in the window
RESYNC_EVERY_S = 0.1

__all__ = ["EndpointLimiter", "Permit", "limiter_for", "reset_limiters", "estimate_prompt_tokens", "retry_after_s"]


@dataclass
class Permit:
    """One admitted request: what was reserved, so the answer can reconcile it."""

    label: str
    prompt_est: int
    completion_est: int
    prompt_raw: int = 0  # the caller's estimate before the learned correction
    sent_at: float = 0.0
    epoch: int = 0
    settled: bool = False
    actual: int | None = None  # total tokens the answer reported

    @property
    def reserved(self) -> int:
        return self.prompt_est + self.completion_est


@dataclass
class LimiterStats:
    requests: int = 0
    successes: int = 0
    rate_limited: int = 0
    cuts: int = 0
    resyncs: int = 0
    paused_s: float = 0.0
    tokens_estimated: int = 0
    tokens_reported: int = 0
    learned: dict[str, int] = field(default_factory=dict)


class EndpointLimiter:
    """RPM/TPM buckets + adaptive concurrency for one endpoint (see the module docstring)."""

    def __init__(self, key: str, *, rpm: float | None = None, tpm: float | None = None, max_concurrency: int = 16,
                 learn_limits: bool = True, window_s: float = 60.0, burst: float = 1 / 120, headroom: float = 0.99,
                 cushion_s: float = 0.25,
                 min_concurrency: int = 1, gate: str | None = None, model: str = "", slow_start: bool | None = None):
        self.key, self.model, self.gate = key, model, gate
        self.window_s, self.burst, self.headroom, self.cushion_s = window_s, burst, headroom, cushion_s
        self.learn_limits = learn_limits
        self.configured = {"requests": rpm, "tokens": tpm}
        self.buckets: dict[str, _Bucket | None] = {
            k: _Bucket(v, window_s, burst, headroom, cushion_s=cushion_s) if v else None
            for k, v in self.configured.items()}
        self.max_concurrency, self.min_concurrency = max_concurrency, min_concurrency
        # Without known limits, start with one request in flight (its answer's headers may
        # teach the limits) and grow by one per success until the first 429 (slow start).
        self.slow_start = not (rpm or tpm) if slow_start is None else slow_start
        self.slots = _Slots(1.0 if self.slow_start else float(max_concurrency))
        self.blocked_until = 0.0
        self.epoch = 0
        self.last_cut = -math.inf
        self.backoff_level = 0
        self.completion_mean: dict[str, float] = {}
        self.sent: deque[Permit] = deque()  # recent requests, to compare with x-ratelimit-remaining-*
        self.prompt_ratio = 1.0
        self._resynced_at = -math.inf
        self.stats = LimiterStats()

    # --- admission ---------------------------------------------------------------------
    @asynccontextmanager
    async def slot(self, prompt_tokens: int, max_tokens: int | None = None, label: str = "") -> AsyncIterator[Permit]:
        """Wait until a request of about `prompt_tokens` (answer capped at `max_tokens`) may go."""
        await self._take_slot()
        permit = None
        try:
            permit = await self._reserve(prompt_tokens, max_tokens, label)
            if self.gate:
                from prefect.concurrency.asyncio import rate_limit
                await rate_limit(self.gate, occupy=1, strict=True)
            with _LOCK:
                permit.sent_at = time.monotonic()
                self.sent.append(permit)
                while self.sent and self.sent[0].sent_at < permit.sent_at - self.window_s:
                    self.sent.popleft()
            yield permit
        finally:
            self._give_slot()

    async def _take_slot(self) -> None:
        with _LOCK:
            if self.slots.try_take():
                return
            fut = asyncio.get_running_loop().create_future()
            self.slots.waiters.append((asyncio.get_running_loop(), fut))
        try:
            await fut
        except asyncio.CancelledError:
            with _LOCK:
                entry = next((w for w in self.slots.waiters if w[1] is fut), None)
                if entry:
                    self.slots.waiters.remove(entry)
            if fut.done() and not fut.cancelled():
                self._give_slot()
            raise

    def _give_slot(self) -> None:
        with _LOCK:
            self.slots.in_use -= 1
            self.slots.wake()

    async def _reserve(self, prompt_tokens: int, max_tokens: int | None, label: str) -> Permit:
        """Take the request's cost from the buckets once it fits. Nothing is booked ahead:
        each waiter re-checks with the latest reconciled levels and pauses when it wakes."""
        while True:  # each pass returns or sleeps until the buckets may fit it
            with _LOCK:
                now = time.monotonic()
                p_est = max(1, round(prompt_tokens * self.prompt_ratio))
                # an unseen kind of request is booked at its answer cap (refunded on answer):
                # another kind's mean would under-book, e.g. a short critique for an aspect call
                c_est = round(self.completion_mean.get(label) or min(max_tokens or 1024, 1024))
                costs = ((self.buckets["requests"], 1), (self.buckets["tokens"], p_est + c_est))
                wait = max([self.blocked_until - now, 0.0] + [b.wait_for(c, now) for b, c in costs if b])
                if wait <= 0:
                    for b, c in costs:
                        if b:
                            b.take(c)
                    self.stats.requests += 1
                    self.stats.tokens_estimated += p_est + c_est
                    return Permit(label, p_est, c_est, prompt_raw=prompt_tokens, epoch=self.epoch)
            await asyncio.sleep(wait)

    # --- feedback ----------------------------------------------------------------------
    def answered(self, permit: Permit, headers: Mapping[str, str] | None, usage: Mapping[str, Any] | None) -> None:
        """An answer came back: learn limits, reconcile tokens, grow concurrency."""
        with _LOCK:
            if headers is not None:
                self._learn(headers)
            self.stats.successes += 1
            self.backoff_level = 0
            step = 1.0 if self.slow_start else 1.0 / max(1.0, self.slots.cap)
            self.slots.cap = min(float(self.max_concurrency), self.slots.cap + step)
            self.slots.wake()
            if usage and not permit.settled:
                permit.settled = True
                p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                actual = int(usage.get("total_tokens") or p + c)
                permit.actual = actual
                self.stats.tokens_reported += actual
                bucket = self.buckets["tokens"]
                if bucket is not None and permit.epoch == self.epoch:
                    bucket.adjust(actual - permit.reserved)
                if p and permit.prompt_raw:
                    self.prompt_ratio = 0.8 * self.prompt_ratio + 0.2 * (p / permit.prompt_raw)
                prev = self.completion_mean.get(permit.label)
                self.completion_mean[permit.label] = c if prev is None else 0.8 * prev + 0.2 * c
            if headers is not None and permit.epoch == self.epoch and self._resync_due():
                self._resync(permit, headers)

    def _resync_due(self) -> bool:
        """A resync sums over the window's requests: with a full window at high rates, do it
        at most every RESYNC_EVERY_S (a stall is still caught within that) instead of per answer."""
        now = time.monotonic()
        if len(self.sent) <= RESYNC_ALWAYS_BELOW or now - self._resynced_at >= RESYNC_EVERY_S:
            self._resynced_at = now
            return True
        return False

    def _resync(self, permit: Permit, headers: Mapping[str, str]) -> None:
        """Lower a bucket that holds more than the server can have left. The server's
        `x-ratelimit-remaining-*` was its level when it admitted this request; add what it
        has refilled since and take off what we sent after. Catches stalls (a request sent
        late has less left than our model assumed); never raises a level."""
        h = {k.lower(): v for k, v in headers.items()}
        now = time.monotonic()
        for kind in ("requests", "tokens"):
            b, raw = self.buckets[kind], h.get(f"x-ratelimit-remaining-{kind}")
            if b is None or raw is None or b.t > now:
                continue
            try:
                remaining = float(raw)
            except ValueError:
                continue
            later = sum(1 if kind == "requests" else (p.actual if p.actual is not None else p.reserved)
                        for p in self.sent if p.sent_at > permit.sent_at)
            server_now = remaining + (now - permit.sent_at) * b.rate / b.headroom - later
            b._refill(now)
            if b.level > server_now:
                b.level = server_now
                self.stats.resyncs += 1

    def rate_limited(self, permit: Permit, headers: Mapping[str, str] | None) -> float:
        """A 429: pause the endpoint, restart the buckets empty, halve concurrency once per
        congestion event. Returns the pause in seconds."""
        with _LOCK:
            now = time.monotonic()
            self.stats.rate_limited += 1
            if headers is not None:
                self._learn(headers)
            wait = retry_after_s(headers or {})
            new_event = permit.sent_at >= self.last_cut  # sent after the last cut: news, not an echo
            if wait is None:  # no hint: full-jitter exponential backoff, one step per congestion event
                if new_event:
                    self.backoff_level += 1
                wait = random.uniform(0, min(60.0, 0.5 * 2 ** max(0, self.backoff_level - 1)))
            until = now + wait
            if until > self.blocked_until:
                self.stats.paused_s += until - max(now, self.blocked_until)
                self.blocked_until = until
                for b in self.buckets.values():
                    if b is not None:
                        b.pause_until(until)
                self.epoch += 1
            self.slow_start = False
            if new_event:
                self.slots.cap = max(float(self.min_concurrency), self.slots.cap / 2)
                self.last_cut = now
                self.stats.cuts += 1
            return wait

    def _learn(self, headers: Mapping[str, str]) -> None:
        if not self.learn_limits:
            return
        h = {k.lower(): v for k, v in headers.items()}
        for kind in ("requests", "tokens"):
            raw = h.get(f"x-ratelimit-limit-{kind}")
            try:
                limit = float(raw) if raw else None
            except ValueError:
                limit = None
            if not limit or limit <= 0:
                continue
            conf = self.configured[kind]
            target = min(limit, conf) if conf else limit
            b = self.buckets[kind]
            if b is None:  # start from what the server says is left, not from a full bucket
                left = h.get(f"x-ratelimit-remaining-{kind}")
                level = float(left) if left and left.replace(".", "", 1).isdigit() else 0.0
                self.buckets[kind] = _Bucket(target, self.window_s, self.burst, self.headroom, level, self.cushion_s)
                self.stats.learned[kind] = int(limit)
                if self.slow_start:  # pacing protects the server now; no need to creep up
                    self.slow_start = False
                    self.slots.cap = float(self.max_concurrency)
            elif b.limit != target:
                b.set_limit(target)
                self.stats.learned[kind] = int(limit)

    # --- reporting ---------------------------------------------------------------------
    @property
    def concurrency(self) -> float:
        return self.slots.cap

    def limits(self) -> dict[str, float | None]:
        return {k: (b.limit if b else None) for k, b in self.buckets.items()}

    def snapshot(self) -> dict[str, Any]:
        with _LOCK:
            return {"key": self.key, "limits": self.limits(), "concurrency": self.slots.cap,
                    "in_flight": self.slots.in_use, "prompt_ratio": self.prompt_ratio,
                    "completion_mean": dict(self.completion_mean), **self.stats.__dict__}


_REGISTRY: dict[str, EndpointLimiter] = {}


def limiter_for(key: str, **kwargs: Any) -> EndpointLimiter:
    """The process-wide limiter of an endpoint, created on first use with `kwargs`."""
    with _LOCK:
        lim = _REGISTRY.get(key)
        if lim is None:
            lim = _REGISTRY[key] = EndpointLimiter(key, **kwargs)
        return lim


def reset_limiters() -> None:
    """Forget every limiter and breaker (tests; a new configuration in the same process)."""
    from tasks.backends.faults import reset_breakers

    with _LOCK:
        _REGISTRY.clear()
    reset_breakers()
