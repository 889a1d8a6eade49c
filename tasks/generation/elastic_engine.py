"""One engine of an elastic GPU plan: servers that join and leave, one request queue.

Inputs: the engine's id, the run's `GpuLedger` (tasks/generation/gpu_ledger.py), a
launcher (`launch(placement, k)` -> a Backend not yet entered: by default a vLLM server
with the placement's GPUs as CUDA_VISIBLE_DEVICES and its replicas as
`--data-parallel-size`, tasks.generation.engines.launch_server) and the planning estimate
of one request's seconds on one replica. Output: a Backend (enter, `run`, exit) that
tasks.generation.stage.run_group drives like any other, so shards, parts, markers and
retries are the same as for one server.

Mechanics (those of the cluster simulation, bench/cluster_des.py): a launcher thread
takes the engine's placements in plan order; each waits in the ledger until its GPUs are
released by the servers planned before it there, is skipped if the engine is done by
then, else its server is launched and joins the engine's ReplicatedBackend, which hands
it requests from the queue all the engine's servers share. Each time a server would take
a request, `schedule_runtime.may_leave` decides whether it leaves: it then takes no new
request, answers those in flight, is stopped, and its GPUs are released to the next
placement. A server that dies is stopped and released too; its unanswered requests go
to the engine's other servers (replicas.py fail-over). A retried engine task whose
placements are all used gets its last placement's GPUs again (`GpuLedger.requeue`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from tasks.backends.base import Backend, BatchRequest, BatchResult
from tasks.backends.replicas import ReplicatedBackend, RunView
from tasks.generation.gpu_ledger import GpuLedger
from tasks.generation.schedule_plan import Placement
from tasks.generation.schedule_runtime import may_leave

log = logging.getLogger(__name__)


@dataclass
class _Server:
    claim: int  # the ledger's placement index
    placement: Placement
    backend: Backend
    started_s: float
    stopped_s: float | None = None
    why: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


class ElasticBackend:
    def __init__(self, engine_id: str, ledger: GpuLedger, launch: Callable[[Placement, int], Backend],
                 s_per_request: float, balance_wait_s: float = 0.25):
        self.name = engine_id
        self.engine_id, self.ledger, self.launch = engine_id, ledger, launch
        self.s_per_request, self.balance_wait_s = s_per_request, balance_wait_s
        self.total: int | None = None  # requests of this run, known once `run` starts
        self.finished = False
        self.servers: list[_Server] = []
        self.failures: list[str] = []
        self._by_backend: dict[int, _Server] = {}
        self._launching = 0  # replicas of servers loading now
        self._starting: Backend | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.rep: ReplicatedBackend | None = None

    def __repr__(self) -> str:
        return f"ElasticBackend(engine={self.engine_id!r})"

    def __enter__(self) -> "ElasticBackend":
        claims = self.ledger.planned(self.engine_id) or [self.ledger.requeue(self.engine_id)]
        self.rep = ReplicatedBackend(self.engine_id, [], self.balance_wait_s, joins=True,
                                     should_leave=self._should_leave, on_gone=self._gone)
        self.rep.__enter__()
        self._thread = threading.Thread(target=self._launch_all, args=(claims,), name=f"elastic-{self.engine_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        reqs = list(requests)  # the queue's length feeds the leave rule
        self.total = len(reqs)
        try:
            yield from self.rep.run(reqs)
        finally:
            self.finished = True

    def __exit__(self, *exc: object) -> None:
        self._cancel.set()
        with self._lock:
            starting = self._starting
        if starting is not None:  # a server still loading for an engine that is done: stop it now
            _quiet_exit(starting, self.engine_id)
        if self._thread is not None:
            self._thread.join()
        for server in list(self.servers):
            self._stop(server, "engine done")
        self.ledger.finish(self.engine_id)
        if self.rep is not None:
            self.rep.open = False

    # -- launching ---------------------------------------------------------------------
    def _done(self) -> bool:
        if self.finished:
            return True
        if self.total is None:
            return False
        answered, _ = self.rep.progress()
        return answered >= self.total

    def _launch_all(self, claims: list[int]) -> None:
        try:
            for k, i in enumerate(claims):
                if not self.ledger.acquire(i, self._cancel):
                    continue  # skipped, or the engine task is ending
                if self._cancel.is_set() or self._done():
                    self.ledger.skip(i)  # its engine is done: a launch would only pay a load
                    continue
                self._start(i, k)
        finally:
            self.rep.close_joins()

    def _start(self, i: int, k: int) -> None:
        placement = self.ledger.claims[i].placement
        started = self.ledger.now()
        backend = None
        with self._lock:
            self._launching += placement.replicas
        try:
            backend = self.launch(placement, k)
            with self._lock:
                self._starting = backend
            backend.__enter__()
        except Exception as exc:  # its GPUs go on to the next placement; the others do the work
            self.failures.append(f"{getattr(backend, 'name', k)}: {type(exc).__name__}: {exc}"[:500])
            log.warning("%s: server on GPUs %s failed to start: %s", self.engine_id, placement.gpus, exc)
            if backend is not None:
                _quiet_exit(backend, self.engine_id)
            self.ledger.release(i)
            return
        finally:
            with self._lock:
                self._launching -= placement.replicas
                self._starting = None
        server = _Server(i, placement, backend, started)
        self.servers.append(server)
        self._by_backend[id(backend)] = server
        if self._cancel.is_set():
            self._stop(server, "engine done")
            return
        self.rep.join(backend)

    # -- leaving -----------------------------------------------------------------------
    def _server(self, replica: int) -> _Server:
        return self._by_backend[id(self.rep.replicas[replica])]

    def _should_leave(self, replica: int, view: RunView) -> bool:
        if self.total is None:
            return False
        me = self._server(replica)
        p = me.placement
        queued = max(0, self.total - view.answered - view.in_flight)
        # A server still loading counts among the others, as in the simulation (it holds its
        # GPUs and will take requests); servers waiting for their GPUs are the pending ones.
        with self._lock:
            others = self._launching
        others += sum(self._server(j).placement.replicas for j in view.others)
        # The engine's planned end, shifted by how late this server started (as in the simulation).
        slack_end = self.ledger.engine_end_s[self.engine_id] + me.started_s - p.start_s
        return may_leave(self.ledger.now(), me.started_s, p.end_s - p.start_s, self.ledger.pending(self.engine_id),
                         others, queued * self.s_per_request, slack_end)

    def _gone(self, replica: int, why: str) -> None:
        self._stop(self._server(replica), why)

    def _stop(self, server: _Server, why: str) -> None:
        with server.lock:
            if server.stopped_s is not None:
                return
            _quiet_exit(server.backend, self.engine_id)
            server.stopped_s, server.why = self.ledger.now(), why
        self.ledger.release(server.claim)
        log.info("%s: server on GPUs %s stopped (%s)", self.engine_id, server.placement.gpus, why)

    def history(self) -> list[dict]:
        """The servers this engine ran: GPUs, dp replicas, when they started and stopped, why."""
        return [{"gpus": list(s.placement.gpus), "replicas": s.placement.replicas, "started_s": round(s.started_s, 3),
                 "stopped_s": None if s.stopped_s is None else round(s.stopped_s, 3), "why": s.why}
                for s in self.servers]


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


def _quiet_exit(backend: Backend, engine_id: str) -> None:
    try:
        backend.__exit__(None, None, None)
    except Exception as err:  # one server's stop must not keep the others running
        log.warning("%s: stopping %s failed: %s", engine_id, getattr(backend, "name", backend), err)
