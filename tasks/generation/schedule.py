"""GPU schedule of the generation stage: which engine runs where, when, with how many replicas.

Inputs: `Job`s (one per engine group: GPUs per replica = its tensor-parallel size, an
estimate of its generation time on one replica and of one replica's load time), the GPU
count and GPUs per node. Output: a `Plan` of `Placement`s (engine, node, GPU ids, replicas,
estimated start and end), printable (`render`) and recorded in the manifest (`to_dict`).

Rules, in order:
- every model is loaded once per run: one placement per engine, unless it needs more
  replicas than one node holds (then one placement per node, several servers);
- a replica spans `tp` GPUs of one node; `tp` must fit and divide the GPUs per node, so
  replicas tile a node without stranding GPUs (errors name the config field);
- replicas (vLLM `--data-parallel-size`) go to engines whose work would otherwise leave
  GPUs idle: the planner tries targets T from the lower bound upward, gives each engine
  the fewest replicas that finish it by T (each must generate at least as long as it
  loads), list-schedules the servers longest first (onto the earliest free GPUs, and again
  letting a shorter server take GPUs a wider one cannot use yet), and keeps the plan with
  the smallest makespan;
- engines that take no GPU (API endpoints, scripted) start at once and are not replicated.

This is the "static" mode the flow runs: every replica starts with its engine. The
"elastic" mode (`schedule_elastic`) lets replicas join late and leave early; it needs a
client that spreads one model's requests over servers that come and go.
With one GPU and `tp` 1 everywhere this is today's behaviour: engines one after another.
`after_failure` re-plans what is left when an engine dies mid-run.
"""
from __future__ import annotations

import math

from tasks.generation.schedule_elastic import plan_elastic
from tasks.generation.schedule_plan import Job, Placement, Plan, ScheduleError


def validate(jobs: list[Job], gpus: int, gpus_per_node: int | None = None) -> int:
    """Check the GPU settings and every job's tp; returns the GPUs per node."""
    if gpus < 1:
        raise ScheduleError(f"generation.schedule.gpus: must be at least 1, got {gpus}")
    per_node = gpus_per_node or gpus
    if per_node < 1 or gpus % per_node:
        raise ScheduleError(f"generation.schedule.gpus_per_node: {per_node} must divide generation.schedule.gpus={gpus}")
    for job in jobs:
        if job.tp < 0:
            raise ScheduleError(f"{job.field}.tensor_parallel_size: must be positive, got {job.tp}")
        if job.tp and job.tp > per_node:
            raise ScheduleError(f"{job.field}.tensor_parallel_size: {job.tp} GPUs do not fit on a node of "
                                f"{per_node} GPUs (generation.schedule.gpus)")
        if job.tp and per_node % job.tp:
            raise ScheduleError(f"{job.field}.tensor_parallel_size: {job.tp} must divide the {per_node} GPUs "
                                "per node, or replicas would strand GPUs")
        if job.work_s < 0 or job.load_s < 0:
            raise ScheduleError(f"{job.field}: negative time estimate")
    return per_node


def ideal_s(jobs: list[Job], gpus: int) -> float:
    """Total GPU-seconds with one load per engine, spread over every GPU: no plan beats it
    without fewer loads."""
    return sum(j.tp * (j.load_s + j.work_s) for j in jobs if j.tp) / gpus


def lower_bound_s(jobs: list[Job], gpus: int) -> float:
    """A makespan no plan beats: the smallest T at which every engine's work fits with the
    fewest loads it needs (a replica generates at most T - its load, so an engine needs
    ceil(work / (T - load)) loads) and all of it fits on the GPUs. Above `ideal_s` once
    GPUs outnumber what one load per engine covers."""
    gpu_jobs = [j for j in jobs if j.tp and j.work_s > 0]
    if not gpu_jobs:
        return ideal_s(jobs, gpus)

    def fits(t: float) -> bool:
        need = 0.0
        for j in gpu_jobs:
            if t <= j.load_s:
                return False
            loads = math.ceil(j.work_s / (t - j.load_s) - 1e-9)
            if loads > gpus // j.tp:
                return False
            need += j.tp * (j.work_s + loads * j.load_s)
        return need <= gpus * t + 1e-6

    lo, hi = ideal_s(jobs, gpus), sum(j.load_s + j.work_s for j in gpu_jobs) + 1.0
    if fits(lo):
        return lo
    while hi - lo > 0.01:  # need(T) only falls as T grows, gpus * T rises: one crossing
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _max_replicas(job: Job, gpus: int, replicate: bool, min_replica_s: float | None = None) -> int:
    """As many replicas as the GPUs and the cap allow, but each must generate at least as
    long as it loads (`min_replica_s`, default the load time): a load is not paid for a sliver."""
    most = gpus // job.tp
    if not replicate:
        return 1
    worth = job.load_s if min_replica_s is None else min_replica_s
    useful = most if worth <= 0 else max(1, int(job.work_s // worth))
    return max(1, min(most, useful, job.max_replicas or most))


def _servers(job: Job, replicas: int, per_node: int) -> list[int]:
    """Split an engine's replicas into servers of at most one node each, as even as possible."""
    per_server = per_node // job.tp
    n = math.ceil(replicas / per_server)
    base, extra = divmod(replicas, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def _list_schedule(units: list[tuple[Job, int, int]], gpus: int, per_node: int,
                   free_at: list[float]) -> list[Placement]:
    """Longest first, each server on the node whose `width` GPUs free up earliest."""
    free = list(free_at)
    out = []
    # duration, then width, then id: deterministic for equal estimates
    for job, reps, total in sorted(units, key=lambda u: (-(u[0].load_s + u[0].work_s / u[2]), -u[1] * u[0].tp,
                                                         u[0].engine_id)):
        width = reps * job.tp
        best = None
        for node in range(gpus // per_node):
            ids = sorted(range(node * per_node, (node + 1) * per_node), key=lambda g: (free[g], g))[:width]
            start = max(free[g] for g in ids)
            if best is None or start < best[0]:
                best = (start, node, tuple(sorted(ids)))
        start, node, ids = best
        end = start + job.load_s + job.work_s / total
        for g in ids:
            free[g] = end
        out.append(Placement(job.engine_id, node, ids, reps, start, end, reps / total))
    return out


def _backfill_schedule(units: list[tuple[Job, int, int]], gpus: int, per_node: int,
                       free_at: list[float]) -> list[Placement]:
    """At each moment GPUs free up, start the longest waiting server that fits now (a small
    engine may go ahead of a wide one that does not fit yet, so GPUs do not sit idle)."""
    free = list(free_at)
    waiting = sorted(units, key=lambda u: (-(u[0].load_s + u[0].work_s / u[2]), -u[1] * u[0].tp, u[0].engine_id))
    now, out = min(free), []
    while waiting:
        for unit in list(waiting):
            job, reps, total = unit
            idle = {n: [g for g in range(n * per_node, (n + 1) * per_node) if free[g] <= now + 1e-9]
                    for n in range(gpus // per_node)}
            fits = [n for n, ids in idle.items() if len(ids) >= reps * job.tp]
            if not fits:
                continue
            node = min(fits, key=lambda n: (len(idle[n]), n))
            ids = tuple(idle[node][:reps * job.tp])
            end = now + job.load_s + job.work_s / total
            for g in ids:
                free[g] = end
            out.append(Placement(job.engine_id, node, ids, reps, now, end, reps / total))
            waiting.remove(unit)
        later = [f for f in free if f > now + 1e-9]
        if waiting and not later:
            raise ScheduleError("a server fits on no node")  # validate() rules this out
        now = min(later) if later else now
    return out


def plan_schedule(jobs: list[Job], gpus: int = 1, gpus_per_node: int | None = None, replicate: bool = True,
                  free_at: list[float] | None = None, mode: str = "static", steps: int = 400,
                  min_replica_s: float | None = None) -> Plan:
    """The plan with the smallest estimated makespan (see the module docstring).

    `mode` "static": every replica of an engine starts with it (one vLLM server with
    `--data-parallel-size`, what a launched engine does today). "elastic": replicas may join
    later as GPUs free up (`schedule_elastic`; needs a client that spreads one engine's
    requests over several servers).
    """
    if mode not in ("static", "elastic"):
        raise ScheduleError(f"generation.schedule.mode: {mode!r} is not static or elastic")
    per_node = validate(jobs, gpus, gpus_per_node)
    free = list(free_at) if free_at is not None else [0.0] * gpus
    if len(free) != gpus:
        raise ScheduleError(f"free_at names {len(free)} GPUs, the plan has {gpus}")
    gpu_jobs = [j for j in jobs if j.tp]
    off_gpu = [Placement(j.engine_id, None, (), 1, 0.0, j.load_s + j.work_s, 1.0) for j in jobs if not j.tp]
    plan = Plan(gpus, per_node, ideal_s=ideal_s(jobs, gpus) + sum(free) / gpus)
    if not gpu_jobs:
        plan.placements = off_gpu
        return plan
    rmax = {j.engine_id: _max_replicas(j, gpus, replicate, min_replica_s) for j in gpu_jobs}
    if mode == "elastic":
        plan.placements = plan_elastic(gpu_jobs, gpus, per_node, free, rmax, min_replica_s, bound=plan.ideal_s) + off_gpu
        return plan
    bound = max(plan.ideal_s, max(min(free) + j.load_s + j.work_s / rmax[j.engine_id] for j in gpu_jobs))
    best: tuple[float, int, list[Placement]] | None = None
    # Targets from the bound to the no-replica makespan; the last one means "no replicas".
    targets = [bound * (1 + 0.005 * k) for k in range(steps)] + [math.inf]
    for target in targets:
        units = []
        for j in gpu_jobs:
            spare = target - min(free) - j.load_s
            want = rmax[j.engine_id] if spare <= 0 else math.ceil(j.work_s / spare - 1e-9)
            reps = max(1, min(rmax[j.engine_id], want))
            units += [(j, r, reps) for r in _servers(j, reps, per_node)]
        for placed in (_list_schedule(units, gpus, per_node, free), _backfill_schedule(units, gpus, per_node, free)):
            makespan = max(p.end_s for p in placed)
            loads = sum(p.replicas for p in placed)
            # A shorter makespan wins; at equal makespan (within 0.1%), fewer replicas (fewer loads).
            if best is None or makespan < best[0] * 0.999 or (makespan <= best[0] * 1.001 and loads < best[1]):
                best = (makespan, loads, placed)
    plan.placements = best[2] + off_gpu
    return plan


def after_failure(plan: Plan, jobs: list[Job], engine_id: str, at_s: float, done_fraction: float,
                  replicate: bool = True) -> Plan:
    """Re-plan when `engine_id` died at `at_s` with `done_fraction` of its work finished.

    Placements that started before `at_s` keep their GPUs (the dead one's until `at_s`);
    the rest of the dead engine (a fresh load) and every engine not yet started are placed
    again from the GPUs' new free times.
    """
    if not 0 <= done_fraction <= 1:
        raise ScheduleError(f"done_fraction must be in [0, 1], got {done_fraction}")
    by_id = {j.engine_id: j for j in jobs}
    if engine_id not in by_id:
        raise ScheduleError(f"no engine {engine_id!r} in the plan")
    kept, free = [], [at_s] * plan.gpus
    started = {p.engine_id for p in plan.placements if p.start_s < at_s}
    for p in plan.placements:
        if p.engine_id == engine_id or p.start_s >= at_s:
            continue
        kept.append(p)
        for g in p.gpus:
            free[g] = max(free[g], p.end_s)
    dead = by_id[engine_id]
    redo = [Job(dead.engine_id, dead.tp, dead.work_s * (1 - done_fraction), dead.load_s, dead.field,
                dead.max_replicas)]
    redo += [j for j in jobs if j.engine_id not in started and j.engine_id != engine_id]
    new = plan_schedule(redo, plan.gpus, plan.gpus_per_node, replicate, free_at=free)
    gone = [Placement(p.engine_id, p.node, p.gpus, p.replicas, p.start_s, at_s, p.share * done_fraction)
            for p in plan.of(engine_id) if p.start_s < at_s]
    # the new plan's shares of the dead engine are of its remainder; make them of its whole work
    redone = [Placement(p.engine_id, p.node, p.gpus, p.replicas, p.start_s, p.end_s,
                        p.share * (1 - done_fraction) if p.engine_id == engine_id else p.share)
              for p in new.placements]
    return Plan(plan.gpus, plan.gpus_per_node, kept + gone + redone, plan.ideal_s)
