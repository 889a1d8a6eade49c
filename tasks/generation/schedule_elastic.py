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
"""
from __future__ import annotations

from tasks.generation.schedule_plan import Job, Placement

# Orders tried when pouring: widest first (narrow engines fill the gaps), then by length.
ORDERS = [
    lambda j: (-j.tp, -(j.load_s + j.work_s), j.engine_id),
    lambda j: (-j.tp, j.load_s + j.work_s, j.engine_id),
    lambda j: (-(j.load_s + j.work_s) * j.tp, j.engine_id),
    lambda j: (-(j.load_s + j.work_s), j.engine_id),
]


def _pour(jobs: list[Job], gpus: int, per_node: int, free_at: list[float], max_replicas: dict[str, int],
          min_replica_s: float | None, target: float, order=None) -> list[Placement] | None:
    cursor = list(free_at)  # when each GPU is next free
    out: list[Placement] = []
    for job in sorted(jobs, key=order or ORDERS[0]):
        left, segments = job.work_s, []
        worth = job.load_s if min_replica_s is None else min_replica_s
        while left > 1e-9:
            if len(segments) >= max_replicas[job.engine_id]:
                return None
            group = _fitting_group(cursor, gpus, per_node, job.tp, target - job.load_s - left) if segments else None
            if group is None:
                group = _earliest_group(cursor, gpus, per_node, job.tp)
            if group is None:
                return None
            start = max(cursor[g] for g in group)
            room = target - start - job.load_s
            run = min(left, room)
            # a sliver is not worth a load, unless it is all that is left of a small engine
            if run <= 0 or (run < min(worth, left) - 1e-9):
                return None
            segments.append((group, start, start + job.load_s + run, run))
            for g in group:
                cursor[g] = start + job.load_s + run
            left -= run
        for group, start, end, run in segments:
            out.append(Placement(job.engine_id, group[0] // per_node, tuple(sorted(group)), 1, start, end,
                                 run / job.work_s if job.work_s else 1.0))
    return out


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
    lo0 = max(bound, min(free_at))
    # An upper bound that always holds: engines one after another on one group each.
    hi0 = max(free_at) + sum(j.load_s + j.work_s for j in jobs) + 1.0
    best: tuple[float, list[Placement]] | None = None
    for order in ORDERS:
        lo, hi = lo0, hi0 if best is None else best[0]
        found = _pour(jobs, gpus, per_node, free_at, max_replicas, min_replica_s, hi, order)
        if found is None:
            continue  # only when a replica cap forbids it (or this order does no better)
        for _ in range(40):
            mid = (lo + hi) / 2
            placed = _pour(jobs, gpus, per_node, free_at, max_replicas, min_replica_s, mid, order)
            if placed is None:
                lo = mid
            else:
                hi, found = mid, placed
            if hi - lo < 0.5:
                break
        makespan = max(p.end_s for p in found)
        if best is None or makespan < best[0]:
            best = (makespan, found)
    if best is None:
        raise ValueError("no elastic plan fits the replica caps")
    return _merge(best[1])
