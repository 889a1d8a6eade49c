"""The limiter's own logic: pacing, header hints, AIMD, reconciliation, sharing across threads.

No server needed; time is scaled with `window_s` so each test takes well under a second.
"""
from __future__ import annotations

import asyncio
import threading
import time
from email.utils import formatdate

import pytest

from tasks.backends.limit_hints import estimate_prompt_tokens, parse_duration, retry_after_s
from tasks.backends.limiter import EndpointLimiter, limiter_for


def _drive(lim: EndpointLimiter, n: int, prompt: int = 10, hold_s: float = 0.0, usage: dict | None = None) -> list[float]:
    """Take n permits concurrently; returns the monotonic time each was granted."""
    granted: list[float] = []

    async def one() -> None:
        async with lim.slot(prompt, 10, "x") as permit:
            granted.append(time.monotonic())
            await asyncio.sleep(hold_s)
            lim.answered(permit, None, usage)

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(main())
    return sorted(granted)


def test_parse_duration_and_retry_after_precedence():
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == 1.5 and parse_duration("6m0s") == 360 and parse_duration("1h2m3s") == 3723
    assert parse_duration("2") == 2.0 and parse_duration(None) is None
    assert retry_after_s({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert retry_after_s({"Retry-After": "3"}) == 3.0
    assert 8 <= retry_after_s({"Retry-After": formatdate(time.time() + 10, usegmt=True)}) <= 10
    hinted = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.2s",
              "x-ratelimit-remaining-requests": "40", "x-ratelimit-reset-requests": "9s"}
    assert retry_after_s(hinted) == 1.2  # the exhausted limit's reset, not the other one's
    assert retry_after_s({}) is None


def test_token_estimate_falls_back_to_four_chars_per_token():
    msgs = [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "y" * 81}]
    assert estimate_prompt_tokens(msgs, "some-open-model") == 3 + 4 + 100 + 4 + 21
    est = estimate_prompt_tokens(msgs, "gpt-4o")  # tiktoken when its encoding loads, else the same fallback
    assert 3 + 8 + 50 <= est <= 3 + 8 + 481


def test_rpm_bucket_paces_requests():
    lim = EndpointLimiter("t", rpm=60, window_s=1.0, headroom=1.0)  # 60 per second, burst 0.5 request
    granted = _drive(lim, 31)
    span = granted[-1] - granted[0]
    assert 0.45 <= span <= 1.2  # 30 gaps of 1/60 s; never a burst above the rate
    gaps = [b - a for a, b in zip(granted, granted[1:])]
    assert sum(g < 0.005 for g in gaps) <= 2


def test_tpm_bucket_reconciles_with_reported_usage():
    # 6000 tokens per second, one request at a time so each answer is reconciled before the next
    lim = EndpointLimiter("t", tpm=6000, window_s=1.0, headroom=1.0, max_concurrency=1)
    # estimated at 10 prompt + 10 answer tokens, each answer reports 300: the debits slow the rest
    granted = _drive(lim, 11, usage={"prompt_tokens": 200, "completion_tokens": 100, "total_tokens": 300})
    assert 0.4 <= granted[-1] - granted[0] <= 1.0  # ~10 x 300 tokens at 6000/s = 0.5 s
    snap = lim.snapshot()
    assert snap["tokens_reported"] == 11 * 300
    assert snap["completion_mean"]["x"] > 50  # learned from usage (starts at the 10-token cap)
    assert snap["prompt_ratio"] > 2  # 200 reported for an estimate of 10


def test_429_pauses_cuts_once_per_event_and_recovers():
    lim = EndpointLimiter("t", rpm=6000, window_s=1.0, max_concurrency=8)
    assert lim.concurrency == 8
    permits = []

    async def take() -> None:
        async with lim.slot(10, 10) as p:
            permits.append(p)

    asyncio.run(take())
    asyncio.run(take())
    wait = lim.rate_limited(permits[0], {"retry-after-ms": "300"})
    assert wait == 0.3 and lim.concurrency == 4
    lim.rate_limited(permits[1], {"retry-after-ms": "300"})  # sent before the cut: same congestion event
    assert lim.concurrency == 4 and lim.stats.cuts == 1
    t = time.monotonic()
    asyncio.run(take())
    assert time.monotonic() - t >= 0.28  # Retry-After honoured by every later request
    for _ in range(20):
        lim.answered(permits[0], None, None)
    assert 6 < lim.concurrency <= 8  # additive increase, capped at the maximum


def test_concurrency_cap_is_shared_across_threads_and_loops():
    lim = EndpointLimiter("t", max_concurrency=2, rpm=100000, window_s=1.0)
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    async def one() -> None:
        async with lim.slot(1, 1):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            await asyncio.sleep(0.02)
            with lock:
                state["now"] -= 1

    def thread() -> None:
        async def main() -> None:
            await asyncio.gather(*(one() for _ in range(6)))
        asyncio.run(main())

    threads = [threading.Thread(target=thread) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert state["max"] == 2 and lim.snapshot()["in_flight"] == 0


def test_cancelled_waiter_does_not_leak_a_slot():
    lim = EndpointLimiter("t", max_concurrency=1, rpm=100000, window_s=1.0)

    async def main() -> None:
        async def hold() -> None:
            async with lim.slot(1, 1):
                await asyncio.sleep(0.05)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        await asyncio.wait_for(hold(), 1.0)  # the slot is free again

    asyncio.run(main())
    assert lim.snapshot()["in_flight"] == 0


def test_limits_learned_from_headers_and_slow_start():
    lim = EndpointLimiter("t", max_concurrency=16)
    assert lim.limits() == {"requests": None, "tokens": None} and lim.concurrency == 1
    permit = None

    async def take() -> None:
        nonlocal permit
        async with lim.slot(10, 10) as permit:
            pass

    asyncio.run(take())
    lim.answered(permit, None, None)
    assert lim.concurrency == 2  # slow start: one more per success while nothing is known
    lim.answered(permit, {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "90000",
                          "x-ratelimit-remaining-tokens": "1200"}, None)
    assert lim.limits() == {"requests": 500, "tokens": 90000}
    assert lim.concurrency == 16  # pacing protects the server from here on
    assert lim.buckets["tokens"].level <= 1200  # starts from what the server said was left
    configured = EndpointLimiter("u", rpm=100, tpm=10**6)
    configured.answered(permit, {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "90000"}, None)
    assert configured.limits() == {"requests": 100, "tokens": 90000}  # the lower of the two wins


def test_registry_shares_one_limiter_per_endpoint():
    a = limiter_for("openai|u|gpt-4o", rpm=10)
    assert limiter_for("openai|u|gpt-4o", rpm=99) is a and limiter_for("openai|u|other", rpm=10) is not a


def test_prefect_gate_is_taken_per_request(monkeypatch):
    import prefect.concurrency.asyncio as pca

    calls = []

    async def fake_rate_limit(names, occupy=1, timeout_seconds=None, strict=False):
        calls.append((names, occupy, strict))

    monkeypatch.setattr(pca, "rate_limit", fake_rate_limit)
    _drive(EndpointLimiter("t", rpm=100000, window_s=1.0, gate="judge-gate"), 3)
    assert calls == [("judge-gate", 1, True)] * 3


def test_remaining_header_lowers_a_bucket_that_holds_too_much():
    lim = EndpointLimiter("t", tpm=60_000, window_s=60.0, burst=0.1)  # 1000 tokens/s, 6000 burst
    permit = None

    async def take() -> None:
        nonlocal permit
        async with lim.slot(100, 100, "x") as permit:
            pass

    asyncio.run(take())
    assert lim.buckets["tokens"].level > 5000
    # the server says nothing was left when it admitted this request (another client, a stall)
    lim.answered(permit, {"x-ratelimit-remaining-tokens": "0"}, {"prompt_tokens": 100, "completion_tokens": 100})
    assert lim.buckets["tokens"].level < 200 and lim.stats.resyncs == 1
    lim.answered(permit, {"x-ratelimit-remaining-tokens": "59000"}, None)  # never raised by a header
    assert lim.buckets["tokens"].level < 300
