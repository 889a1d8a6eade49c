"""Run-time rules of an elastic GPU plan: when a planned server may leave its engine.

Inputs: plain numbers about one server and its engine at one moment (no clock, no I/O).
Output: a decision. The cluster simulation (bench/cluster_des.py) and the flow's elastic
engine both call these, so what the simulation measures is what the flow does.

A server of an elastic plan (tasks/generation/schedule_elastic.py) was planned to run for
`planned_s` from its start. Once that time is up it leaves, freeing its GPUs for the
servers planned after it there, if a later server of its engine is still to come (that
one takes over the queue), or if its engine's other live replicas can drain the queue by
the engine's planned end (shifted by how late this server started). Otherwise it stays:
an engine slower than estimated keeps its GPUs rather than leaving work with nobody.
A request or shard part in flight is always finished first.

`replan` re-plans what is left from the throughput each engine has shown so far (when a
server ends, or once an engine's speed is first measured): the servers that are up keep
their GPUs as long as their engine needs them (they pay no second load), and the rest is
poured onto the GPUs as they free up, as the plan was. Its new ends become the servers'
planned durations for `may_leave`. A server that outstays its planned time (`overdue`:
its engine is behind) asks once for a new plan, so the servers planned after it on its
GPUs are re-planned around it instead of waiting.
"""
from __future__ import annotations

from tasks.generation.schedule_elastic import Live, replan_elastic
from tasks.generation.schedule_plan import Job, Placement


def may_leave(now_s: float, started_s: float, planned_s: float | None, pending_servers: int,
              other_replicas: int, left_s_on_one_replica: float, slack_end_s: float | None) -> bool:
    """True when the server may stop taking work (see the module docstring).

    `left_s_on_one_replica`: the engine's queued work, in seconds of one replica.
    `slack_end_s`: the engine's planned end plus this server's start delay.
    """
    if planned_s is None or now_s < started_s + planned_s - 1e-9:
        return False
    if pending_servers > 0:
        return True
    if other_replicas <= 0:
        return False
    return now_s + left_s_on_one_replica / other_replicas <= (slack_end_s or 0.0) + 1e-9


def replan(now_s: float, engines: list[tuple[str, int, float, float, int | None]],
           live: list[tuple[str, tuple[int, ...], int, float]], gpus: int, per_node: int,
           min_replica_s: float | None = None) -> tuple[list[float], list[Placement]]:
    """Plan the work still to do from `now_s`, from what has been observed.

    `engines`: (engine id, GPUs per replica, load seconds, work left in seconds of one
    replica at the OBSERVED speed, replica cap or None) for every engine with work queued.
    `live`: (engine id, GPU ids, replicas, when it generates) for every server up or
    loading now. Returns each live server's new planned end (`now_s`: stop taking work) and
    the servers to start on the GPUs as they free up (their start and end are estimates).
    Live servers are kept busy first (no new load); the rest is poured as in the plan.
    """
    jobs = [Job(e, tp, max(0.0, left), load) for e, tp, load, left, _ in engines if left > 1e-9]
    caps = {e: cap or gpus // tp for e, tp, _, _, cap in engines}
    servers = [Live(e, tuple(g), reps, ready) for e, g, reps, ready in live]
    if not jobs:
        return [now_s] * len(servers), []
    placed, ends = replan_elastic(jobs, gpus, per_node, [now_s] * gpus, caps, min_replica_s, now_s,
                                  servers, now_s)
    return [ends.get(i, now_s) for i in range(len(servers))], placed


def observed_left_s(parts_left: int, parts_done: int, generating_s: float, planned_s_per_part: float,
                    min_observed: int = 32, in_flight: int = 0) -> float:
    """An engine's work left in seconds of one replica: at the pace its replicas have shown
    (`generating_s` over `parts_done`) once `min_observed` parts are done, else the estimate.
    A part in flight counts half (on average half of it is still to do)."""
    per_part = generating_s / parts_done if parts_done >= min_observed else planned_s_per_part
    return (parts_left + in_flight / 2) * per_part


def overdue(now_s: float, started_s: float, planned_s: float | None, leaving: bool, asked: bool) -> bool:
    """True when a server has outstayed its planned time (its engine is behind, so it keeps
    its GPUs from the servers planned after it) and has not asked since the last plan: the
    moment to re-plan, rather than let those servers wait unplanned."""
    return planned_s is not None and not leaving and not asked and now_s >= started_s + planned_s - 1e-9
