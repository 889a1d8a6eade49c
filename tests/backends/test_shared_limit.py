"""The shared gate: config errors, pacing in one process, one budget across four processes,
token settling, timeouts, and the async path."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from tasks.backends.shared_limit import (
    FileGate,
    PrefectGate,
    SharedLimit,
    estimate_tokens,
    open_gate,
    prefect_limit_specs,
)
from tasks.generation.config import GenerationConfig


def _limit(tmp_path, **kw) -> SharedLimit:
    return SharedLimit(**{"name": "key-a", "path": str(tmp_path), **kw})


def test_a_limit_needs_rpm_or_tpm_and_a_plain_name(tmp_path):
    with pytest.raises(ValidationError, match="needs rpm or tpm"):
        SharedLimit(name="x")
    with pytest.raises(ValidationError, match="name"):
        SharedLimit(name="../etc", rpm=10)


def test_only_openai_entries_take_a_shared_limit():
    with pytest.raises(ValidationError, match="shared_limit needs serve openai"):
        GenerationConfig.model_validate({"k": 1, "models": [
            {"name": "a", "serve": "vllm_server", "model": "m", "shared_limit": {"name": "k", "rpm": 5}}]})


def test_one_process_is_paced_after_its_burst(tmp_path):
    gate = FileGate(_limit(tmp_path, rpm=1200))  # 19/s with headroom 0.95, burst of 5
    started = time.monotonic()
    for _ in range(25):
        gate.acquire()
    elapsed = time.monotonic() - started
    assert (25 - 5) / 19 - 0.05 <= elapsed <= 3.0


WORKER = """
import json, sys, time
from tasks.backends.shared_limit import FileGate, SharedLimit
gate = FileGate(SharedLimit(name=sys.argv[1], path=sys.argv[2], rpm=1200))
start_at = float(sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))
stamps = []
for _ in range(10):
    gate.acquire()
    stamps.append(time.time())
print(json.dumps(stamps))
"""


def _four_processes(tmp_path, names: list[str]) -> list[float]:
    start_at = time.time() + 3.0  # all four begin together, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, name, str(tmp_path), str(start_at)],
                              stdout=subprocess.PIPE, text=True) for name in names]
    return sorted(t for p in procs for t in json.loads(p.communicate(timeout=60)[0]))


def test_four_processes_share_one_budget(tmp_path):
    stamps = _four_processes(tmp_path, ["key-a"] * 4)
    rate, burst = 1200 * 0.95 / 60, 1200 / 240
    assert stamps[-1] - stamps[0] >= (40 - burst) / rate - 0.1  # 40 sends at 19/s after a burst of 5
    for i, t in enumerate(stamps):  # no span holds more than the burst plus its refill
        within = [s for s in stamps[i:] if s - t <= 0.5]
        assert len(within) <= burst + rate * 0.5 + 1


def test_different_names_are_different_budgets(tmp_path):
    stamps = _four_processes(tmp_path, ["k1", "k2", "k3", "k4"])
    assert stamps[-1] - stamps[0] < (40 - 5) / 19 / 2  # each paced alone: about four times faster


def test_an_answer_dearer_than_its_estimate_is_charged(tmp_path):
    gate = FileGate(_limit(tmp_path, tpm=6000))  # 95 tokens/s, burst 25
    t0 = time.monotonic()
    assert gate.acquire(tokens=20) < 0.05
    gate.settle(estimated=20, actual=60)  # 40 more than estimated: the bucket goes into debt
    gate.acquire(tokens=10)
    # From full (25) at t0: 60 charged, then 10 more, so 45 tokens of refill at 95/s must pass
    # since t0. Counted from t0, not as the second wait alone: on a busy machine part of the
    # refill happens between the calls.
    assert time.monotonic() - t0 >= (60 + 10 - 25) / 95 - 0.02


def test_a_wait_past_timeout_raises(tmp_path):
    gate = FileGate(_limit(tmp_path, rpm=60, timeout_s=0.3))
    gate.acquire()
    with pytest.raises(TimeoutError, match="shared_limit.timeout_s"):
        gate.acquire()


def test_async_acquisitions_interleave_without_blocking_the_loop(tmp_path):
    gate = FileGate(_limit(tmp_path, rpm=1200))
    ticks = []

    async def ticker():
        for _ in range(20):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        t = asyncio.create_task(ticker())
        await asyncio.gather(*(gate.acquire_async() for _ in range(15)))
        await t

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started >= (15 - 5) / 19 - 0.05
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.2  # the loop kept running while gated


def test_estimates_and_prefect_specs(tmp_path):
    body = {"max_tokens": 100, "messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_tokens(body) == 100 + 8 + 100
    lim = _limit(tmp_path, rpm=600, tpm=120000, store="prefect")
    assert prefect_limit_specs(lim) == {"key-a-requests": (2, 9.5), "key-a-tokens": (500, 1900.0)}
    assert isinstance(open_gate(lim), PrefectGate) and isinstance(open_gate(_limit(tmp_path, rpm=1)), FileGate)


def test_pool_entries_and_judges_alike_send_through_the_shared_gate(tmp_path):
    from tasks.generation.engines import engine_groups, open_backend
    from tasks.rating.config import JudgeEndpoint
    from tasks.rating.judges import judge_backend

    shared = {"name": "one-key", "path": str(tmp_path), "rpm": 60}
    pool = GenerationConfig.model_validate({"k": 1, "models": [
        {"name": "hosted", "serve": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "shared_limit": shared}]})
    entry = open_backend(engine_groups(pool)[0], str(tmp_path))
    judge = judge_backend(JudgeEndpoint(name="j", kind="openai_compatible", model="m", base_url="http://127.0.0.1:9/v1",
                                        shared_limit=shared))
    for backend in (entry, judge):
        assert isinstance(backend.shared_gate, FileGate) and backend.shared_gate.limit.name == "one-key"
