"""An engine that cannot be split (serve: vllm_batch, one offline engine) on an elastic plan.

Inputs: the engine's id, the run's `GpuLedger` and the engine's own backend. Output: the
same backend, run while it holds its placement's GPUs: `__enter__` waits for them (its
first planned placement; the rest are skipped, since one offline engine cannot move or
grow), `__exit__` releases them. A retried task whose placements are used gets its last
placement's GPUs again (`GpuLedger.requeue`).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from tasks.backends.base import Backend, BatchRequest, BatchResult
from tasks.generation.gpu_ledger import GpuLedger


class HeldBackend:
    """An engine that cannot be split (vllm_batch: one offline engine) on an elastic plan: it
    waits for its placement's GPUs when entered and releases them when it exits."""

    def __init__(self, engine_id: str, ledger: GpuLedger, inner: Backend):
        self.name, self.engine_id, self.ledger, self.inner = engine_id, engine_id, ledger, inner
        self.claim: int | None = None

    def __getattr__(self, name: str):  # generate_s, from_journal: what the inner engine reports
        return getattr(self.__dict__["inner"], name)

    def __enter__(self) -> "HeldBackend":
        planned = self.ledger.planned(self.engine_id)
        self.claim = planned[0] if planned else self.ledger.requeue(self.engine_id)
        for extra in planned[1:]:
            self.ledger.skip(extra)
        self.ledger.acquire(self.claim)
        try:
            self.inner.__enter__()
        except BaseException:
            self.ledger.release(self.claim)
            raise
        return self

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        return self.inner.run(requests)

    def __exit__(self, *exc: object) -> None:
        try:
            self.inner.__exit__(*exc)
        finally:
            self.ledger.release(self.claim)
