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
"""
from __future__ import annotations


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
