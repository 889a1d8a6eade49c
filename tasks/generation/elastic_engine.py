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
then, else its server is launched on a thread of its own (so servers that get their GPUs
at one time load side by side) and joins the engine's ReplicatedBackend, which hands
it requests from the queue all the engine's servers share. Each time a server would take
a request, `schedule_runtime.may_leave` decides whether it leaves: it then takes no new
request, answers those in flight, is stopped, and its GPUs are released to the next
placement. A server that dies is stopped and released too; its unanswered requests go
to the engine's other servers (replicas.py fail-over). A retried engine task whose
placements are all used gets its last placement's GPUs again (`GpuLedger.requeue`).

When the run re-plans (the ledger has a `Replanner`, tasks/generation/replanner.py), the
launcher takes whichever placement of its engine the latest plan has next, and waits for
new ones rather than ending while the engine has work; the engine reports its pace and
its servers (`observe`), asks for a plan when a server stops, once its pace is first
measured, and when a server outstays its planned time, and each server leaves by the
planned end the latest plan gave it (`set_planned_end`). With work left and no server (one
died or failed to start) it asks for a plan, which gives it a placement, so a lost server
is relaunched within the attempt. Without re-planning, an engine whose plan is used up and
whose last server is lost relaunches one on that server's GPUs: the relaunch is queued
first in their lanes before they are released, so no other engine's server takes them in
between (as the cluster simulation restarts a failed server where it was; here only
when no other server of the engine is left). After `max_lost` lost servers (as many
relaunches, or two plans that give it none), the launcher ends and the attempt fails for
the orchestrator to retry.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Iterator

from tasks.backends.base import Backend, BatchRequest, BatchResult
from tasks.backends.replicas import ReplicatedBackend, RunView
from tasks.generation.elastic_launch import Launching, Server, quiet_exit
from tasks.generation.gpu_ledger import GpuLedger
from tasks.generation.schedule_plan import Placement
from tasks.generation.schedule_runtime import may_leave, observed_left_s, overdue

log = logging.getLogger(__name__)


class ElasticBackend(Launching):
    def __init__(self, engine_id: str, ledger: GpuLedger, launch: Callable[[Placement, int], Backend],
                 s_per_request: float, balance_wait_s: float = 0.25, max_lost: int = 2):
        self.name = engine_id
        self.max_lost = max_lost  # servers lost (died, failed to start) before re-plans stop relaunching
        self.engine_id, self.ledger, self.launch = engine_id, ledger, launch
        self.s_per_request, self.balance_wait_s = s_per_request, balance_wait_s
        self.total: int | None = None  # requests of this run, known once `run` starts
        self.finished = False
        self.servers: list[Server] = []
        self.failures: list[str] = []
        self._by_backend: dict[int, Server] = {}
        self._launching = 0  # replicas of servers loading now
        self._loading: dict[int, float] = {}  # claim -> when its server began loading
        self._planned_end: dict[int, tuple[float, float]] = {}  # claim -> (its end, engine's end) by a re-plan
        self._paced = False  # its pace has been reported once
        self._starting: dict[int, Backend] = {}  # claim -> its server, loading now
        self._starts: list[threading.Thread] = []  # one per server launched
        self._relaunched = 0  # without a re-planner: servers relaunched on a lost one's GPUs
        self._relaunch_lock = threading.Lock()
        self._last_lost: Placement | None = None  # where a relaunch without a re-planner goes
        self._retry = False  # this task is a retry of the engine's (set on entering)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.rep: ReplicatedBackend | None = None

    def __repr__(self) -> str:
        return f"ElasticBackend(engine={self.engine_id!r})"

    def __enter__(self) -> "ElasticBackend":
        self._retry = self.engine_id in self.ledger.ended  # an earlier task of this engine ended in this run
        self.ledger.reopen(self.engine_id)
        if not self.ledger.planned(self.engine_id):
            self.ledger.requeue(self.engine_id)
        self.rep = ReplicatedBackend(self.engine_id, [], self.balance_wait_s, joins=True,
                                     should_leave=self._should_leave, on_gone=self._gone)
        self.rep.__enter__()
        if self.ledger.replanner is not None:
            self.ledger.replanner.attach(self)
        self._thread = threading.Thread(target=self._launch_all, name=f"elastic-{self.engine_id}", daemon=True)
        self._thread.start()
        return self

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        reqs = list(requests)  # the queue's length feeds the leave rule
        self.total = len(reqs)
        if self._retry and self.ledger.replanner is not None:  # planned at its full estimate until now
            self.ledger.replanner.request(f"{self.engine_id} retry: {self.total} requests left")
        try:
            yield from self.rep.run(reqs)
        finally:
            self.finished = True

    def __exit__(self, *exc: object) -> None:
        self._cancel.set()
        with self._lock:
            starting = list(self._starting.values())
        for backend in starting:  # servers still loading for an engine that is done: stop them now
            quiet_exit(backend, self.engine_id)
        if self._thread is not None:
            self._thread.join()
        for server in list(self.servers):
            self._stop(server, "engine done")
        if self.ledger.replanner is not None:
            self.ledger.replanner.detach(self)
        self.ledger.finish(self.engine_id)
        if self.rep is not None:
            self.rep.open = False

    # -- leaving -----------------------------------------------------------------------
    def _server(self, replica: int) -> Server:
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
        if me.claim in self._planned_end:  # a re-plan's end for this server, and its engine's
            end, slack_end = self._planned_end[me.claim]
            planned = end - me.started_s
        else:  # the engine's planned end, shifted by how late this server started (as in the simulation)
            planned = p.end_s - p.start_s
            slack_end = self.ledger.engine_end_s[self.engine_id] + me.started_s - p.start_s
        now, replanner = self.ledger.now(), self.ledger.replanner
        leaving = may_leave(now, me.started_s, planned, self.ledger.pending(self.engine_id), others,
                            self._left_s(queued, view.answered, view.in_flight, now), slack_end)
        if replanner is not None:
            if not self._paced and view.answered >= replanner.min_observed:
                self._paced = True  # its pace is known now
                replanner.request(f"{self.engine_id} pace measured")
            if queued and overdue(now, me.started_s, planned, leaving, me.asked == replanner.version):
                me.asked = replanner.version  # it stays past its plan: re-plan around it
                replanner.request(f"{self.engine_id} server on GPUs {p.gpus} overdue")
        return leaving

    # -- what a re-plan sees and sets ------------------------------------------------------
    def _left_s(self, queued: int, answered: int, in_flight: int, now: float) -> float:
        """Queued work in seconds of one replica: at the observed pace once enough is answered
        (as the simulation judges it), else at the planning estimate."""
        replanner = self.ledger.replanner
        if replanner is None:
            return queued * self.s_per_request
        spent = sum(s.placement.replicas * ((s.stopped_s or now) - s.ready_s)
                    for s in list(self.servers) if s.ready_s is not None)
        return observed_left_s(queued, answered, max(0.0, spent), self.s_per_request, replanner.min_observed,
                               in_flight)

    def observe(self) -> tuple[float, list[tuple[int, tuple[int, ...], int, float]]] | None:
        """For a re-plan: the work left (seconds of one replica, at the observed pace) and the
        servers up or loading as (claim, GPUs, replicas, when it generates); None before the
        engine's requests are known."""
        if self.finished:
            return 0.0, []  # its run is over (a failed one is planned again when its retry enters)
        if self.total is None or self.rep is None:
            return None
        answered, in_flight = self.rep.progress()
        now = self.ledger.now()
        left = self._left_s(max(0, self.total - answered - in_flight), answered, in_flight, now)
        live = {id(self.rep.replicas[j]) for j in self.rep.live()}
        joined = {id(b) for b in self.rep.replicas}
        servers = [(s.claim, s.placement.gpus, s.placement.replicas, s.ready_s) for s in list(self.servers)
                   if s.stopped_s is None and (id(s.backend) in live or id(s.backend) not in joined)]
        with self._lock:
            loading = dict(self._loading)
        load_s = self.ledger.replanner.load_s(self.engine_id) if self.ledger.replanner else 0.0
        for claim, started in loading.items():
            p = self.ledger.claims[claim].placement
            servers.append((claim, p.gpus, p.replicas, started + load_s))
        return left, servers

    def set_planned_end(self, claim: int, end_s: float, engine_end_s: float) -> None:
        """A re-plan's word for one server: leave by `end_s`, the engine planned to end by `engine_end_s`."""
        self._planned_end[claim] = (end_s, engine_end_s)

    def _gone(self, replica: int, why: str) -> None:
        self._stop(self._server(replica), why)

    def _stop(self, server: Server, why: str) -> None:
        with server.lock:
            if server.stopped_s is not None:
                return
            quiet_exit(server.backend, self.engine_id)
            server.stopped_s, server.why = self.ledger.now(), why
        if why == "died":
            self._last_lost = server.placement
            self._relaunch_on(server.placement, lost=server.claim)
        self.ledger.release(server.claim)
        log.info("%s: server on GPUs %s stopped (%s)", self.engine_id, server.placement.gpus, why)
        if self.ledger.replanner is not None:  # its GPUs are free: who takes them may change
            self.ledger.replanner.request(f"{self.engine_id} server on GPUs {server.placement.gpus} stopped")

    def history(self) -> list[dict]:
        """The servers this engine ran: GPUs, dp replicas, when they started and stopped, why."""
        return [{"gpus": list(s.placement.gpus), "replicas": s.placement.replicas, "started_s": round(s.started_s, 3),
                 "stopped_s": None if s.stopped_s is None else round(s.stopped_s, 3), "why": s.why}
                for s in self.servers]
