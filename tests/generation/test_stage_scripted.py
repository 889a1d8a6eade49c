"""The stage's own functions on the scripted backend: parts, merge, resume, failures as data."""
from __future__ import annotations

import pytest

from storage.shards import ShardStore
from tasks.backends.scripted import ScriptedBackend
from tasks.errors import EngineDiedError, TransientError, UltraFeedbackError
from tasks.generation.engines import engine_groups
from tasks.generation.requests import plan_shard
from tasks.generation.stage import STAGE, merge_shard, part_stage, run_group
from tests.generation.conftest import scripted_pool, write_instruction_shards


def _run_all(store, cfg, refs, seed=42):
    for group in engine_groups(cfg):
        run_group(store, group, refs, cfg, seed, {}, "unused")
    return [merge_shard(store, ref, cfg, seed, {}) for ref in refs]


@pytest.mark.parametrize("root", ["memory://gen-e2e", "local"])
def test_scripted_end_to_end(root, tmp_path):
    store = ShardStore(str(tmp_path / "run") if root == "local" else root)
    refs = write_instruction_shards(store, per_shard=3, shards=3)
    cfg = scripted_pool(n=4, k=3)
    merged = _run_all(store, cfg, refs)
    assert [m.rows for m in merged] == [9, 9, 9]
    for ref, m in zip(refs, merged):
        rows = store.read_shard(m).to_pylist()
        instr = store.read_shard(ref).to_pylist()
        assert [(r["prompt_id"], r["completion_index"]) for r in rows] == sorted(
            (i["prompt_id"], c) for i in instr for c in range(3))
        for pid in {r["prompt_id"] for r in rows}:
            mine = [r for r in rows if r["prompt_id"] == pid]
            assert len({r["model"] for r in mine}) == 3
        text = {i["prompt_id"]: i["instruction"] for i in instr}
        for r in rows:
            assert r["error"] is None and r["backend"] == "scripted"
            assert r["response"].startswith(f"[{r['model']}] Answer ") and text[r["prompt_id"]][:20] in r["response"]
            assert r["request_id"] == f"gen-{r['prompt_id']}-{r['completion_index']}-{r['model']}"
            if r["principle"] == "verbalized_calibration":
                assert "\nConfidence: " in r["response"]
    if root.startswith("memory"):
        store.fs.rm(store.base, recursive=True)


def test_rows_match_plan_whatever_the_shard_size(store):
    small = write_instruction_shards(store, per_shard=2, shards=3)
    cfg = scripted_pool(n=5, k=4)
    big_store = ShardStore(store.root + "-big")
    rows_all = [r for ref in small for r in store.read_shard(ref).to_pylist()]
    from storage.schemas import to_table

    big = big_store.write_shard("sample", "all", to_table(rows_all, "instructions"), "instructions", "k")
    a = {(p.prompt_id, p.completion_index): p for ref in small for p in plan_shard(store.read_shard(ref), cfg, 9)}
    b = {(p.prompt_id, p.completion_index): p for p in plan_shard(big_store.read_shard(big), cfg, 9)}
    assert a == b


class _Counting(ScriptedBackend):
    starts = 0

    def __enter__(self):
        type(self).starts += 1
        return super().__enter__()


def test_dead_engine_keeps_finished_parts_and_retry_completes_identically(store, tmp_path):
    refs = write_instruction_shards(store, per_shard=3, shards=3)
    cfg = scripted_pool(n=2, k=2)  # every instruction draws both models: 9 requests per model
    group = engine_groups(cfg)[0]
    with pytest.raises(EngineDiedError):
        run_group(store, group, refs, cfg, 42, {}, "unused", backend=ScriptedBackend(die_after=4))
    done = [r.shard_id for r in refs if store.done(part_stage(group.names[0]), r.shard_id)]
    assert done == ["s-00000"]  # the first shard (3 requests) finished before the engine died
    before = store.done(part_stage(group.names[0]), "s-00000")

    _Counting.starts = 0
    res = run_group(store, group, refs, cfg, 42, {}, "unused", backend=_Counting())
    assert (res.kept, res.written, res.requests) == (1, 2, 6) and _Counting.starts == 1
    assert store.done(part_stage(group.names[0]), "s-00000") == before  # not rewritten

    res = run_group(store, group, refs, cfg, 42, {}, "unused", backend=_Counting())
    assert (res.kept, res.written, res.requests, _Counting.starts) == (3, 0, 0, 1)  # no engine start

    run_group(store, engine_groups(cfg)[1], refs, cfg, 42, {}, "unused")
    merged = [store.read_shard(merge_shard(store, r, cfg, 42, {})) for r in refs]
    clean_store = ShardStore(str(tmp_path / "clean"))
    clean_refs = write_instruction_shards(clean_store, per_shard=3, shards=3)
    clean = [clean_store.read_shard(m) for m in _run_all(clean_store, cfg, clean_refs)]
    assert [m.drop(["latency_s"]).to_pylist() for m in merged] == [c.drop(["latency_s"]).to_pylist() for c in clean]


def test_each_shard_is_announced_once_its_parts_are_written_and_only_then(store):
    refs = write_instruction_shards(store, per_shard=3, shards=3)
    cfg = scripted_pool(n=2, k=2)  # every shard draws both models
    group = engine_groups(cfg)[0]
    told: list[tuple[str, bool]] = []

    def on_part(shard_id):  # the part must be on the store when the word comes
        told.append((shard_id, store.done(part_stage(group.names[0]), shard_id) is not None))

    with pytest.raises(EngineDiedError):
        run_group(store, group, refs, cfg, 42, {}, "unused", backend=ScriptedBackend(die_after=4), on_part=on_part)
    assert told == [("s-00000", True)]  # the shard the dead engine did not finish is not announced
    told.clear()
    run_group(store, group, refs, cfg, 42, {}, "unused", on_part=on_part)
    # the part kept from the first attempt is announced at once, the others as they are written
    assert told == [("s-00000", True), ("s-00001", True), ("s-00002", True)]


def test_a_refused_part_is_never_announced(store):
    refs = write_instruction_shards(store, per_shard=3, shards=2)
    cfg = scripted_pool(n=1, k=1)
    refused = {p.request_id for p in plan_shard(store.read_shard(refs[1]), cfg, 42)}
    told = []
    with pytest.raises(UltraFeedbackError, match="max_error_fraction"):
        run_group(store, engine_groups(cfg)[0], refs, cfg, 42, {}, "unused",
                  backend=ScriptedBackend(fail_ids=refused), on_part=told.append)
    assert told == ["s-00000"]


def test_failed_requests_are_recorded_not_dropped(store):
    refs = write_instruction_shards(store, per_shard=3, shards=1)
    cfg = scripted_pool(n=2, k=2)
    planned = plan_shard(store.read_shard(refs[0]), cfg, 42)
    bad = {p.request_id for p in planned if p.model == "m0"}
    bad = set(sorted(bad)[:1])
    empty = {sorted(p.request_id for p in planned if p.model == "m1")[0]}
    for group in engine_groups(cfg):
        run_group(store, group, refs, cfg, 42, {}, "unused",
                  backend=ScriptedBackend(fail_ids=bad, empty_ids=empty))
    rows = store.read_shard(merge_shard(store, refs[0], cfg, 42, {})).to_pylist()
    assert len(rows) == 6
    by_id = {r["request_id"]: r for r in rows}
    (failed,) = bad
    assert by_id[failed]["response"] is None and by_id[failed]["error"] == "http_400: scripted failure"
    (blank,) = empty
    assert by_id[blank]["response"] is None and by_id[blank]["error"].startswith("empty_response")
    assert sum(r["response"] is None for r in rows) == 2


def test_mostly_refused_shard_fails_without_a_retry(store):
    refs = write_instruction_shards(store, per_shard=3, shards=1)
    cfg = scripted_pool(n=2, k=2)
    all_ids = {p.request_id for p in plan_shard(store.read_shard(refs[0]), cfg, 42)}
    group = engine_groups(cfg)[0]
    with pytest.raises(UltraFeedbackError, match="max_error_fraction") as info:
        run_group(store, group, refs, cfg, 42, {}, "unused", backend=ScriptedBackend(fail_ids=all_ids))
    assert not isinstance(info.value, TransientError)  # a refusal repeats: retrying it only pays again
    assert store.done(part_stage(group.names[0]), refs[0].shard_id) is None
    with pytest.raises(TransientError, match="not finished"):
        merge_shard(store, refs[0], cfg, 42, {})
    assert store.done(STAGE, refs[0].shard_id) is None


def test_changed_sampling_invalidates_only_that_models_parts(store):
    refs = write_instruction_shards(store, per_shard=2, shards=2)
    cfg = scripted_pool(n=2, k=2)
    _run_all(store, cfg, refs)
    changed = cfg.model_copy(deep=True)
    changed.models[1].sampling.temperature = 0.5
    results = [run_group(store, g, refs, changed, 42, {}, "unused") for g in engine_groups(changed)]
    assert [(r.kept, r.written) for r in results] == [(2, 0), (0, 2)]


def test_a_transient_failure_is_never_a_failed_row_and_the_retry_sends_only_what_is_missing(store):
    refs = write_instruction_shards(store, per_shard=3, shards=2)
    cfg = scripted_pool(n=1, k=1)
    (group,) = engine_groups(cfg)
    planned = plan_shard(store.read_shard(refs[0]), cfg, 42)
    flaky = {planned[1].request_id}
    with pytest.raises(TransientError, match="1 parts unfinished.*failed transiently"):
        run_group(store, group, refs, cfg, 42, {}, "unused", backend=ScriptedBackend(transient_ids=flaky))
    assert store.done(part_stage("m0"), refs[0].shard_id) is None  # the part holding it is not written
    assert store.done(part_stage("m0"), refs[1].shard_id) is not None  # the other shard's part is
    res = run_group(store, group, refs, cfg, 42, {}, "unused", backend=ScriptedBackend())
    assert (res.kept, res.written, res.requests, res.failed_requests) == (1, 1, 3, 0)
    rows = store.read_shard(merge_shard(store, refs[0], cfg, 42, {})).to_pylist()
    assert len(rows) == 3 and all(r["response"] and r["error"] is None for r in rows)
