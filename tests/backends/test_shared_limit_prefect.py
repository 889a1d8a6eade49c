"""The `prefect` store of a shared limit against a real Prefect API server (the session's test
API, SQLite): the limits are created from the setting, and taking them paces sends at their
slot decay.

SQLite delivers these limits below their rate under load, so only the lower bound of the
time is asserted: the gate must never let sends go faster than the limit.
"""
from __future__ import annotations

import time

import pytest

from tasks.backends.shared_limit import PrefectGate, SharedLimit, ensure_prefect_limits, prefect_limit_specs

pytestmark = pytest.mark.server


def test_prefect_limits_are_created_and_pace_sends(prefect_api):
    limit = SharedLimit(name="bench-key", store="prefect", rpm=120, window_s=60, burst=1 / 30, headroom=1.0)
    assert prefect_limit_specs(limit) == {"bench-key-requests": (4, 2.0)}
    with prefect_api.settings():
        ensure_prefect_limits(limit)
        ensure_prefect_limits(limit)  # a second call updates instead of failing
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            gcl = client.read_global_concurrency_limit_by_name("bench-key-requests")
        assert (gcl.limit, gcl.slot_decay_per_second, gcl.active) == (4, 2.0, True)

        gate = PrefectGate(limit)
        started = time.monotonic()
        for _ in range(8):
            gate.acquire()
        elapsed = time.monotonic() - started
        assert elapsed >= (8 - 4) / 2.0 - 0.3  # four slots at once, then two per second
        print(f"\n8 sends through a 4-slot limit decaying 2/s took {elapsed:.2f}s (ideal 2.0s)")

        missing = PrefectGate(SharedLimit(name="no-such-key", store="prefect", rpm=60))
        with pytest.raises(Exception, match="no-such-key"):
            missing.acquire()
