"""The cluster simulation's engines: every part done once, no GPU held twice, replicas
balance, a killed server's parts are redone, and the schedules follow their rules."""
from __future__ import annotations

import itertools

import pytest

from bench.cluster_des import SimJob, simulate
from tasks.generation.schedule import Job, plan_schedule


def jobs() -> list[SimJob]:
    return [SimJob("big", 4, 20.0, 100.0, [1000.0] * 40), SimJob("mid", 2, 10.0, 100.0, [500.0] * 30),
            SimJob("small", 1, 5.0, 100.0, [200.0] * 50)]


def planner_jobs(sims: list[SimJob]) -> list[Job]:
    return [Job(s.engine_id, s.tp, sum(s.parts) / s.tps, s.load_s) for s in sims]


def check(res, sims: list[SimJob], gpus: int, lost: bool = False) -> None:
    for s in sims:
        assert {shard for (e, shard) in res.part_done if e == s.engine_id} == set(range(len(s.parts)))
    for a, b in itertools.combinations(res.servers, 2):
        if set(a.gpus) & set(b.gpus):
            assert a.end <= b.start + 1e-9 or b.end <= a.start + 1e-9, (a, b)
    assert all(0 <= g < gpus for s in res.servers for g in s.gpus)
    needed = sum(s.tp * sum(s.parts) / s.tps for s in sims)
    if lost:  # a crash wastes what its parts in flight had done
        assert res.generating_gpu_s >= needed - 1e-6
    else:
        assert res.generating_gpu_s == pytest.approx(needed)
    assert res.busy_gpu_s <= gpus * res.makespan_s + 1e-6


def test_today_runs_one_engine_per_model_as_gpus_free():
    sims = jobs()
    res = simulate(sims, 4, 4, "today")
    check(res, sims, 4)
    assert [s.engine_id for s in sorted(res.servers, key=lambda s: s.start)] == ["big", "mid", "small"]
    assert res.loads == 3
    # big alone on all 4 GPUs, then mid and small side by side
    assert res.makespan_s == pytest.approx(20 + 400 + max(10 + 150, 5 + 100))


@pytest.mark.parametrize("mode", ["static", "elastic"])
def test_plans_run_to_completion_and_replicas_share_the_work(mode):
    sims = [SimJob("only", 1, 5.0, 100.0, [100.0] * 80)]
    plan = plan_schedule(planner_jobs(sims), 8, 8, mode=mode)
    res = simulate(sims, 8, 8, plan, elastic=mode == "elastic")
    check(res, sims, 8)
    assert sum(s.replicas for s in res.servers) == 8
    assert res.makespan_s == pytest.approx(5 + 80 / 8)  # 8 replicas, 10 parts each


def test_a_killed_server_redoes_its_parts_in_flight_after_a_fresh_load():
    sims = jobs()
    sims[0] = SimJob("big", 4, 20.0, 100.0, [900.0 + (i * 137) % 400 for i in range(40)])  # uneven parts
    plan = plan_schedule(planner_jobs(sims), 8, 8)
    clean = simulate(sims, 8, 8, plan)
    hurt = simulate(sims, 8, 8, plan, fail=("big", 0.5))
    check(hurt, sims, 8, lost=True)
    assert hurt.loads > clean.loads
    assert hurt.makespan_s > clean.makespan_s
    assert hurt.generating_gpu_s >= clean.generating_gpu_s


def off_the_estimate() -> tuple[list[SimJob], list[Job]]:
    """Engines whose real speed is off the planner's 100 tok/s by -20 % to +20 %."""
    sims = [SimJob("big", 4, 20.0, 80.0, [1000.0] * 40), SimJob("mid", 2, 10.0, 120.0, [500.0] * 60),
            SimJob("s1", 1, 5.0, 85.0, [200.0] * 90), SimJob("s2", 1, 5.0, 115.0, [200.0] * 70)]
    return sims, [Job(s.engine_id, s.tp, sum(s.parts) / 100.0, s.load_s) for s in sims]


def test_replanning_from_the_observed_pace_beats_following_a_wrong_plan():
    sims, est = off_the_estimate()
    plan = plan_schedule(est, 16, 8, mode="elastic")
    estimates = {j.engine_id: j.work_s for j in est}
    plain = simulate(sims, 16, 8, plan, elastic=True, estimates=estimates)
    again = simulate(sims, 16, 8, plan, elastic=True, estimates=estimates, replanning=True)
    check(plain, sims, 16)
    check(again, sims, 16)
    ideal = sum(s.tp * (s.load_s + sum(s.parts) / s.tps) for s in sims) / 16
    assert again.makespan_s < plain.makespan_s
    assert again.makespan_s <= 1.15 * ideal  # 1.09 measured; the plain run's 1.40 is far off
    assert plain.makespan_s > 1.3 * ideal


def test_replanning_survives_a_killed_server():
    sims, est = off_the_estimate()
    plan = plan_schedule(est, 16, 8, mode="elastic")
    estimates = {j.engine_id: j.work_s for j in est}
    clean = simulate(sims, 16, 8, plan, elastic=True, estimates=estimates, replanning=True)
    hurt = simulate(sims, 16, 8, plan, elastic=True, estimates=estimates, replanning=True, fail=("big", 0.5))
    check(hurt, sims, 16, lost=True)
    big = [s for s in hurt.servers if s.engine_id == "big"]
    assert len(big) > len([s for s in clean.servers if s.engine_id == "big"])  # the restart
    assert hurt.makespan_s > clean.makespan_s
