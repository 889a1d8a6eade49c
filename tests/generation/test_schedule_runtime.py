"""The elastic plan's run-time rules (tasks/generation/schedule_runtime.py): when a server
may leave, and re-planning what is left from the observed pace."""
import itertools
import random

import pytest

from tasks.generation.schedule_runtime import may_leave, observed_left_s, overdue, replan


def test_a_server_stays_until_its_planned_time_is_up():
    assert not may_leave(99.0, 0.0, 100.0, pending_servers=1, other_replicas=4, left_s_on_one_replica=0.0,
                         slack_end_s=1e9)


def test_a_static_server_never_leaves_early():
    assert not may_leave(1e6, 0.0, None, pending_servers=1, other_replicas=4, left_s_on_one_replica=0.0,
                         slack_end_s=1e9)


def test_it_leaves_when_a_later_server_of_its_engine_takes_over():
    assert may_leave(100.0, 0.0, 100.0, pending_servers=1, other_replicas=0, left_s_on_one_replica=1e6,
                     slack_end_s=0.0)


def test_it_leaves_only_if_the_others_drain_the_queue_by_the_planned_end():
    # 300 s of work over 3 other replicas: done at 200, planned end 200 -> may leave; 199 -> stays
    assert may_leave(100.0, 0.0, 100.0, 0, 3, 300.0, 200.0)
    assert not may_leave(100.0, 0.0, 100.0, 0, 3, 300.0, 199.0)


def test_the_last_replica_never_leaves_work_behind():
    assert not may_leave(500.0, 0.0, 100.0, 0, 0, 1.0, 1e9)


def test_live_servers_that_suffice_get_the_work_and_no_new_server_is_planned():
    # 300 s of one replica left, two live replicas generating from now: both end at 100 + 150
    ends, placed = replan(100.0, [("a", 1, 50.0, 300.0, None)], [("a", (0,), 1, 50.0), ("a", (1,), 1, 50.0)],
                          gpus=2, per_node=2)
    assert placed == []
    assert ends == [pytest.approx(250.0, abs=1.0)] * 2


def test_a_server_whose_engine_has_no_work_left_stops_and_its_gpus_serve_another_engine():
    ends, placed = replan(100.0, [("b", 1, 10.0, 500.0, None)], [("a", (0,), 1, 0.0), ("b", (1,), 1, 0.0)],
                          gpus=2, per_node=2)
    assert ends[0] == 100.0  # "a" is done: its server leaves now
    (new,) = placed  # "b" joins on GPU 0 after a 10 s load: (T-100) + (T-110) = 500 -> T = 355
    assert new.engine_id == "b" and new.gpus == (0,) and new.start_s == 100.0
    assert ends[1] == pytest.approx(355.0, abs=1.0) and new.end_s == pytest.approx(355.0, abs=1.0)
    assert (ends[1] - 100.0) / 500.0 + new.share == pytest.approx(1.0)


def test_a_server_still_loading_generates_only_once_ready():
    ends, placed = replan(10.0, [("a", 2, 60.0, 100.0, None)], [("a", (0, 1), 1, 60.0)], gpus=2, per_node=2)
    assert placed == [] and ends == [pytest.approx(160.0, abs=1.0)]


def test_nothing_left_stops_every_live_server():
    assert replan(5.0, [], [("a", (0,), 1, 0.0)], gpus=1, per_node=1) == ([5.0], [])


@pytest.mark.parametrize("seed", range(6))
def test_replans_are_valid_plans(seed):
    """No GPU double-booked (live servers until their new end, then the new servers), every
    server on one node with tp GPUs per replica, every engine's work left covered once."""
    rng = random.Random(seed)
    gpus, per_node, now = 16, 8, 500.0
    engines, live, free = [], [], list(range(gpus))
    for i in range(rng.randint(3, 7)):
        tp = rng.choice([1, 1, 2, 4])
        engines.append((f"e{i}", tp, rng.uniform(30, 100), rng.uniform(0, 3000), None))
    rng.shuffle(free)
    for e, tp, load, _, _ in engines:
        node = rng.randrange(gpus // per_node)
        ids = sorted(g for g in free if g // per_node == node)[:tp]
        if len(ids) == tp and rng.random() < 0.7:
            live.append((e, tuple(ids), 1, now + rng.uniform(-200, load)))
            free = [g for g in free if g not in ids]
    ends, placed = replan(now, engines, live, gpus, per_node)
    busy = [(set(g), now, end) for (_, g, _, _), end in zip(live, ends)] + [(set(p.gpus), p.start_s, p.end_s)
                                                                           for p in placed]
    for (ga, sa, ea), (gb, sb, eb) in itertools.combinations(busy, 2):
        if ga & gb:
            assert ea <= sb + 1e-6 or eb <= sa + 1e-6
    tp_of = {e: tp for e, tp, *_ in engines}
    for p in placed:
        assert len(p.gpus) == tp_of[p.engine_id] * p.replicas and len({g // per_node for g in p.gpus}) == 1
        assert p.start_s >= now - 1e-9
    for e, _, _, left, _ in engines:
        by_live = sum(max(0.0, end - max(now, ready)) * reps for (f, _, reps, ready), end in zip(live, ends) if f == e)
        share = sum(p.share for p in placed if p.engine_id == e)
        assert by_live / left + share == pytest.approx(1.0, abs=1e-6), e


def test_the_pace_replaces_the_estimate_once_enough_parts_are_done():
    assert observed_left_s(10, 5, 50.0, planned_s_per_part=2.0, min_observed=8) == 20.0  # too few: estimate
    assert observed_left_s(10, 8, 40.0, planned_s_per_part=2.0, min_observed=8) == 50.0  # 5 s a part seen
    assert observed_left_s(0, 100, 40.0, planned_s_per_part=2.0) == 0.0


def test_a_server_staying_past_its_plan_asks_once_for_a_new_plan():
    assert overdue(100.0, 0.0, 100.0, leaving=False, asked=False)
    assert not overdue(100.0, 0.0, 100.0, leaving=False, asked=True)  # asked already under this plan
    assert not overdue(100.0, 0.0, 100.0, leaving=True, asked=False)  # it leaves: nothing to re-plan
    assert not overdue(99.0, 0.0, 100.0, leaving=False, asked=False)  # its time is not up
    assert not overdue(1e6, 0.0, None, leaving=False, asked=False)  # a static server has no planned end
