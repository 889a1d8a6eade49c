"""The elastic plan's leave rule (tasks/generation/schedule_runtime.py)."""
from tasks.generation.schedule_runtime import may_leave


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
