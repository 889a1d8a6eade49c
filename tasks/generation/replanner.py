"""Run-time re-planning of an elastic GPU plan, inside the flow.

Inputs: the run's `GpuLedger`, the planner's `Job`s (its estimates), and the engines'
`ElasticBackend`s as their tasks enter (`attach`) and end (`detach`). Output: each time it
re-plans, new planned ends for the servers up or loading (`ElasticBackend.set_planned_end`)
and, in the ledger, new placements for the rest (`GpuLedger.replace_planned`); `history`
keeps one record per plan for the stage summary.

What the cluster simulation (bench/cluster_des.py, "elastic, re-planned") does, here with
real clocks: whenever a server stops, once an engine's pace is first measured
(`min_observed` requests answered), or when a server outstays its planned time, the work
left is planned again by `schedule_runtime.replan` from the pace each engine has shown.
The planner's estimates come from `max_tokens`, an upper bound, so real engines usually
finish well before their plan says: re-planning hands the GPUs they free to the engines
still at work instead of leaving them idle until the planned hand-over.

An engine is planned while its task is at work or has not entered yet (at its estimate);
one whose task has ended (`GpuLedger.finish`) is left out until its retry enters, and the
retry asks for a plan once its requests (those of the parts not yet written) are known. A
trigger only sets a flag; the re-plan runs on this object's own thread, so no lock of an
engine's request queue is held while another engine is read. A re-plan that fails is
logged and the current plan stays.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from tasks.generation.gpu_ledger import GpuLedger
from tasks.generation.schedule_plan import Job
from tasks.generation.schedule_runtime import replan

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    """One engine as a re-plan sees it."""
    left_s: float
    servers: list  # (ElasticBackend, claim, GPUs, replicas, when it generates)


class Replanner:
    def __init__(self, ledger: GpuLedger, jobs: list[Job], min_observed: int = 32):
        self.ledger, self.min_observed = ledger, min_observed
        self.jobs = {j.engine_id: j for j in jobs if j.tp}
        self.version = 0  # plans made so far
        self.history: list[dict] = []
        self._backends: dict[str, object] = {}  # engine -> the ElasticBackend of its task at work
        self._why: list[str] = []
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        ledger.replanner = self

    def load_s(self, engine_id: str) -> float:
        job = self.jobs.get(engine_id)
        return job.load_s if job else 0.0

    # -- engines coming and going, and their word ----------------------------------------
    def attach(self, backend) -> None:
        with self._lock:
            self._backends[backend.engine_id] = backend

    def detach(self, backend) -> None:
        with self._lock:
            if self._backends.get(backend.engine_id) is backend:
                del self._backends[backend.engine_id]

    def request(self, why: str) -> None:
        """Ask for a re-plan soon (cheap; safe under any engine's lock)."""
        with self._lock:
            self._why.append(why)
        self._due.set()

    # -- the thread ----------------------------------------------------------------------
    def __enter__(self) -> "Replanner":
        self._thread = threading.Thread(target=self._loop, name="replanner", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.ledger.replanner = None

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._due.wait(1.0)
            if self._closed.is_set():
                return
            if self._due.is_set():
                self._due.clear()
                try:
                    self.replan_now()
                except Exception as err:  # the plan in force stays; the run goes on
                    log.warning("re-planning failed, the current plan stays: %s: %s", type(err).__name__, err)

    # -- one re-plan ---------------------------------------------------------------------
    def _seen(self) -> dict[str, _Seen]:
        with self._lock:
            backends = dict(self._backends)
        seen = {}
        for engine_id, job in self.jobs.items():
            backend = backends.get(engine_id)
            obs = backend.observe() if backend is not None else None
            if obs is None:
                if engine_id in self.ledger.ended:
                    continue  # its task has ended; a retry comes back through attach
                seen[engine_id] = _Seen(job.work_s, [])  # not started yet: the estimate
                continue
            left, servers = obs
            seen[engine_id] = _Seen(left, [(backend, *s) for s in servers])
        return seen

    def replan_now(self) -> dict | None:
        """Plan what is left from now; None when no engine is at work or to come."""
        with self._lock:
            why, self._why = self._why, []
        seen = self._seen()
        if not seen:
            return None
        now = self.ledger.now()
        engines = [(e, self.jobs[e].tp, self.jobs[e].load_s, s.left_s, self.jobs[e].max_replicas)
                   for e, s in seen.items() if s.left_s > 1e-9]
        servers = [(e, *srv) for e, s in seen.items() for srv in s.servers]
        live = [(e, tuple(gpus), reps, ready) for e, _, _, gpus, reps, ready in servers]
        ends, placed = replan(now, engines, live, self.ledger.gpus, self.ledger.per_node)
        engine_end = {}
        for p in placed:
            engine_end[p.engine_id] = max(engine_end.get(p.engine_id, 0.0), p.end_s)
        for (e, *_), end in zip(servers, ends):
            engine_end[e] = max(engine_end.get(e, 0.0), end)
        new = self.ledger.replace_planned(set(seen), placed, engine_end)
        for (e, backend, claim, *_), end in zip(servers, ends):
            backend.set_planned_end(claim, end, engine_end.get(e, end))
        self.version += 1  # after the plan is in force: a launcher reads it to know a plan has come
        record = {"at_s": round(now, 3), "why": why[:5], "engines": len(engines), "servers_up": len(live),
                  "new_placements": len(new), "makespan_s": round(max(list(engine_end.values()) + [now]), 3)}
        self.history.append(record)
        log.info("re-planned at %.1fs (%s): %d engines with work, %d servers up, %d new placements, "
                 "estimated end %.1fs", now, "; ".join(why[:3]) or "asked", len(engines), len(live), len(new),
                 record["makespan_s"])
        return record
