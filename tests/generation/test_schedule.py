"""The GPU schedule planner: pools and GPU counts, TP constraints, replicas, a failing engine,
and the plan the generation flow derives from a config."""
from __future__ import annotations

import itertools

import pytest

from flows.config import ConfigError, load_config
from tasks.generation.config import GenerationConfig
from tasks.generation.engines import engine_groups
from tasks.generation.schedule import Job, Plan, ScheduleError, after_failure, ideal_s, lower_bound_s, plan_schedule
from tasks.generation.schedule_pool import jobs_for_pool, plan_for_pool
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def no_overlap(plan: Plan) -> None:
    """No GPU runs two servers at once, every server sits on one node, ids are in range."""
    for a, b in itertools.combinations([p for p in plan.placements if p.gpus], 2):
        if set(a.gpus) & set(b.gpus):
            assert a.end_s <= b.start_s + 1e-6 or b.end_s <= a.start_s + 1e-6, (a, b)
    for p in plan.placements:
        assert all(0 <= g < plan.gpus for g in p.gpus)
        assert {g // plan.gpus_per_node for g in p.gpus} <= {p.node} if p.gpus else p.node is None


def work_done(plan: Plan, jobs: list[Job]) -> None:
    """Each engine's placements cover its whole work exactly once."""
    for j in jobs:
        assert sum(p.share for p in plan.of(j.engine_id)) == pytest.approx(1.0), j.engine_id


POOL = [Job("big", 4, 1000, 60), Job("mid", 2, 800, 50), Job("small-a", 1, 300, 30), Job("small-b", 1, 200, 30),
        Job("api", 0, 100)]


def test_one_gpu_is_todays_behaviour_engines_one_after_another_longest_first():
    jobs = [Job("a", 1, 100, 10), Job("b", 1, 300, 10), Job("c", 1, 200, 10), Job("api", 0, 50)]
    plan = plan_schedule(jobs, gpus=1)
    assert plan.order() == ["api", "b", "c", "a"]  # the API engine needs no GPU and starts at once
    runs = sorted((p for p in plan.placements if p.gpus), key=lambda p: p.start_s)
    assert [(p.engine_id, p.start_s, p.end_s, p.replicas) for p in runs] == [
        ("b", 0, 310, 1), ("c", 310, 520, 1), ("a", 520, 630, 1)]
    assert plan.makespan_s == plan.ideal_s == 630
    no_overlap(plan)


@pytest.mark.parametrize("gpus", [4, 8, 16])
@pytest.mark.parametrize("mode", ["static", "elastic"])
def test_pools_on_several_gpu_counts_are_valid_and_never_beat_the_ideal(gpus, mode):
    plan = plan_schedule(POOL, gpus=gpus, gpus_per_node=min(gpus, 8), mode=mode)
    no_overlap(plan)
    work_done(plan, POOL)
    assert plan.ideal_s == pytest.approx(ideal_s(POOL, gpus))
    assert plan.makespan_s >= plan.ideal_s - 1e-6
    # within the bounds any sane plan meets: never slower than everything on one GPU group in turn
    assert plan.makespan_s <= sum(j.load_s + j.work_s for j in POOL)


def test_the_lower_bound_counts_the_loads_extra_replicas_must_pay():
    # 100 s of work, 10 s loads, 4 GPUs: the ideal (one load) is 110 / 4 = 27.5 s, but 4
    # replicas each pay a load: 10 + 100 / 4 = 35 s, and 3 would need 10 + 100 / 3
    assert lower_bound_s([Job("a", 1, 100, 10)], 4) == pytest.approx(35.0, abs=0.02)
    assert lower_bound_s([Job("a", 1, 100, 10)], 1) == ideal_s([Job("a", 1, 100, 10)], 1) == 110
    for gpus in (4, 8, 16):
        bound = lower_bound_s(POOL, gpus)
        assert bound >= ideal_s(POOL, gpus) - 1e-9
        for mode in ("static", "elastic"):
            assert plan_schedule(POOL, gpus=gpus, gpus_per_node=min(gpus, 8), mode=mode).makespan_s >= bound - 0.02


def test_replicas_fill_gpus_a_single_engine_would_leave_idle():
    one = [Job("7b", 1, 800, 40)]
    plan = plan_schedule(one, gpus=8)
    (p,) = plan.placements
    assert p.replicas == 8 and len(p.gpus) == 8  # one server, --data-parallel-size 8
    assert plan.makespan_s == pytest.approx(40 + 800 / 8)
    assert plan_schedule(one, gpus=8, replicate=False).makespan_s == 840  # today's: 7 GPUs idle
    # a replica that would mostly load is not worth it: a tiny job keeps one replica
    assert plan_schedule([Job("tiny", 1, 10, 100)], gpus=8).replicas("tiny") == 1


def test_replicas_respect_tp_and_caps():
    plan = plan_schedule([Job("70b", 4, 4000, 90), Job("batch", 1, 900, 30, max_replicas=1)], gpus=8)
    assert plan.replicas("batch") == 1
    for p in plan.of("70b"):
        assert len(p.gpus) == 4 * p.replicas
    no_overlap(plan)


def test_replicas_beyond_one_node_become_several_servers():
    plan = plan_schedule([Job("7b", 1, 6400, 40)], gpus=16, gpus_per_node=8)
    servers = plan.of("7b")
    assert len(servers) == 2 and {p.node for p in servers} == {0, 1}
    assert plan.replicas("7b") == 16
    no_overlap(plan)


def test_the_longest_engine_starts_first_on_a_crowded_node():
    jobs = [Job("short", 4, 100, 10), Job("long", 4, 900, 10), Job("medium", 4, 400, 10)]
    plan = plan_schedule(jobs, gpus=4, replicate=False)
    assert plan.order() == ["long", "medium", "short"]


@pytest.mark.parametrize("gpus,tp,message", [
    (4, 8, "generation.models.3.tensor_parallel_size: 8 GPUs do not fit"),
    (8, 3, "generation.models.3.tensor_parallel_size: 3 must divide"),
])
def test_tp_constraints_name_the_field(gpus, tp, message):
    with pytest.raises(ScheduleError, match=message):
        plan_schedule([Job("x", tp, 10, field="generation.models.3")], gpus=gpus)


def test_gpu_settings_are_checked():
    with pytest.raises(ScheduleError, match="generation.schedule.gpus: must be at least 1"):
        plan_schedule(POOL, gpus=0)
    with pytest.raises(ScheduleError, match="gpus_per_node: 3 must divide"):
        plan_schedule(POOL, gpus=8, gpus_per_node=3)
    with pytest.raises(ScheduleError, match="mode"):
        plan_schedule(POOL, gpus=8, mode="magic")


def test_a_config_whose_tp_cannot_be_placed_fails_at_load_naming_the_field():
    with pytest.raises(ConfigError, match=r"generation.models.1.tensor_parallel_size: 8 GPUs do not fit"):
        load_config(CFG, overrides=["generation.schedule.gpus=4", "generation.models.1.serve=vllm_server",
                                    "generation.models.1.model=/m/x", "generation.models.1.tensor_parallel_size=8"])


def test_a_failing_engine_is_replanned_with_a_fresh_load_and_the_rest_of_its_work():
    jobs = [Job("a", 2, 1000, 50), Job("b", 2, 1000, 50), Job("c", 2, 600, 50), Job("d", 2, 400, 50)]
    plan = plan_schedule(jobs, gpus=4, replicate=False)
    first, second = plan.order()[:2]
    dead_at = 500.0
    new = after_failure(plan, jobs, first, at_s=dead_at, done_fraction=0.4, replicate=False)
    no_overlap(new)
    work_done(new, jobs)
    # the other engine that had started keeps its GPUs and times
    assert new.of(second) == plan.of(second)
    # the dead engine's first run ends when it died; the rest runs again after a load
    old, *redo = sorted(new.of(first), key=lambda p: p.start_s)
    assert old.end_s == dead_at and old.share == pytest.approx(0.4)
    assert redo and all(p.start_s >= dead_at for p in redo)
    assert sum(p.end_s - p.start_s for p in redo) >= 50 + 1000 * 0.6 - 1e-6
    # engines that had not started are placed after the failure
    for engine in plan.order()[2:]:
        assert all(p.start_s >= dead_at for p in new.of(engine))
    assert new.makespan_s >= plan.makespan_s
    with pytest.raises(ScheduleError, match="no engine"):
        after_failure(plan, jobs, "nope", 1.0, 0.5)


def test_elastic_plans_come_closer_to_the_ideal_than_static_ones_on_awkward_pools():
    jobs = [Job(f"70b-{i}", 4, 1500, 95) for i in range(3)] + [Job(f"7b-{i}", 1, 570, 75) for i in range(5)]
    static = plan_schedule(jobs, gpus=16, gpus_per_node=8)
    elastic = plan_schedule(jobs, gpus=16, gpus_per_node=8, mode="elastic")
    for plan in (static, elastic):
        no_overlap(plan)
        work_done(plan, jobs)
    assert elastic.makespan_s <= static.makespan_s
    assert elastic.makespan_s <= 1.15 * elastic.ideal_s


def test_plan_is_printable_and_recordable():
    plan = plan_schedule(POOL, gpus=8)
    text = plan.render()
    assert "8 GPU(s)" in text and all(j.engine_id in text for j in POOL)
    record = plan.to_dict()
    assert record["gpus"] == 8 and len(record["placements"]) == len(plan.placements)
    assert {p["engine_id"] for p in record["placements"]} == {j.engine_id for j in POOL}


def test_the_flow_plan_from_a_config():
    gen = GenerationConfig.model_validate({"k": 2, "schedule": {"gpus": 8}, "models": [
        {"name": "big", "serve": "vllm_server", "model": "/m/big", "tensor_parallel_size": 4},
        {"name": "small", "serve": "vllm_server", "model": "/m/small"},
        {"name": "offline", "serve": "vllm_batch", "model": "/m/off"},
        {"name": "api", "serve": "openai", "model": "x", "base_url": "http://127.0.0.1:9/v1"}]})
    groups = engine_groups(gen)
    jobs = {j.engine_id: j for j in jobs_for_pool(gen, groups, 1000)}
    assert jobs["big"].tp == 4 and jobs["api"].tp == 0 and jobs["offline"].max_replicas == 1
    assert jobs["small"].work_s == pytest.approx(1000 * 2 / 4 * 1024 / 2000)
    plan = plan_for_pool(gen, groups, 1000)
    no_overlap(plan)
    assert plan.replicas("offline") == 1 and plan.replicas("api") == 1
    # without schedule.gpus: one slot, vLLM engines one after another, nothing replicated
    legacy = plan_for_pool(gen.model_copy(update={"schedule": gen.schedule.model_copy(update={"gpus": None})}),
                           groups, 1000)
    vllm = sorted((p for p in legacy.placements if p.gpus), key=lambda p: p.start_s)
    assert [p.gpus for p in vllm] == [(0,)] * 3 and all(p.replicas == 1 for p in vllm)
    assert all(a.end_s <= b.start_s for a, b in zip(vllm, vllm[1:]))


def test_the_flow_gives_a_launched_server_its_planned_replicas_and_gpus():
    from flows.config import load_config as load
    from flows.stage_generate import _as_planned

    def cfg_with(gpus):
        over = ["generation.k=1", "generation.models.0.serve=vllm_server", "generation.models.0.model=/m/a"]
        if gpus:
            over.append(f"generation.schedule.gpus={gpus}")
        return load(CFG, overrides=over)

    cfg = cfg_with(8)
    group = engine_groups(cfg.generation)[0]
    planned = _as_planned(cfg, group, 4, [4, 5, 6, 7])
    engine = planned.entries[0].engine
    assert engine.extra_args[-2:] == ["--data-parallel-size", "4"]
    assert engine.env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert group.entries[0].engine.extra_args == []  # the config itself is left alone
    one = _as_planned(cfg, group, 1, [2]).entries[0].engine
    assert "--data-parallel-size" not in one.extra_args and one.env["CUDA_VISIBLE_DEVICES"] == "2"
    # without schedule.gpus (CPU, or the gpu_slots gate) the engine is launched as configured
    legacy = cfg_with(None)
    lgroup = engine_groups(legacy.generation)[0]
    assert _as_planned(legacy, lgroup, 1, [0]) == lgroup
