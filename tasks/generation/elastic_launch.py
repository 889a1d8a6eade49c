"""How an elastic engine launches its servers (the launching half of ElasticBackend,
tasks/generation/elastic_engine.py, which holds the state these methods use).

Inputs: the engine's ledger placements, its `launch(placement, k)` and its servers so far.
Effects: each placement the ledger lets go is launched on a thread of its own and joins
the engine's ReplicatedBackend; a server that fails to start releases its GPUs; a lost
server is relaunched within the attempt (by a re-plan, or without one on its own GPUs) up
to `max_lost`, after which the launcher ends and the attempt fails for the orchestrator to
retry. `Server` is one launched server's record; `quiet_exit` stops a server without
letting its error stop the others.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from tasks.backends.base import Backend
from tasks.generation.schedule_plan import Placement

log = logging.getLogger("tasks.generation.elastic_engine")


@dataclass
class Server:
    claim: int  # the ledger's placement index
    placement: Placement
    backend: Backend
    started_s: float
    ready_s: float | None = None  # when it could take requests
    stopped_s: float | None = None
    why: str = ""
    asked: int = -1  # the plan version in which it last asked for a re-plan (outstaying its time)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Launching:
    """ElasticBackend's launching methods. They use its state (`ledger`, `launch`, `rep`,
    `servers`, `failures`, `max_lost`, the loading and relaunch bookkeeping set in its
    `__init__`) and its `_stop`; nothing else builds one."""

    def _done(self) -> bool:
        if self.finished:
            return True
        if self.total is None:
            return False
        answered, _ = self.rep.progress()
        return answered >= self.total

    def _launch_all(self) -> None:
        k = 0
        self._asked, self._empty = -1, 0
        try:
            while not self._cancel.is_set() and not self._done():
                i = self.ledger.next_planned(self.engine_id)
                if i is None:
                    if not self._await_placement():
                        return  # relaunching does not help: the attempt fails for the orchestrator to retry
                    continue
                self._asked, self._empty = -1, 0
                if not self.ledger.acquire(i, self._cancel):
                    continue  # skipped or replaced meanwhile, or the engine task is ending
                if self._cancel.is_set() or self._done():
                    self.ledger.skip(i)  # its engine is done: a launch would only pay a load
                    continue
                self._begin(i, k)
                k += 1
        finally:
            for t in self._starts:  # every launched server has joined or failed before joins close
                t.join()
            self.rep.close_joins()

    def _await_placement(self) -> bool:
        """The plan has no placement left for this engine. While a server is up, wait (it may
        be lost too). With work left and no server: re-planned, ask for a plan, which gives it
        a placement; else relaunch on the GPUs of the server lost last. False to give up:
        after `max_lost` lost servers, as many relaunches, or two plans that gave it none."""
        if self._lost() >= self.max_lost:
            return False
        replanner = self.ledger.replanner
        if not self._has_server() and replanner is None:  # a lost server's relaunch is queued when it is lost
            return self.ledger.next_planned(self.engine_id) is not None or self._relaunch_on(self._last_lost)
        if not self._has_server():
            if self._asked >= 0 and replanner.version > self._asked:
                self._empty += 1  # a plan has come since it asked, with no placement for it
                if self._empty >= 2:
                    return False
                self._asked = -1
            if self._asked < 0:
                self._asked = replanner.version
                replanner.request(f"{self.engine_id} has no server")
        self.ledger.wait(0.2)  # a new plan, or a release, may change what it should do
        return True

    def _lost(self) -> int:
        return len(self.failures) + sum(s.why == "died" for s in list(self.servers))

    def _has_server(self, but: int | None = None) -> bool:
        """A server of this engine is up or loading (`but`: leaving out that claim's)."""
        with self._lock:
            if any(c != but for c in self._loading):
                return True
        return any(s.stopped_s is None and s.claim != but for s in list(self.servers))

    def _relaunch_on(self, placement: Placement | None, lost: int | None = None) -> bool:
        """Without a re-planner: if the engine has work left, no server but the lost one's
        (claim `lost`) and no placement to come, queue a relaunch on the lost server's GPUs.
        Called before those GPUs are released, so no other engine's server takes them in
        between (as the simulation restarts a failed server where it was; here only when
        no other server of the engine is left). Bounded by `max_lost`. True when a
        relaunch was queued."""
        if self.ledger.replanner is not None or self._cancel.is_set() or self._done():
            return False
        with self._relaunch_lock:
            if (self._has_server(but=lost) or self.ledger.next_planned(self.engine_id) is not None
                    or self._lost() >= self.max_lost or self._relaunched >= self.max_lost):
                return False
            self._relaunched += 1
            self.ledger.requeue(self.engine_id, placement)
            return True

    def _begin(self, i: int, k: int) -> None:
        """Launch placement i's server on a thread of its own, so an engine's servers planned
        at one time load side by side (as in the simulation), not one load after another. It
        counts as loading from now, so the launcher never sees the engine without a server."""
        with self._lock:
            self._launching += self.ledger.claims[i].placement.replicas
            self._loading[i] = self.ledger.now()
        t = threading.Thread(target=self._start, args=(i, k), name=f"elastic-{self.engine_id}-s{k}", daemon=True)
        self._starts.append(t)
        t.start()

    def _loaded(self, i: int) -> None:
        """Placement i's server is up (and listed in `servers`) or has failed: no longer loading."""
        with self._lock:
            if self._loading.pop(i, None) is not None:
                self._launching -= self.ledger.claims[i].placement.replicas
            self._starting.pop(i, None)

    def _start(self, i: int, k: int) -> None:
        placement = self.ledger.claims[i].placement
        started, backend = self._loading[i], None
        try:
            backend = self.launch(placement, k)
            with self._lock:
                self._starting[i] = backend
            backend.__enter__()
        except Exception as exc:  # its GPUs go on to the next placement; the others do the work
            self.failures.append(f"{getattr(backend, 'name', k)}: {type(exc).__name__}: {exc}"[:500])
            log.warning("%s: server on GPUs %s failed to start: %s", self.engine_id, placement.gpus, exc)
            self._last_lost = placement
            if backend is not None:
                quiet_exit(backend, self.engine_id)
            self._relaunch_on(placement, lost=i)
            self.ledger.release(i)
            self._loaded(i)
            return
        server = Server(i, placement, backend, started, self.ledger.now())
        self.servers.append(server)
        self._by_backend[id(backend)] = server
        self._loaded(i)
        if self._cancel.is_set():
            self._stop(server, "engine done")
            return
        self.rep.join(backend)


def quiet_exit(backend: Backend, engine_id: str) -> None:
    try:
        backend.__exit__(None, None, None)
    except Exception as err:  # one server's stop must not keep the others running
        log.warning("%s: stopping %s failed: %s", engine_id, getattr(backend, "name", backend), err)
