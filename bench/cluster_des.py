"""Discrete-event simulation of generation engines on a GPU cluster.

Inputs: engines (`SimJob`: GPUs per replica, load time, tokens/s of one replica, and the
tokens of each shard part in shard order), the GPU count and GPUs per node, and a
schedule: "today" (one engine per model, started in pool order whenever enough GPUs of
one node are free, as the `gpu_slots` limit lets engine tasks start) or a planner `Plan`
(each server waits until the servers planned before it on its GPUs are done, as the flow's
`wait_for` chain does). Output: `SimResult` (makespan, busy GPU-seconds, per-part finish
times, the servers that ran).

Mechanics: a server occupies its GPUs from its start, is ready after the load, and each of
its replicas takes the engine's next shard part from a queue shared by all the engine's
servers, so replicas balance by themselves. A server of an elastic plan leaves at its
planned duration after its real start if a later server of its engine is still to come,
or if the others can drain the queue by the engine's planned end (shifted by this
server's delay); otherwise it stays (an engine slower than estimated keeps its GPUs). A
part in flight is always finished first, so nothing is lost. The work left is judged as a
flow can: parts left at the pace observed so far (the planner's estimate until 32 parts
are done). With `replanning`, whenever a server ends or an engine's pace is first
measured, or a server outstays its planned time, `schedule_runtime.replan` re-plans what
is left: servers up get new planned ends, and the servers not yet started are replaced by
the new plan's.
`fail=(engine, fraction)` kills one server of that engine once that fraction of its parts
is done: its parts in flight go back to the queue and the server restarts on the same
GPUs with a fresh load (the orchestrator's retry).
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from tasks.generation.schedule_runtime import may_leave, observed_left_s, overdue, replan

MIN_OBSERVED = 32  # parts an engine must have done before its pace replaces the estimate


@dataclass
class SimJob:
    engine_id: str
    tp: int
    load_s: float
    tps: float  # generated tokens per second of ONE replica
    parts: list[float]  # tokens of each shard part, in shard order (index = shard)
    shards: list[int] = field(default_factory=list)  # shard index of each part


@dataclass
class Server:
    engine_id: str
    gpus: tuple[int, ...]
    replicas: int
    start: float = 0.0
    ready: float = 0.0
    end: float | None = None
    leave_after_s: float | None = None  # elastic: planned duration
    slack_end: float | None = None  # elastic: the engine's planned end, shifted by this server's delay
    asked: int = -1  # the plan version in which it last asked for a re-plan
    running: int = 0
    in_flight: dict = field(default_factory=dict)  # replica -> (part index, when it will be done)


@dataclass
class SimResult:
    makespan_s: float
    busy_gpu_s: float  # GPUs held by a server (loading or generating)
    generating_gpu_s: float  # GPUs of replicas generating a part
    loads: int  # replica loads paid
    part_done: dict[tuple[str, int], float]  # (engine, shard) -> finish time
    servers: list[Server]


class _Sim:
    def __init__(self, jobs: list[SimJob], gpus: int, per_node: int):
        self.jobs = {j.engine_id: j for j in jobs}
        self.gpus, self.per_node = gpus, per_node
        self.free = [True] * gpus
        self.queue = {j.engine_id: deque(range(len(j.parts))) for j in jobs}
        self.events: list = []
        self.seq = itertools.count()
        self.servers: list[Server] = []
        self.part_done: dict = {}
        self.generating = 0.0
        self.loads = 0
        self.now = 0.0
        self.fail: tuple[str, float] | None = None
        self.failed = False
        self.done = dict.fromkeys(self.jobs, 0)  # parts done per engine
        self.spent = dict.fromkeys(self.jobs, 0.0)  # replica-seconds those parts took
        self.estimate: dict[str, float] = {}  # planned seconds per part of one replica
        self.replan_due = False
        self.version = 0  # plans made so far

    def push(self, t: float, kind: str, *data) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    def start(self, server: Server) -> None:
        job = self.jobs[server.engine_id]
        for g in server.gpus:
            assert self.free[g], (server, g)
            self.free[g] = False
        server.start, server.ready = self.now, self.now + job.load_s
        server.running = server.replicas
        self.loads += server.replicas
        self.servers.append(server)
        for r in range(server.replicas):
            self.push(server.ready, "idle", server, r)

    def active(self, engine_id: str) -> list[Server]:
        return [s for s in self.servers if s.engine_id == engine_id and s.end is None]

    def replica_idle(self, server: Server, r: int, pending_servers: int) -> None:
        job = self.jobs[server.engine_id]
        if server.end is not None:
            return
        q = self.queue[server.engine_id]
        others = sum(s.replicas for s in self.active(server.engine_id) if s is not server)
        left_s = self.left_s(server.engine_id)
        leaving = may_leave(self.now, server.start, server.leave_after_s, pending_servers, others, left_s,
                            server.slack_end)
        if q and overdue(self.now, server.start, server.leave_after_s, leaving, server.asked == self.version):
            server.asked = self.version
            self.replan_due = True  # it stays past its plan: re-plan around it
        if not q or leaving:
            server.running -= 1
            if server.running == 0:
                self.stop(server)
            return
        part = q.popleft()
        took = job.parts[part] / job.tps
        server.in_flight[r] = (part, self.now + took)
        self.generating += took * job.tp
        self.push(self.now + took, "done", server, r, part)

    def left_s(self, engine_id: str) -> float:
        """Queued work of an engine in seconds of one replica, as a flow can know it: the
        observed pace once enough parts are done, the planner's estimate before."""
        job = self.jobs[engine_id]
        planned = self.estimate.get(engine_id, sum(job.parts) / job.tps / len(job.parts))
        in_flight = sum(len(s.in_flight) for s in self.active(engine_id))
        return observed_left_s(len(self.queue[engine_id]), self.done[engine_id], self.spent[engine_id], planned,
                               MIN_OBSERVED, in_flight)

    def part_finished(self, server: Server, r: int, part: int) -> bool:
        """Record a part; returns False when the failure hook killed the server instead."""
        job = self.jobs[server.engine_id]
        if server.end is not None or server.in_flight.get(r, (None,))[0] != part:
            return False
        del server.in_flight[r]
        self.done[job.engine_id] += 1
        self.spent[job.engine_id] += job.parts[part] / job.tps
        if self.done[job.engine_id] == MIN_OBSERVED:
            self.replan_due = True  # its pace is known now
        self.part_done[(job.engine_id, job.shards[part] if job.shards else part)] = self.now
        if self.fail and not self.failed and self.fail[0] == job.engine_id:
            done = sum(1 for (e, _) in self.part_done if e == job.engine_id)
            if done >= self.fail[1] * len(job.parts):
                self.failed = True
                self.crash(server)
                return False
        return True

    def crash(self, server: Server) -> None:
        job = self.jobs[server.engine_id]
        for part, due in sorted(server.in_flight.values(), reverse=True):
            self.queue[server.engine_id].appendleft(part)  # lost work goes back to the queue
            self.generating -= (due - self.now) * job.tp  # the part ran only until the crash
        server.in_flight.clear()
        self.stop(server)
        again = Server(server.engine_id, server.gpus, server.replicas, leave_after_s=server.leave_after_s,
                       slack_end=server.slack_end)
        self.start(again)

    def stop(self, server: Server) -> None:
        server.end = self.now
        self.replan_due = True
        for g in server.gpus:
            self.free[g] = True


def simulate(jobs: list[SimJob], gpus: int, per_node: int, schedule, elastic: bool = False,
             fail: tuple[str, float] | None = None, replanning: bool = False,
             estimates: dict[str, float] | None = None) -> SimResult:
    """Run every job to completion under `schedule` ("today" or a Plan; `elastic` for a plan
    whose servers leave at their planned duration when their engine is on track).

    `replanning` (elastic only): whenever a server ends or an engine's pace is first
    measured, the rest is re-planned (`schedule_runtime.replan`) from the observed pace.
    `estimates`: the planner's work per engine (seconds of one replica), the pace assumed
    until one is observed (default: the true one).
    """
    sim = _Sim(jobs, gpus, per_node)
    sim.fail = fail
    for engine_id, work_s in (estimates or {}).items():
        sim.estimate[engine_id] = work_s / len(sim.jobs[engine_id].parts)
    state: dict = {}

    def follow(placements) -> None:
        """Servers wait for the ones planned before them on their GPUs (the wait_for chain)."""
        placements = sorted((p for p in placements if p.gpus), key=lambda p: (p.start_s, p.engine_id))
        state["lanes"] = {g: deque(i for i, p in enumerate(placements) if g in p.gpus) for g in range(gpus)}
        state["ends"] = {}
        for p in placements:
            state["ends"][p.engine_id] = max(state["ends"].get(p.engine_id, 0.0), p.end_s)
        state["waiting"] = list(enumerate(placements))

    if schedule == "today":
        state["waiting"] = [("today", j.engine_id, j.tp) for j in jobs]
    else:
        follow(schedule.placements)

    def dispatch() -> None:
        still = []
        for item in state["waiting"]:
            if schedule == "today":
                _, engine_id, tp = item
                ids = _free_on_one_node(sim, tp)
                if ids is None:
                    still.append(item)
                    continue
                sim.start(Server(engine_id, ids, 1))
            else:
                i, p = item
                lanes = state["lanes"]
                if not all(lanes[g][0] == i and sim.free[g] for g in p.gpus):
                    still.append(item)
                    continue
                for g in p.gpus:
                    lanes[g].popleft()
                if not sim.queue[p.engine_id]:
                    continue  # its engine is done already: launching it would only pay a load
                sim.start(Server(p.engine_id, p.gpus, p.replicas,
                                 leave_after_s=(p.end_s - p.start_s) if elastic else None,
                                 slack_end=state["ends"][p.engine_id] + sim.now - p.start_s))
        state["waiting"] = still

    def again() -> None:
        """Re-plan what is left from the observed pace; live servers get new planned ends."""
        live = [s for s in sim.servers if s.end is None]
        engines = [(e, j.tp, j.load_s, sim.left_s(e), None) for e, j in sim.jobs.items() if sim.queue[e]]
        sim.version += 1
        ends, placed = replan(sim.now, engines, [(s.engine_id, s.gpus, s.replicas, s.ready) for s in live],
                              gpus, per_node)
        follow(placed)
        for server, end in zip(live, ends):
            state["ends"][server.engine_id] = max(state["ends"].get(server.engine_id, 0.0), end)
        for server, end in zip(live, ends):
            server.leave_after_s = end - server.start
            server.slack_end = state["ends"][server.engine_id]  # its replicas ask at their next part

    def pending_of(engine_id: str) -> int:
        return sum(1 for item in state["waiting"]
                   if (item[1] if schedule == "today" else item[1].engine_id) == engine_id)

    dispatch()
    while sim.events:
        t, _, kind, data = heapq.heappop(sim.events)
        sim.now = t
        if kind == "idle":
            server, r = data
            sim.replica_idle(server, r, pending_of(server.engine_id))
        else:
            server, r, part = data
            if sim.part_finished(server, r, part):
                sim.replica_idle(server, r, pending_of(server.engine_id))
        if replanning and sim.replan_due:
            again()
        sim.replan_due = False
        dispatch()
    left = {e: len(q) for e, q in sim.queue.items() if q}
    assert not left and not state["waiting"], f"work left undone: {left}, servers never started: {len(state['waiting'])}"
    makespan = max(s.end for s in sim.servers)
    busy = sum(len(s.gpus) * (s.end - s.start) for s in sim.servers)
    return SimResult(makespan, busy, sim.generating, sim.loads, sim.part_done, sim.servers)


def _free_on_one_node(sim: _Sim, tp: int) -> tuple[int, ...] | None:
    for node in range(sim.gpus // sim.per_node):
        ids = [g for g in range(node * sim.per_node, (node + 1) * sim.per_node) if sim.free[g]]
        if len(ids) >= tp:
            return tuple(ids[:tp])
    return None
