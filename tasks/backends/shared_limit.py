"""One endpoint's RPM/TPM shared by every process that uses its API key.

Inputs: a `SharedLimit` setting (name, store, rpm, tpm, burst, window) on a pool entry
(`serve: openai`). Outputs: a gate with `acquire(requests=1, tokens=n)` (blocking) and
`acquire_async` (for an event loop), which a per-process limiter calls before each send,
and `settle(estimated, actual)` to charge the difference once an answer's `usage` is known.
The OpenAI-protocol backend (tasks/backends/openai_http.py) awaits the gate before each send,
a 429's re-send included (the server counts it against the same budget), when a pool entry
or a judge endpoint names a `shared_limit`.

Stores:
- `file`: a token bucket per limit in a small JSON file under `path`, read and written under
  an exclusive `flock`, with wall-clock time (shared by processes, unlike monotonic time).
  For every process of one host (several flow runs, a process pool of task-runner workers).
  Waiting happens outside the lock.
- `prefect`: Prefect global concurrency limits with slot decay, `<name>-requests` and
  `<name>-tokens` (create them with `ensure_prefect_limits`), taken with
  `prefect.concurrency.sync.rate_limit`. For several hosts, on a Postgres-backed Prefect
  server: on SQLite these limits deliver well under their rate (database-locked retries).

Both refill continuously at `headroom` x the limit and hold at most `burst` of one window
(less than the server's own burst), so sends admitted by the gate that reach the server
bunched together still fit its limit.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SharedLimit(BaseModel):
    """A rate limit shared across processes; entries naming the same `name` share it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Name of the shared limit (one per API key "
                      "and model); every process naming it shares its budget")
    store: Literal["file", "prefect"] = Field("file", description="file: a locked file on this host (many processes, "
                                              "one host); prefect: global concurrency limits with slot decay on the "
                                              "Prefect server (many hosts; needs a Postgres-backed server)")
    path: str | None = Field(None, description="file: folder of the limit files; default $UF_SHARED_LIMITS_DIR or "
                             "<tmp>/ultrafeedback-limits")
    rpm: float | None = Field(None, gt=0, description="Requests per window allowed to all processes together")
    tpm: float | None = Field(None, gt=0, description="Tokens per window allowed to all processes together")
    window_s: float = Field(60.0, gt=0, description="Length of the limit's window (60: per minute)")
    burst: float = Field(1 / 240, gt=0, le=1, description="Most of one window's budget that may go at once (a quarter "
                         "second of a per-minute limit: less than the server's own burst, so sends that reach it "
                         "bunched together are still admitted)")
    headroom: float = Field(0.95, gt=0, le=1, description="Fraction of the limit used, against clock skew and "
                            "requests other clients send")
    timeout_s: float | None = Field(None, gt=0, description="Longest wait for one acquisition (None: no limit)")

    @model_validator(mode="after")
    def _some_limit(self) -> "SharedLimit":
        if self.rpm is None and self.tpm is None:
            raise ValueError("shared_limit needs rpm or tpm")
        return self


class Gate(Protocol):
    def acquire(self, requests: int = 1, tokens: int = 0) -> float: ...

    async def acquire_async(self, requests: int = 1, tokens: int = 0) -> float: ...

    def settle(self, estimated: int, actual: int) -> None: ...


def open_gate(limit: SharedLimit) -> Gate:
    if limit.store == "prefect":
        return PrefectGate(limit)
    return FileGate(limit)


class FileGate:
    """Token buckets (requests, tokens) kept in one file, updated under flock."""

    def __init__(self, limit: SharedLimit):
        self.limit = limit
        folder = Path(limit.path or os.environ.get("UF_SHARED_LIMITS_DIR")
                      or Path(tempfile.gettempdir()) / "ultrafeedback-limits")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{limit.name}.json"
        self.buckets = {k: v for k, v in (("requests", limit.rpm), ("tokens", limit.tpm)) if v}

    def _rate(self, kind: str) -> float:
        return self.buckets[kind] * self.limit.headroom / self.limit.window_s

    def _capacity(self, kind: str) -> float:
        return self.buckets[kind] * self.limit.burst

    @contextmanager
    def _state(self) -> Iterator[dict]:
        """The buckets' state, read and written back under an exclusive lock on the file."""
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                text = f.read()
                state = json.loads(text) if text.strip() else {}
                yield state
                f.seek(0)
                f.truncate()
                f.write(json.dumps(state))
                f.flush()  # before the lock goes: the next holder must read all of it
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _try(self, costs: dict[str, float]) -> float:
        """Take `costs` if every bucket covers them now (0.0), else the seconds to wait."""
        with self._state() as state:
            now = time.time()
            wait = 0.0
            for kind, cost in costs.items():
                level, t = state.get(kind, (self._capacity(kind), now))
                level = min(self._capacity(kind), level + max(0.0, now - t) * self._rate(kind))
                state[kind] = (level, now)
                # A request dearer than the burst waits for a full bucket, then goes (into debt).
                need = min(cost, self._capacity(kind))
                if level < need:
                    wait = max(wait, (need - level) / self._rate(kind))
            if wait == 0.0:
                for kind, cost in costs.items():
                    state[kind] = (state[kind][0] - cost, now)
            return wait

    def _costs(self, requests: int, tokens: int) -> dict[str, float]:
        costs = {"requests": float(requests), "tokens": float(tokens)}
        return {k: v for k, v in costs.items() if k in self.buckets and v > 0}

    def _deadline(self) -> float | None:
        return time.monotonic() + self.limit.timeout_s if self.limit.timeout_s else None

    def _check(self, deadline: float | None, waited: float) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"shared limit {self.limit.name}: no budget after {waited:.1f}s "
                               f"(shared_limit.timeout_s)")

    def acquire(self, requests: int = 1, tokens: int = 0) -> float:
        """Block until the shared budget covers this send; returns the seconds waited."""
        costs, started, deadline = self._costs(requests, tokens), time.monotonic(), self._deadline()
        while costs and (wait := self._try(costs)) > 0:
            self._check(deadline, time.monotonic() - started)
            time.sleep(min(wait, 1.0))
        return time.monotonic() - started

    async def acquire_async(self, requests: int = 1, tokens: int = 0) -> float:
        costs, started, deadline = self._costs(requests, tokens), time.monotonic(), self._deadline()
        while costs and (wait := self._try(costs)) > 0:
            self._check(deadline, time.monotonic() - started)
            await asyncio.sleep(min(wait, 1.0))
        return time.monotonic() - started

    def settle(self, estimated: int, actual: int) -> None:
        """Charge (or refund) the tokens an answer cost beyond its estimate; may go into debt."""
        if "tokens" not in self.buckets or actual == estimated:
            return
        with self._state() as state:
            level, t = state.get("tokens", (self._capacity("tokens"), time.time()))
            state["tokens"] = (min(self._capacity("tokens"), level - (actual - estimated)), t)


def prefect_limit_specs(limit: SharedLimit) -> dict[str, tuple[int, float]]:
    """Global concurrency limits `ensure_prefect_limits` creates: name -> (slots, decay per second)."""
    specs = {}
    for suffix, per_window in (("requests", limit.rpm), ("tokens", limit.tpm)):
        if per_window:
            rate = per_window * limit.headroom / limit.window_s
            specs[f"{limit.name}-{suffix}"] = (max(1, int(per_window * limit.burst)), rate)
    return specs


def ensure_prefect_limits(limit: SharedLimit) -> None:
    """Create or update the limit's global concurrency limits on the configured Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name, (slots, decay) in prefect_limit_specs(limit).items():
            try:
                client.read_global_concurrency_limit_by_name(name)
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                    limit=slots, slot_decay_per_second=decay, active=True))
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=name, limit=slots, slot_decay_per_second=decay, active=True))


class PrefectGate:
    """`rate_limit` on `<name>-requests` and `<name>-tokens`; strict, so a missing limit fails loudly."""

    def __init__(self, limit: SharedLimit):
        self.limit = limit
        self.slots = prefect_limit_specs(limit)

    def _take(self, requests: int, tokens: int) -> None:
        from prefect.concurrency.sync import rate_limit

        for name, (slots, _) in self.slots.items():
            cost = requests if name.endswith("-requests") else min(tokens, slots)  # a slot count above the limit never fits
            if cost > 0:
                rate_limit(name, occupy=int(cost), timeout_seconds=self.limit.timeout_s, strict=True)

    def acquire(self, requests: int = 1, tokens: int = 0) -> float:
        started = time.monotonic()
        self._take(requests, tokens)
        return time.monotonic() - started

    async def acquire_async(self, requests: int = 1, tokens: int = 0) -> float:
        return await asyncio.to_thread(self.acquire, requests, tokens)

    def settle(self, estimated: int, actual: int) -> None:
        # Slots cannot be handed back early; an underestimate is charged on the next send.
        if actual > estimated and any(n.endswith("-tokens") for n in self.slots):
            self._take(0, actual - estimated)


def estimate_tokens(body: dict) -> int:
    """Prompt characters / 4 plus max_tokens: what OpenAI's limiter charges at admission, roughly."""
    chars = 0
    for m in body.get("messages") or []:
        content = m.get("content")
        chars += len(content) if isinstance(content, str) else len(json.dumps(content or ""))
    return chars // 4 + 8 + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
