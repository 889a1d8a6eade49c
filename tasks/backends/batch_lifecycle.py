"""Provider batch lifecycle behind the Backend protocol: submit, poll, collect, resubmit.

Inputs: Batch-style request records (the realtime ones, custom_id = the journal's request
id), a `BatchAPI` (one provider's files/batches calls: tasks/backends/openai_batch.py,
tasks/backends/anthropic_messages.py), BatchSettings and the shard's batch-state file.
Outputs: Batch-style results, yielded as each batch's output is read (the journal keeps
each before the next is read), or `BatchInFlight` when batches have not ended in time.

One `run(requests)`:
1. batches recorded open in the state file that hold any requested id are adopted (a rerun
   collects what an earlier process submitted); requests no open batch holds are split to
   the provider's limits (lines, bytes) and submitted: intent recorded, then upload and
   create, each id recorded as it is known;
2. open batches are polled every `poll_interval_s` for at most `max_wait_s` (0: once).
   Still running then: the results of ended batches have been yielded, and BatchInFlight
   is raised; the shard stays pending and nothing is lost. The worker is not held for the
   provider's 24 hours: a later run, backfill or schedule polls again;
3. an ended batch's output and error files are read; answers and permanent line errors
   (4xx) are yielded; requests it left unanswered (expired, cancelled, 5xx/429 lines,
   absent from both files) go into a new batch of only those ids, up to `resubmits` rounds
   per run; after that they come back as transient errors (the orchestrator retries).
   A batch the provider rejects (file validation) raises InputError naming the line and
   the provider's message; the journal keeps every answer received so far;
4. a batch is marked closed only after all its results were yielded.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from tasks.backends.base import BatchRequest, BatchResult, result_error
from tasks.backends.batch_state import BatchState, Group
from tasks.backends.faults import is_transient
from tasks.errors import BatchInFlight, InputError

log = logging.getLogger(__name__)
_RESUBMIT_CODES = {"http_429"}  # and every transient code (tasks.backends.faults)


@dataclass
class Poll:
    """What one look at a batch says."""

    ended: bool
    status: str  # the provider's word: in_progress, completed, expired, ended, ...
    counts: dict = field(default_factory=dict)  # total / completed / failed as the provider counts them
    rejected: str | None = None  # the provider refused the input: why (line, code, message)
    missing_code: str = "missing"  # the code of a request the batch has no line for (expired, cancelled)


class BatchAPI(Protocol):
    label: str
    max_lines: int
    max_bytes: int

    def encode(self, req: BatchRequest) -> bytes: ...

    def find(self, group: Group) -> str | None: ...

    def submit(self, group: Group, payload: list[bytes], state: BatchState) -> str: ...

    def poll(self, batch_id: str) -> Poll: ...

    def results(self, batch_id: str) -> Iterator[BatchResult]: ...


def resubmittable(result: BatchResult) -> bool:
    err = result.get("error") or {}
    return str(err.get("code") or "") in _RESUBMIT_CODES or is_transient(err)


def split(payloads: list[tuple[str, bytes]], max_lines: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    """Consecutive parts that each fit the provider's line and byte limits."""
    parts, cur, size = [], [], 0
    for cid, line in payloads:
        if len(line) > max_bytes:
            raise InputError(f"request {cid}: {len(line):,} bytes, over the provider's batch file limit of "
                             f"{max_bytes:,} bytes (batch.max_bytes)")
        if cur and (len(cur) >= max_lines or size + len(line) > max_bytes):
            parts.append(cur)
            cur, size = [], 0
        cur.append((cid, line))
        size += len(line)
    if cur:
        parts.append(cur)
    return parts


class ProviderBatchBackend:
    """A Backend that sends requests through a provider's Batch API (module docstring)."""

    def __init__(self, api: BatchAPI, state_file, *, poll_interval_s: float = 30.0, max_wait_s: float = 0.0,
                 resubmits: int = 2, max_lines: int | None = None, max_bytes: int | None = None):
        self.api, self.state = api, BatchState(state_file)
        self.name = f"batch:{api.label}"
        self.poll_interval_s, self.max_wait_s, self.resubmits = poll_interval_s, max_wait_s, resubmits
        self.max_lines = min(max_lines or api.max_lines, api.max_lines)
        self.max_bytes = min(max_bytes or api.max_bytes, api.max_bytes)
        self.submitted = self.adopted = self.resubmitted = 0  # batches, for the stage's log

    def __enter__(self) -> "ProviderBatchBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        reqs = {r["custom_id"]: r for r in requests}
        if not reqs:
            return
        self.state.load()
        live: list[Group] = []
        covered: set[str] = set()
        for g in self.state.open_groups():
            if covered.isdisjoint(g.ids) and not reqs.keys().isdisjoint(g.ids):
                live.append(self._ensure_created(g, reqs))
                covered.update(g.ids)
                self.adopted += 1
            elif reqs.keys().isdisjoint(g.ids):
                self.state.close(g, "superseded")  # every line of it is answered (journaled) already
        live += self._submit([cid for cid in reqs if cid not in covered], reqs, 0)
        yield from self._collect(live, reqs)

    # --- submitting ------------------------------------------------------------------------
    def _submit(self, ids: list[str], reqs: dict[str, BatchRequest], round_: int) -> list[Group]:
        payloads = [(cid, self.api.encode(reqs[cid])) for cid in ids]
        groups = []
        for part in split(payloads, self.max_lines, self.max_bytes):
            g = self.state.intend([cid for cid, _ in part], round_)
            self.state.created(g, self.api.submit(g, [line for _, line in part], self.state))
            groups.append(g)
            self.submitted += 1
        return groups

    def _ensure_created(self, g: Group, reqs: dict[str, BatchRequest]) -> Group:
        """An adopted group whose create may or may not have reached the provider."""
        if g.batch_id:
            return g
        found = self.api.find(g)
        if found:
            log.info("batch group %s: adopting %s, created before a crash", g.group, found)
            self.state.created(g, found)
            return g
        if not all(cid in reqs for cid in g.ids):
            # Some of its requests were answered since (journal): the rest go in a new group.
            self.state.close(g, "superseded")
            return self._submit([cid for cid in g.ids if cid in reqs], reqs, g.round)[0]
        self.state.created(g, self.api.submit(g, [self.api.encode(reqs[cid]) for cid in g.ids], self.state))
        return g

    # --- collecting ------------------------------------------------------------------------
    def _collect(self, live: list[Group], reqs: dict[str, BatchRequest]) -> Iterator[BatchResult]:
        deadline = time.monotonic() + self.max_wait_s
        while live:
            still: list[Group] = []
            for g in live:
                p = self.api.poll(g.batch_id)
                self.state.seen(g, {"status": p.status, **p.counts})
                if not p.ended:
                    still.append(g)
                    continue
                if p.rejected:
                    self.state.close(g, "rejected")
                    raise InputError(f"{self.api.label}: batch {g.batch_id} rejected by the provider: {p.rejected}. "
                                     "Nothing of it was answered; answers received so far are kept in the journal")
                retry: list[BatchResult] = []
                for res in self._results(g, p, reqs):
                    if res.get("error") and resubmittable(res) and g.round < self.resubmits:
                        retry.append(res)
                    else:
                        yield res
                self.state.close(g, p.status, {"status": p.status, **p.counts})
                if retry:
                    log.info("batch %s (%s): %d requests unanswered, resubmitting only those", g.batch_id, p.status,
                             len(retry))
                    self.resubmitted += 1
                    still += self._submit([r["custom_id"] for r in retry], reqs, g.round + 1)
            live = still
            if live and time.monotonic() + self.poll_interval_s > deadline:
                raise BatchInFlight(
                    f"{len(live)} batch(es) of {self.api.label} still running "
                    f"({', '.join(str(g.batch_id) + ': ' + str(g.info.get('status')) for g in live[:3])}); "
                    "their ids are recorded, a later run collects them", [
                        {"batch_id": g.batch_id, "requests": len(g.ids), **g.info} for g in live])
            if live:
                time.sleep(self.poll_interval_s)

    def _results(self, g: Group, p: Poll, reqs: dict[str, BatchRequest]) -> Iterator[BatchResult]:
        """Every requested id of the group exactly once: its answer, its error, or `missing`."""
        seen: set[str] = set()
        wanted = set(g.ids) & reqs.keys()
        for res in self.api.results(g.batch_id):
            cid = res.get("custom_id")
            if cid in wanted and cid not in seen:
                seen.add(cid)
                yield res
        for cid in g.ids:
            if cid in wanted and cid not in seen:
                yield result_error(cid, p.missing_code, f"batch {g.batch_id} ended {p.status} without this request")
