"""The packing program answers small cases whose best makespan is known by hand."""
from __future__ import annotations

import pytest

from bench.cluster_packing import solve
from tasks.generation.schedule_plan import Job


@pytest.mark.parametrize("jobs, gpus, best", [
    # two engines, one GPU each: each needs its load plus its work
    ([Job("a", 1, 100.0, 10.0), Job("b", 1, 100.0, 10.0)], 2, 110.0),
    # a long engine split over both GPUs, the short one first on the second GPU (a pair):
    # 2T - 60 >= 150
    ([Job("a", 1, 150.0, 10.0), Job("b", 1, 30.0, 10.0)], 2, 105.0),
    # a tp-2 engine on both GPUs first (110 s), then two tp-1 engines on one GPU each (50 s)
    ([Job("w", 2, 100.0, 10.0), Job("x", 1, 40.0, 10.0), Job("y", 1, 40.0, 10.0)], 2, 160.0),
])
def test_feasible_at_the_best_makespan_and_not_a_second_below(jobs, gpus, best):
    at = solve(jobs, gpus, best, step=10.0, time_limit=30)
    assert at["result"] == "feasible" and at["gpus_used"] <= gpus, at
    assert solve(jobs, gpus, best - 1.0, step=10.0, time_limit=30)["result"] == "infeasible"


def test_a_feasible_plan_names_its_shapes():
    out = solve([Job("w", 2, 100.0, 10.0), Job("x", 1, 40.0, 10.0), Job("y", 1, 40.0, 10.0)], 2, 160.0, 10.0, 30)
    wide_first = {"wide first w s=110": 1, "wide first narrow x s=110": 1, "wide first narrow y s=110": 1}
    narrow_first = {"narrow first w s=50": 1, "narrow first narrow x s=50": 1, "narrow first narrow y s=50": 1}
    assert out["shapes"] in (wide_first, narrow_first)  # the same plan, either way round
