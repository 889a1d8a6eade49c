"""A scripted backend that holds several requests at once, as an HTTP client does.

Inputs: request records. Outputs: result records (the scripted answer of
tasks/backends/scripted.py), oldest request first, one per `latency_s`. It keeps up to
`concurrency` requests pulled from its iterator, so balancing across replicas can be
observed; `die_after` answers, it raises EngineDiedError while still holding the rest.
`start_s`: seconds its start takes (a model load). `pulled` and `answered` record the
custom_ids it took and answered; `loading` when its start began and ended.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult, result_ok
from tasks.backends.scripted import ScriptedBackend
from tasks.errors import EngineDiedError


class SlotBackend:
    def __init__(self, name: str, concurrency: int = 4, latency_s: float = 0.005, die_after: int | None = None,
                 fail_start: bool = False, start_s: float = 0.0):
        self.name, self.concurrency, self.latency_s = name, concurrency, latency_s
        self.start_s, self.loading = start_s, (0.0, 0.0)
        self.die_after, self.fail_start = die_after, fail_start
        self.pulled: list[str] = []
        self.answered: list[str] = []
        self.max_held = 0
        self.entered = self.exited = 0

    def __enter__(self) -> "SlotBackend":
        began = time.monotonic()
        time.sleep(self.start_s)
        self.loading = (began, time.monotonic())
        if self.fail_start:
            raise EngineDiedError(f"{self.name} did not start")
        self.entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited += 1

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        it = iter(requests)
        held: list[BatchRequest] = []
        while True:
            while len(held) < self.concurrency:
                req = next(it, None)
                if req is None:
                    break
                held.append(req)
                self.pulled.append(req["custom_id"])
            self.max_held = max(self.max_held, len(held))
            if not held:
                return
            time.sleep(self.latency_s)
            if self.die_after is not None and len(self.answered) >= self.die_after:
                raise EngineDiedError(f"{self.name} died holding {len(held)} requests")
            req = held.pop(0)
            self.answered.append(req["custom_id"])
            yield result_ok(req["custom_id"], ScriptedBackend().answer(req["body"]), self.latency_s)
