"""Several backends of one model behind one Backend: balancing and fail-over.

Inputs: N backends serving the same model (several launched vLLM servers, several base
URLs of one endpoint), each a Backend (tasks/backends/base.py). Output: one Backend whose
`run` yields exactly one result per request, whichever replica answered it.

- Balancing: a replica is handed a request when it asks for one (its client has a free
  slot) and it has no more requests outstanding than any other live replica that still
  has a free slot; otherwise it waits up to `balance_wait_s` for the others to catch up.
  So a shard smaller than one replica's concurrency is still split evenly, and a
  saturated pool behaves like least-outstanding-requests.
- Fail-over: a replica whose `run` raises a TransientError (EngineDiedError: its server
  process is gone, connection refused) or an OSError is dead for the rest of this
  backend's life. Every request handed to it and not answered goes back to the front of
  the queue for the live replicas. A request it did answer is never sent again, and a
  late duplicate answer is dropped, so each custom_id is yielded once.
- When every replica is dead while requests remain, `run` raises EngineDiedError (the
  orchestrator retries the shard; finished parts are kept).
- Elastic engines (`joins=True`): a replica may `join` while `run` is in progress (it is
  handed requests at once) and `leave` gracefully: it takes no new request, its requests
  in flight are answered, then `on_gone(index, why)` is called (its owner stops its
  server). `should_leave(index, RunView)`, asked each time a replica would take a request,
  lets the owner decide when (it must not call back into this backend). With joins
  open, `run` waits for a replica to join rather than fail while none is live;
  `close_joins()` says no more will come.

Each replica's `run` is driven from its own thread. A replica's request iterator never
blocks while that replica has requests in flight for longer than `balance_wait_s`: when
there is nothing to hand out it ends, and the replica is asked again (a new `run`) once
fail-over work appears. `dispatch` records (replica, custom_id) per send and
`answered_by` who answered each id, for tests and the engine summary.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from tasks.backends.base import Backend, BatchRequest, BatchResult
from tasks.backends.replica_dispatch import Dispatch, RunView, run_view
from tasks.errors import EngineDiedError, TransientError

log = logging.getLogger(__name__)
_FAILOVER = (TransientError, OSError)


class ReplicatedBackend:
    def __init__(self, name: str, replicas: list[Backend], balance_wait_s: float = 0.25, joins: bool = False,
                 should_leave: Callable[[int, "RunView"], bool] | None = None,
                 on_gone: Callable[[int, str], None] | None = None):
        if not replicas and not joins:
            raise ValueError("ReplicatedBackend needs at least one replica")
        self.name = name
        self.replicas = list(replicas)
        self.balance_wait_s = balance_wait_s
        self.alive = [False] * len(self.replicas)  # started and not failed
        self.open = False
        self.failures: dict[str, str] = {}  # replica name -> why it is out
        self.dispatch: list[tuple[str, str]] = []
        self.answered_by: dict[str, str] = {}
        self.joins_open = joins
        self.should_leave, self.on_gone = should_leave, on_gone
        self.left: list[str] = []  # replicas that left gracefully, in order
        self._lock = threading.Lock()  # replicas joining vs a run starting or ending
        self._run: tuple[Dispatch, queue.Queue, list[threading.Thread]] | None = None

    def __repr__(self) -> str:
        return f"ReplicatedBackend(name={self.name!r}, replicas={[r.name for r in self.replicas]!r})"

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "ReplicatedBackend":
        if not self.replicas:  # an elastic engine: its replicas join later
            self.open = True
            return self
        # Launched servers take tens of seconds to load: start them side by side.
        with ThreadPoolExecutor(max_workers=len(self.replicas)) as pool:
            outcomes = list(pool.map(_enter, self.replicas))
        errors = []
        for i, exc in enumerate(outcomes):
            self.alive[i] = exc is None
            if exc is not None:
                self.failures[self.replicas[i].name] = f"start: {type(exc).__name__}: {exc}"[:500]
                errors.append(exc)
        if not any(self.alive):
            raise errors[0]
        self.open = True
        if errors:
            log.warning("%s: %d of %d replicas failed to start, running on the rest: %s", self.name, len(errors),
                        len(self.replicas), "; ".join(self.failures.values()))
        return self

    def __exit__(self, *exc: object) -> None:
        # Dead replicas too: a killed server's process group may still hold children.
        for backend in self.replicas:
            try:
                backend.__exit__(None, None, None)
            except Exception as err:  # one replica's stop must not keep the others running
                log.warning("%s: stopping replica %s failed: %s", self.name, backend.name, err)
        self.open = False

    # -- joining and leaving ------------------------------------------------------------
    def join(self, backend: Backend) -> int:
        """Add a started replica; during a `run` it is handed requests at once. Its index."""
        with self._lock:
            self.replicas.append(backend)
            self.alive.append(True)
            i = len(self.replicas) - 1
            if self._run is not None:
                d, out, threads = self._run
                with d.cond:
                    d.add(_cap(backend))
                    d.running += 1
                    d.cond.notify_all()
                t = threading.Thread(target=self._drive, args=(d, i, out), name=f"replica-{backend.name}",
                                     daemon=True)
                threads.append(t)
                t.start()
        log.info("%s: replica %s joined", self.name, backend.name)
        return i

    def leave(self, i: int) -> None:
        """Replica i takes no new request; once its requests in flight are answered it is gone."""
        with self._lock:
            run = self._run
        if run is None:
            self.alive[i] = False
            return
        with run[0].cond:
            run[0].leaving[i] = True
            run[0].cond.notify_all()

    def close_joins(self) -> None:
        """No replica will join any more: a run with none live may end."""
        with self._lock:
            self.joins_open = False
            if self._run is not None:
                self._run[1].put(("wake", None))

    def progress(self) -> tuple[int, int]:
        """(requests answered, requests in flight) of the run in progress."""
        with self._lock:
            run = self._run
        if run is None:
            return 0, 0
        with run[0].cond:
            return len(run[0].answered), sum(len(h) for h in run[0].held)

    def live(self) -> list[int]:
        """Replicas that are started, not failed and not leaving."""
        with self._lock:
            run = self._run
        if run is None:
            return [i for i, a in enumerate(self.alive) if a]
        with run[0].cond:
            return [i for i, a in enumerate(run[0].alive) if a and not run[0].leaving[i]]

    # -- run -------------------------------------------------------------------------
    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        if not self.open:
            raise RuntimeError(f"ReplicatedBackend {self.name}: run outside its context")
        out: queue.Queue = queue.Queue()
        with self._lock:
            if not any(self.alive) and not self.joins_open:
                raise EngineDiedError(f"{self.name}: no live replica ({self.failures})")
            d = Dispatch(requests, [_cap(b) for b in self.replicas], self.alive)
            threads = [threading.Thread(target=self._drive, args=(d, i, out), name=f"replica-{b.name}", daemon=True)
                       for i, b in enumerate(self.replicas) if self.alive[i]]
            d.running = len(threads)
            self._run = (d, out, threads)
            for t in threads:
                t.start()
        try:
            while True:
                with self._lock, d.cond:
                    # Done when no replica runs, unless one may still join to do what is left.
                    if not d.running and (not self.joins_open or d.finished()):
                        break
                kind, payload = out.get()
                if kind == "result":
                    yield payload
                elif kind == "end":
                    with self._lock, d.cond:
                        d.running -= 1
                elif kind == "error":  # an error that is not the replica's death: stop everything
                    raise payload
            with d.cond:
                left = len(d.retry) + (0 if d.exhausted else 1)
            if left:
                raise EngineDiedError(f"{self.name}: every replica is gone with requests unanswered "
                                      f"(~{len(d.retry)} known); {self.failures}")
        finally:
            with self._lock:
                self._run = None
                threads = list(threads)
            with d.cond:
                d.stop = True
                d.cond.notify_all()
            for t in threads:
                t.join(timeout=5)

    def _drive(self, d: Dispatch, i: int, out: queue.Queue) -> None:
        backend = self.replicas[i]
        gone = None
        try:
            while True:
                for result in backend.run(self._feed(d, i)):
                    self._deliver(d, i, result, out)
                with d.cond:
                    if d.held[i]:
                        raise EngineDiedError(f"replica {backend.name} ended without answering "
                                              f"{len(d.held[i])} requests")
                    if d.leaving[i]:
                        d.alive[i] = self.alive[i] = False
                        self.left.append(backend.name)
                        gone = "left"
                        return
                    more = d.retry or not d.exhausted or d.others_busy(i)
                    if d.stop or d.finished() or not more:
                        return
        except _FAILOVER as exc:
            self._fail_over(d, i, exc)
            gone = "died"
        except BaseException as exc:
            out.put(("error", exc))
        finally:
            if gone and self.on_gone is not None:
                try:  # the owner stops the server; its GPUs go to whoever is next
                    self.on_gone(i, gone)
                except Exception as err:
                    log.warning("%s: after replica %s %s: %s", self.name, backend.name, gone, err)
            out.put(("end", None))

    def _feed(self, d: Dispatch, i: int) -> Iterator[BatchRequest]:
        while True:
            req = self._take(d, i)
            if req is None:
                return
            yield req

    def _take(self, d: Dispatch, i: int) -> BatchRequest | None:
        name = self.replicas[i].name
        asked = time.monotonic()
        with d.cond:
            while not d.stop and d.alive[i] and not d.leaving[i]:
                if self.should_leave is not None and self.should_leave(i, run_view(d, i)):
                    d.leaving[i] = True
                    d.cond.notify_all()
                    break
                if d.retry or not d.exhausted:
                    wait = self.balance_wait_s - (time.monotonic() - asked)
                    if wait > 0 and not d.my_turn(i):
                        d.cond.wait(wait)
                        continue
                    req = d.next_request()
                    if req is None:
                        continue
                    d.held[i][req["custom_id"]] = req
                    self.dispatch.append((name, req["custom_id"]))
                    d.cond.notify_all()
                    return req
                # Nothing to hand out now. With requests in flight, end this run (its client
                # must not be blocked); idle, wait for fail-over work while others are busy.
                if d.held[i] or not d.others_busy(i):
                    return None
                d.cond.wait(0.5)
        return None

    def _deliver(self, d: Dispatch, i: int, result: BatchResult, out: queue.Queue) -> None:
        cid = result.get("custom_id")
        with d.cond:
            d.held[i].pop(cid, None)
            duplicate = cid in d.answered
            d.answered.add(cid)
            if not duplicate:
                self.answered_by[cid] = self.replicas[i].name
            d.cond.notify_all()
        if not duplicate:
            out.put(("result", result))

    def _fail_over(self, d: Dispatch, i: int, exc: BaseException) -> None:
        name = self.replicas[i].name
        with d.cond:
            lost = list(d.held[i].values())
            d.held[i].clear()
            d.alive[i] = self.alive[i] = False
            d.retry.extendleft(reversed(lost))  # oldest first, ahead of new work
            self.failures[name] = f"{type(exc).__name__}: {exc}"[:500]
            d.cond.notify_all()
        log.warning("%s: replica %s is gone (%s); %d unanswered requests go to the other replicas",
                    self.name, name, type(exc).__name__, len(lost))


def _cap(backend: Backend) -> float:
    return float(getattr(backend, "concurrency", None) or float("inf"))


def _enter(backend: Backend) -> BaseException | None:
    try:
        backend.__enter__()
        return None
    except BaseException as exc:  # reported per replica by the caller
        return exc
