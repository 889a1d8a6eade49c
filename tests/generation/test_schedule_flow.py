"""The generation flow follows the GPU plan: engines on the same GPU one after another,
engines on different GPUs side by side, replicas and GPUs in the launched server's
arguments. The engines themselves are replaced by a recorder (no vLLM here)."""
from __future__ import annotations

import threading
import time

from prefect import flow

import flows.stage_generate as sg
from flows.config import load_config
from tasks.generation.engines import engine_groups
from tasks.generation.schedule_pool import plan_for_pool
from tasks.generation.stage import GroupResult
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def test_engine_tasks_run_as_planned(prefect_harness, monkeypatch, tmp_path):
    lock, seen = threading.Lock(), {}

    def recorder(store, group, *args, **kwargs):
        engine = group.entries[0].engine
        start = time.monotonic()
        time.sleep(0.6)
        with lock:
            seen[group.engine_id] = (start, time.monotonic(), engine.env.get("CUDA_VISIBLE_DEVICES"),
                                     list(engine.extra_args))
        return GroupResult(group.engine_id)

    monkeypatch.setattr(sg, "run_group", recorder)
    over = ["generation.k=1", "generation.schedule.gpus=2", "generation.schedule.load_s=0"]
    # a long engine that takes both GPUs first (one server, two replicas), then two short ones side by side
    for i, tokens in enumerate([1024, 64, 64]):
        over += [f"generation.models.{i}.serve=vllm_server", f"generation.models.{i}.model=/m/{i}",
                 f"generation.models.{i}.sampling.max_tokens={tokens}"]
    cfg = load_config(CFG, overrides=over, output=str(tmp_path / "run"))
    groups = engine_groups(cfg.generation)
    plan = plan_for_pool(cfg.generation, groups, 1000)
    assert plan.replicas("scripted-alpha") == 2

    @flow
    def generate_engines():
        return [f.result() for f in sg._submit_engines(cfg, groups, [], plan)]

    results = generate_engines()
    assert sorted(r["engine_id"] for r in results) == sorted(g.engine_id for g in groups)
    big = seen["scripted-alpha"]
    assert big[2] == "0,1" and big[3][-2:] == ["--data-parallel-size", "2"]
    others = [seen[n] for n in ("scripted-beta", "scripted-gamma")]
    assert sorted(o[2] for o in others) == ["0", "1"]
    assert all(o[0] >= big[1] for o in others)  # waited for the engine planned before them
    assert max(o[0] for o in others) < min(o[1] for o in others)  # and ran side by side
    # scripted-delta takes no GPU and did not wait
    assert "scripted-delta" not in seen or seen["scripted-delta"][0] < big[1]
