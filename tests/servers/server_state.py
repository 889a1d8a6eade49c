"""Rate-limit buckets, fault schedule and statistics of the OpenAI-protocol test server.

Inputs: per request, its fingerprint, token cost and fault markers. Outputs: admit/deny
decisions with the OpenAI rate-limit headers, which fault (if any) to inject, and the
counters served at GET /_stats. Thread-safe (one lock); the HTTP layer lives in
openai_server.py.

Limits work like OpenAI's: RPM and TPM buckets refill continuously at limit/window and hold
at most `burst` of the window's limit (OpenAI enforces a minute's limit over shorter
quanta), and, as OpenAI documents, a rejected request still counts against the request
limit, so resending without waiting does not help. A request is admitted when each bucket holds at least min(cost, capacity); its
full cost is then taken, so a request larger than the burst capacity waits for a full
bucket instead of never passing. `window_s` scales time for fast tests.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field

FAULT_KINDS = ("429", "400", "500", "502", "503", "504", "hang", "reset", "cut", "badjson", "truncate", "malformed", "slow")


def request_fingerprint(body: dict) -> str:
    """Deterministic id of a request: sha256 of its canonical JSON body."""
    blob = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def reset_string(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    m, s = divmod(seconds, 60)
    return f"{int(m)}m{s:.0f}s"


class Bucket:
    """Continuously refilled bucket; `level` may go negative after a large admission."""

    def __init__(self, limit: float, window_s: float, burst: float):
        self.limit = limit
        self.rate = limit / window_s
        self.capacity = max(limit * burst, 1e-9)
        self.level = self.capacity
        self.t = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` would be admitted (0: now)."""
        self._refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost

    def reset_s(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass
class Fault:
    """A scheduled fault: fires on the next `count` requests, with probability `rate`, or for
    every request until `seconds` have passed since it was set (whichever is given)."""

    kind: str
    arg: float | None = None
    rate: float | None = None
    count: int | None = None
    seconds: float | None = None
    start: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} not in {FAULT_KINDS}")


@dataclass
class Limits:
    rpm: float | None = None
    tpm: float | None = None
    window_s: float = 60.0
    burst: float = 1 / 60
    headers: bool = True  # send x-ratelimit-limit-* headers
    charge_rejected: bool = True  # a 429'd request still uses one request of the RPM limit


class ServerState:
    def __init__(self, limits: Limits, faults: list[Fault] | None = None, seed: int = 0):
        self.lock = threading.Lock()
        self.limits = limits
        self.seed = seed
        self.reset(faults or [])

    def reset(self, faults: list[Fault] | None = None) -> None:
        with self.lock:
            lim = self.limits
            self.rpm = Bucket(lim.rpm, lim.window_s, lim.burst) if lim.rpm else None
            self.tpm = Bucket(lim.tpm, lim.window_s, lim.burst) if lim.tpm else None
            self.faults = list(faults or [])
            self.rng = random.Random(self.seed)
            self.by_status: dict[str, int] = {}
            self.fired: dict[str, int] = {}
            self.fps: dict[str, dict[str, int]] = {}
            self.tokens = {"prompt_tokens": 0, "completion_tokens": 0}
            self.by_model: dict[str, dict[str, int]] = {}
            self.rate_limited = 0
            self.in_flight = self.max_in_flight = 0
            self.admit_times: list[tuple[float, int]] = []  # (time, total tokens) of admitted requests
            self.refusals: list[str] = []  # messages of the first 4xx answers other than 429
            self.events: list[tuple[float, int, str | None, str]] = []  # (time, status, fault, fingerprint)
            self.t0 = time.monotonic()

    def set_faults(self, faults: list[Fault]) -> None:
        with self.lock:
            now = time.monotonic()
            for f in faults:
                f.start = now
            self.faults = list(faults)

    # --- per request -------------------------------------------------------------------
    def receive(self, fp: str) -> int:
        """Count a receipt; returns how many times this fingerprint has now been received."""
        with self.lock:
            rec = self.fps.setdefault(fp, {"received": 0, "answered": 0})
            rec["received"] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return rec["received"]

    def scheduled_fault(self) -> Fault | None:
        with self.lock:
            now = time.monotonic()
            for f in self.faults:
                if f.count is not None:
                    if f.count > 0:
                        f.count -= 1
                        return f
                elif f.seconds is not None:
                    if now - f.start < f.seconds:
                        return f
                elif f.rate is not None and self.rng.random() < f.rate:
                    return f
            return None

    def admit(self, cost: int) -> tuple[bool, float, dict[str, str]]:
        """Admit a request of `cost` tokens: (admitted, retry_after_s, rate-limit headers)."""
        with self.lock:
            now = time.monotonic()
            waits = [b.wait_for(c, now) for b, c in ((self.rpm, 1), (self.tpm, cost)) if b]
            wait = max(waits, default=0.0)
            if wait == 0:
                for b, c in ((self.rpm, 1), (self.tpm, cost)):
                    if b:
                        b.take(c)
                self.admit_times.append((now - self.t0, cost))
            else:
                self.rate_limited += 1
                if self.rpm and self.limits.charge_rejected:
                    self.rpm.take(1)
            return wait == 0, wait, self._headers()

    def _headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        for name, b in (("requests", self.rpm), ("tokens", self.tpm)):
            if b is None:
                continue
            if self.limits.headers:
                h[f"x-ratelimit-limit-{name}"] = str(int(b.limit))
            h[f"x-ratelimit-remaining-{name}"] = str(max(0, int(b.level)))
            h[f"x-ratelimit-reset-{name}"] = reset_string(b.reset_s())
        return h

    def headers(self) -> dict[str, str]:
        with self.lock:
            now = time.monotonic()
            for b in (self.rpm, self.tpm):
                if b:
                    b._refill(now)
            return self._headers()

    def done(self, fp: str, status: int, fault: str | None, model: str | None = None,
             usage: dict | None = None, note: str | None = None) -> None:
        with self.lock:
            if note and len(self.refusals) < 20:
                self.refusals.append(note)
            self.in_flight -= 1
            self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1
            self.events.append((time.monotonic() - self.t0, status, fault, fp))
            if fault:
                self.fired[fault] = self.fired.get(fault, 0) + 1
            if usage is not None:
                self.fps[fp]["answered"] += 1
                per = self.by_model.setdefault(model or "", {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
                per["requests"] += 1
                for k in ("prompt_tokens", "completion_tokens"):
                    self.tokens[k] += usage[k]
                    per[k] += usage[k]

    # --- reporting ---------------------------------------------------------------------
    def stats(self) -> dict:
        with self.lock:
            answered = sum(r["answered"] for r in self.fps.values())
            return {
                "requests": sum(r["received"] for r in self.fps.values()),
                "answered": answered,
                "by_status": dict(self.by_status),
                "rate_limited": self.rate_limited,
                "faults": dict(self.fired),
                "prompt_tokens": self.tokens["prompt_tokens"],
                "completion_tokens": self.tokens["completion_tokens"],
                "total_tokens": self.tokens["prompt_tokens"] + self.tokens["completion_tokens"],
                "by_model": {k: dict(v) for k, v in self.by_model.items()},
                "fingerprints": {k: dict(v) for k, v in self.fps.items()},
                "duplicates": sorted(k for k, v in self.fps.items() if v["answered"] > 1),
                "refusals": list(self.refusals),
                "max_in_flight": self.max_in_flight,
                "in_flight": self.in_flight,
                "admitted": [list(x) for x in self.admit_times],
                "events": [list(x) for x in self.events],
                "limits": {"rpm": self.limits.rpm, "tpm": self.limits.tpm, "window_s": self.limits.window_s,
                           "burst": self.limits.burst, "headers": self.limits.headers},
                "uptime_s": time.monotonic() - self.t0,
            }
