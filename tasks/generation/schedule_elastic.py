"""Elastic GPU schedule: an engine's replicas may join late and leave early.

Inputs: `Job`s (GPU jobs only), GPU count and GPUs per node, each GPU's free time, the
largest replica count per engine. Output: placements (one per server segment) for
`schedule.Plan`.

Assumes the replicas of an engine share one request queue (a client that spreads one
model's requests over several servers), so work is divisible: any replica of the engine,
whenever it runs, takes the next requests, and a replica that stops early leaves the rest
to the others. The plan is McNaughton's wrap-around rule with set-up times: for a target
makespan T, engines (widest first, then longest) are poured into the earliest free GPU
groups of their width; a group holds one segment (a load, then generation) until T, and
the remainder spills into the next group, paying another load there. A segment shorter
than `min_replica_s` of generation is not worth its load and is not placed. The smallest
T that holds every engine is found by bisection.

Re-planning mid-run (`replan_elastic`, through `schedule_runtime.replan`): servers already
up (`Live`) are filled first, each until T in turn, since they pay no further load; those
their engine no longer needs stop now and their GPUs join the pour. The work then left is
poured as above.
"""
from __future__ import annotations

from dataclasses import dataclass

from tasks.generation.schedule_plan import Job, Placement

# Orders tried when pouring: widest first (narrow engines fill the gaps), then by length.
ORDERS = [
    lambda j: (-j.tp, -(j.load_s + j.work_s), j.engine_id),
    lambda j: (-j.tp, j.load_s + j.work_s, j.engine_id),
    lambda j: (-(j.load_s + j.work_s) * j.tp, j.engine_id),
    lambda j: (-(j.load_s + j.work_s), j.engine_id),
]


@dataclass(frozen=True)
class Live:
    """A server already up (or loading) when the plan is made: it pays no further load."""
    engine_id: str
    gpus: tuple[int, ...]
    replicas: int
    ready_s: float  # when it generates (its load's end; the past for a running server)


def _pour_live(jobs: list[Job], live: list[Live], cursor: list[float], now: float, target: float
               ) -> tuple[dict[str, float], dict[int, float]]:
    """Fill the live servers first (they cost no load), each up to the target in turn; the
    ones an engine no longer needs stop now. Returns the work left per engine and each live
    server's planned end (index into `live`)."""
    left = {j.engine_id: j.work_s for j in jobs}
    ends: dict[int, float] = {}
    for i in sorted(range(len(live)), key=lambda i: (live[i].ready_s, live[i].gpus)):
        server = live[i]
        begin = max(now, server.ready_s)
        run = min(left.get(server.engine_id, 0.0), max(0.0, target - begin) * server.replicas)
        ends[i] = begin + run / server.replicas if run > 1e-9 else now
        left[server.engine_id] = left.get(server.engine_id, 0.0) - run
        for g in server.gpus:
            cursor[g] = ends[i]
    return left, ends


def _pour(jobs: list[Job], gpus: int, per_node: int, free_at: list[float], max_replicas: dict[str, int],
          min_replica_s: float | None, target: float, order=None, live: list[Live] = (), now: float = 0.0,
          ) -> tuple[list[Placement], dict[int, float]] | None:
    """Pour every engine up to `target` (live servers first); None when it does not fit.
    Returns the new segments and each live server's planned end."""
    cursor = list(free_at)  # when each GPU is next free
    left, ends = _pour_live(jobs, list(live), cursor, now, target)
    segments: dict[str, list] = {j.engine_id: [] for j in jobs}
    held = {j.engine_id: sum(1 for s in live if s.engine_id == j.engine_id) for j in jobs}
    for job in sorted(jobs, key=order or ORDERS[0]):
        if not _place(job, left, cursor, segments[job.engine_id], held[job.engine_id], gpus, per_node,
                      max_replicas, min_replica_s, target):
            return None
    out = [Placement(job.engine_id, group[0] // per_node, tuple(sorted(group)), 1, start, end,
                     run / job.work_s if job.work_s else 1.0)
           for job in jobs for group, start, end, run in segments[job.engine_id]]
    return out, ends


def _place(job: Job, left: dict[str, float], cursor: list[float], segments: list, held: int, gpus: int,
           per_node: int, max_replicas: dict[str, int], min_replica_s: float | None, target: float) -> bool:
    """Pour one engine's work left: the earliest group until the target, the remainder into
    the group that fits it best. False: it does not fit."""
    worth = job.load_s if min_replica_s is None else min_replica_s
    while left[job.engine_id] > 1e-9:
        rest = left[job.engine_id]
        if len(segments) + held >= max_replicas[job.engine_id]:
            return False
        group = None
        if segments or held:
            group = _fitting_group(cursor, gpus, per_node, job.tp, target - job.load_s - rest)
        if group is None:
            group = _earliest_group(cursor, gpus, per_node, job.tp)
        if group is None:
            return False
        start = max(cursor[g] for g in group)
        room = target - start - job.load_s
        run = min(rest, room)
        # a sliver is not worth a load, unless it is all that is left of a small engine
        if run <= 0 or (run < min(worth, rest) - 1e-9):
            return False
        segments.append((group, start, start + job.load_s + run, run))
        for g in group:
            cursor[g] = start + job.load_s + run
        left[job.engine_id] = rest - run
    return True


def _earliest_group(cursor: list[float], gpus: int, per_node: int, tp: int) -> list[int] | None:
    """The tp GPUs of one node that are all free soonest (ties: lower node, lower ids)."""
    best = None
    for node in range(gpus // per_node):
        ids = sorted(range(node * per_node, (node + 1) * per_node), key=lambda g: (cursor[g], g))[:tp]
        if len(ids) < tp:
            continue
        start = max(cursor[g] for g in ids)
        if best is None or start < best[0]:
            best = (start, ids)
    return None if best is None else best[1]


def _fitting_group(cursor: list[float], gpus: int, per_node: int, tp: int, latest: float) -> list[int] | None:
    """Best fit for a remainder: the tp GPUs of one node free latest but by `latest`, so the
    earliest (roomiest) groups stay for engines that need a whole one."""
    best = None
    for node in range(gpus // per_node):
        ids = sorted(range(node * per_node, (node + 1) * per_node), key=lambda g: (cursor[g], g))
        for i in range(len(ids) - tp + 1):
            window = ids[i:i + tp]
            start = cursor[window[-1]]
            if start <= latest + 1e-9 and (best is None or start > best[0] + 1e-9):
                best = (start, window)
    return None if best is None else best[1]


def _merge(placements: list[Placement]) -> list[Placement]:
    """Segments of one engine on one node with the same start and end are one dp server."""
    merged: dict[tuple, Placement] = {}
    for p in placements:
        key = (p.engine_id, p.node, round(p.start_s, 6), round(p.end_s, 6))
        if key in merged:
            m = merged[key]
            merged[key] = Placement(m.engine_id, m.node, tuple(sorted(m.gpus + p.gpus)), m.replicas + 1,
                                    m.start_s, m.end_s, m.share + p.share)
        else:
            merged[key] = p
    return list(merged.values())


def plan_elastic(jobs: list[Job], gpus: int, per_node: int, free_at: list[float], max_replicas: dict[str, int],
                 min_replica_s: float | None = None, bound: float = 0.0) -> list[Placement]:
    """The poured plan with the smallest target that holds every engine, over a few orders."""
    return replan_elastic(jobs, gpus, per_node, free_at, max_replicas, min_replica_s, bound)[0]


def replan_elastic(jobs: list[Job], gpus: int, per_node: int, free_at: list[float], max_replicas: dict[str, int],
                   min_replica_s: float | None = None, bound: float = 0.0, live: list[Live] = (),
                   now: float | None = None) -> tuple[list[Placement], dict[int, float]]:
    """As `plan_elastic`, from a moment `now` at which the `live` servers hold their GPUs
    (`free_at` of those GPUs is ignored) and `jobs` carry the work still to do. Returns the
    new servers and each live server's planned end (index into `live`; `now`: stop it)."""
    now = min(free_at) if now is None else now
    lo0 = max(bound, now)
    # An upper bound that always holds: engines one after another on one group each.
    hi0 = max(list(free_at) + [now] + [s.ready_s for s in live]) + sum(j.load_s + j.work_s for j in jobs) + 1.0
    best: tuple[float, tuple] | None = None
    for order in ORDERS:
        lo, hi = lo0, hi0 if best is None else best[0]
        found = _pour(jobs, gpus, per_node, free_at, max_replicas, min_replica_s, hi, order, live, now)
        if found is None:
            continue  # only when a replica cap forbids it (or this order does no better)
        for _ in range(40):
            mid = (lo + hi) / 2
            placed = _pour(jobs, gpus, per_node, free_at, max_replicas, min_replica_s, mid, order, live, now)
            if placed is None:
                lo = mid
            else:
                hi, found = mid, placed
            if hi - lo < 0.5:
                break
        makespan = max([p.end_s for p in found[0]] + list(found[1].values()))
        if best is None or makespan < best[0]:
            best = (makespan, found)
    if best is None:
        raise ValueError("no elastic plan fits the replica caps")
    return _merge(best[1][0]), best[1][1]
