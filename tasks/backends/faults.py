"""The one error contract of the OpenAI-protocol backend: codes, the request policy, the breaker.

Inputs: what one HTTP attempt ended with (a status code and body, or a transport exception).
Outputs: an error code from `CODES`, whether it is transient, and the fatal errors that stop
an endpoint. Every HTTP path (pool entries, launched vLLM servers, judges) reports faults
through this module, so generation and rating see the same codes for the same faults.

Codes: `http_<status>` for an HTTP error answer, `timeout`, `connection_error` (refused,
reset, dropped) and `bad_response` (a cut body, a 200 whose body is not JSON); provider
Batch APIs add `batch_expired`, `batch_cancelled`, `batch_failed` and `missing` (a request
a finished batch has no line for), all transient: the request is sent again. Transient:
5xx, 408, 409, timeouts, connection errors and bad bodies (retried per request within the
policy's budget); permanent: any other 4xx (the row's error); fatal for the endpoint:
401/403 (the key) and 404 (unknown model or wrong URL). 429 never becomes a code: the
limiter waits it out, or RateLimitedError hands the shard back.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tasks.errors import CircuitOpenError, EndpointFatalError

CODES = ("http_<status>", "timeout", "connection_error", "bad_response",
         "batch_expired", "batch_cancelled", "batch_failed", "missing")
_TRANSIENT_CODES = {"timeout", "connection_error", "bad_response", "batch_expired", "batch_cancelled", "batch_failed",
                    "missing"}
TRANSIENT_STATUS = {408, 409}
FATAL_STATUS = {401, 403, 404}


def status_code(status: int) -> str:
    return f"http_{status}"


def is_transient_status(status: int) -> bool:
    return status >= 500 or status in TRANSIENT_STATUS


def is_transient(error: dict | None) -> bool:
    """The backend's verdict on an error result (older records without the flag: by code)."""
    if not error:
        return False
    if "transient" in error:
        return bool(error["transient"])
    code = str(error.get("code") or "")
    if code.startswith("http_") and code[5:].isdigit():
        return is_transient_status(int(code[5:]))
    return code in _TRANSIENT_CODES


@dataclass(frozen=True)
class RequestPolicy:
    """Per-request retries and the endpoint's circuit breaker (see the module docstring)."""

    timeout_s: float = 120.0
    retry_attempts: int = 5  # tries of one request against transient faults
    retry_budget_s: float = 120.0  # seconds one request may spend on those tries
    backoff_base_s: float = 0.5  # full-jitter exponential: uniform(0, min(cap, base * 2**try))
    backoff_cap_s: float = 8.0
    max_rate_limit_wait_s: float = 600.0  # from a request's first 429
    max_rate_limit_retries: int = 100
    breaker_failures: int = 50  # consecutive failed tries with no success open the circuit
    breaker_seconds: float = 300.0  # failing with no success for this long opens it
    breaker_cooldown_s: float = 60.0  # an open circuit lets requests through again after this


def fatal(endpoint: str, base_url: str, key_env: str | None, status: int, message: str) -> EndpointFatalError:
    """One line naming the endpoint, and the variable holding its key where the key is at fault."""
    where = f"endpoint {endpoint} ({base_url})"
    if status in (401, 403):
        env = f"${key_env}" if key_env else "no API key variable (set api_key_env)"
        return EndpointFatalError(f"{where} refused the API key from {env} (HTTP {status}): {message}")
    return EndpointFatalError(f"{where} answered HTTP {status}: unknown model or wrong base_url "
                              f"(key from {'$' + key_env if key_env else 'no variable'}): {message}")


class Breaker:
    """Stops sending to an endpoint that keeps failing; shared by every request of a process."""

    def __init__(self, name: str, policy: RequestPolicy):
        self.name, self.policy = name, policy
        self._lock = threading.Lock()
        self.failures = 0
        self.failing_since: float | None = None
        self.open_until = 0.0
        self.last_error = ""
        self.opened = 0
        self.fatal: EndpointFatalError | None = None  # once refused for good, every later send stops too

    def success(self) -> None:
        with self._lock:
            self.failures, self.failing_since = 0, None

    def failure(self, error: str) -> None:
        with self._lock:
            now = time.monotonic()
            self.failures += 1
            self.failing_since = self.failing_since or now
            self.last_error = error
            p = self.policy
            if self.open_until <= now and (self.failures >= p.breaker_failures
                                           or now - self.failing_since >= p.breaker_seconds):
                self.open_until = now + p.breaker_cooldown_s
                self.opened += 1

    def refuse(self, exc: EndpointFatalError) -> EndpointFatalError:
        with self._lock:
            self.fatal = self.fatal or exc
            return self.fatal

    def check(self) -> None:
        """Raise the endpoint's fatal error, or CircuitOpenError while open; after the
        cool-down the next tries probe again."""
        with self._lock:
            if self.fatal is not None:
                raise self.fatal
            now = time.monotonic()
            if now < self.open_until:
                raise CircuitOpenError(
                    f"endpoint {self.name}: circuit open, {self.failures} failed tries and no success for "
                    f"{now - (self.failing_since or now):.0f}s (last: {self.last_error[:200]}); its open shards "
                    f"are left for a backfill")
            if self.open_until:  # cooled down: let requests probe; a new run of failures reopens it
                self.open_until, self.failures, self.failing_since = 0.0, 0, None


_BREAKERS: dict[str, Breaker] = {}
_LOCK = threading.Lock()


def breaker_for(key: str, name: str, policy: RequestPolicy) -> Breaker:
    with _LOCK:
        b = _BREAKERS.get(key)
        if b is None:
            b = _BREAKERS[key] = Breaker(name, policy)
        return b


def reset_breakers() -> None:
    with _LOCK:
        _BREAKERS.clear()
