"""Each instruction shard is planned once per process: the engine groups and the merge share it."""
from __future__ import annotations

import tasks.generation.stage as stage
from tasks.generation.engines import engine_groups
from tasks.generation.requests import plan_shard
from tasks.generation.stage import merge_shard, run_group
from tests.generation.conftest import scripted_pool, write_instruction_shards


def test_each_shard_is_planned_once_and_the_merge_drops_its_plan(store, monkeypatch):
    refs = write_instruction_shards(store, per_shard=3, shards=3)
    cfg = scripted_pool(n=4, k=3)
    drawn = []

    def counting(table, *args, **kwargs):
        drawn.append(table.column("prompt_id")[0].as_py())
        return plan_shard(table, *args, **kwargs)

    monkeypatch.setattr(stage, "_PLANS", stage._Plans())
    monkeypatch.setattr(stage, "plan_shard", counting)
    groups = engine_groups(cfg)
    assert len(groups) == 4
    for group in groups:
        run_group(store, group, refs, cfg, 42, {}, "unused")
    assert len(drawn) == 3  # not 4 groups x 3 shards
    merged = [merge_shard(store, ref, cfg, 42, {}) for ref in refs]
    assert len(drawn) == 3 and not stage._PLANS._plans and stage._PLANS._items == 0
    for ref, m in zip(refs, merged):
        want = sorted((p.prompt_id, p.completion_index, p.model) for p in plan_shard(store.read_shard(ref), cfg, 42))
        assert sorted((r["prompt_id"], r["completion_index"], r["model"]) for r in store.read_shard(m).to_pylist()) \
            == want


def test_the_plan_cache_is_bounded_and_keyed_by_the_draw_settings(store, monkeypatch):
    refs = write_instruction_shards(store, per_shard=3, shards=3)
    cfg = scripted_pool(n=4, k=3)
    plans = stage._Plans(max_items=20)  # 9 planned completions per shard: two shards fit
    keys = [stage._Plans.key(r, cfg, 42, {}) for r in refs]
    got = [plans.get(store, r, cfg, 42, {}, k) for r, k in zip(refs, keys)]
    assert list(plans._plans) == keys[1:] and plans._items == 18
    assert got[2] is plans.get(store, refs[2], cfg, 42, {}, keys[2])
    assert got[0] == plan_shard(store.read_shard(refs[0]), cfg, 42)
    assert stage._Plans.key(refs[0], cfg, 43, {}) != keys[0]
    assert stage._Plans.key(refs[0], scripted_pool(n=4, k=2), 42, {}) != keys[0]
