"""Config of the request engine's per-request retries and circuit breaker, shared by pool
entries (`generation.models[].retry`) and judge endpoints (`rating.endpoints[].retry`).

Inputs: the `retry` section of either. Outputs: a validated `RetrySettings` and, with the
entry's timeout and 429 budget, the `RequestPolicy` the backend runs on.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tasks.backends.faults import RequestPolicy


class RetrySettings(BaseModel):
    """Transient faults (5xx, timeouts, resets, unreadable bodies) and when to stop sending."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(5, ge=1, le=100, description="Tries of one request against transient faults; then the "
                          "request counts as failed for now and its shard is retried later")
    budget_s: float = Field(120.0, gt=0, description="Seconds one request may spend on those tries")
    breaker_failures: int = Field(50, ge=1, description="Failed tries in a row, with no success, that open the "
                                  "endpoint's circuit: it is no longer sent to and its open shards fail for a backfill")
    breaker_seconds: float = Field(300.0, gt=0, description="Seconds of failing with no success that open the circuit")
    breaker_cooldown_s: float = Field(60.0, gt=0, description="An open circuit lets requests try again after this")

    def policy(self, timeout_s: float, max_rate_limit_wait_s: float) -> RequestPolicy:
        return RequestPolicy(timeout_s=timeout_s, retry_attempts=self.attempts, retry_budget_s=self.budget_s,
                             max_rate_limit_wait_s=max_rate_limit_wait_s, breaker_failures=self.breaker_failures,
                             breaker_seconds=self.breaker_seconds, breaker_cooldown_s=self.breaker_cooldown_s)
