"""Fault-injection parsing, shard recognition and backfill planning, without Prefect runs."""
from __future__ import annotations

import pytest

from flows.backfill import plan_backfill, record_config, recorded_config
from flows.shard_gate import (FAULT_ENV, InjectedFault, ShardGateTaskRunner, ShardNotSelected, _verdict,
                              default_task_runner, parse_faults, select_shards, shard_of)
from storage.schemas import to_table
from storage.shards import ShardRef, ShardStore
from tasks.errors import InputError
from tests.ops.helpers import scripted


def test_parse_faults_accepts_stage_shard_pairs_and_rejects_typos():
    assert parse_faults(" sample:sharegpt-00001, rate:* ") == {("sample", "sharegpt-00001"), ("rate", "*")}
    assert parse_faults("") == set() and parse_faults(None) == set()
    with pytest.raises(ValueError, match="UF_FAIL_SHARDS: 'smaple:x'"):
        parse_faults("smaple:x")
    with pytest.raises(ValueError, match="not stage:shard_id"):
        parse_faults("sample")


def test_shard_of_reads_the_id_from_any_parameter_shape():
    ref = ShardRef("generate", "flan-00000", "/x", 3, "h", "k")
    assert shard_of("sample-shard", {"shard_id": "a-00001", "key": "k"}) == ("sample", "a-00001")
    assert shard_of("rate-shard", {"cfg": object(), "instr": ref, "comp": ref, "key": "k"}) == ("rate", "flan-00000")
    assert shard_of("generate-merge", {"shard": {"shard_id": "b-00002"}}) == ("generate", "b-00002")
    # an engine task gets a list of refs: not a shard task
    assert shard_of("generate-engine-scripted", {"instr_refs": [ref], "key": "k"}) is None
    assert shard_of("sample-plan", {"cfg": object()}) is None
    assert shard_of("other-task", {"shard_id": "a"}) is None


class _Task:
    def __init__(self, name):
        self.name = name


def test_verdict_injects_named_faults_only(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sample:a-00001,rate:*")
    assert isinstance(_verdict(_Task("sample-shard"), {"shard_id": "a-00001"}), InjectedFault)
    assert _verdict(_Task("sample-shard"), {"shard_id": "a-00002"}) is None
    assert isinstance(_verdict(_Task("rate-shard"), {"shard_id": "z-00009"}), InjectedFault)
    assert _verdict(_Task("generate-merge"), {"shard_id": "a-00001"}) is None
    monkeypatch.delenv(FAULT_ENV)
    assert _verdict(_Task("sample-shard"), {"shard_id": "a-00001"}) is None


def test_default_runner_is_the_plain_thread_pool_unless_a_fault_is_asked(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert type(default_task_runner()).__name__ == "ThreadPoolTaskRunner"
    monkeypatch.setenv(FAULT_ENV, "generate:x-00000")
    assert isinstance(default_task_runner(), ShardGateTaskRunner)
    monkeypatch.setenv(FAULT_ENV, "bogus")
    with pytest.raises(ValueError):
        default_task_runner()


def _rows(n, tag):
    return [{"prompt_id": f"{tag}{i}", "source": "s", "source_format": "jsonl", "instruction": f"q {tag} {i}",
             "correct_answers": [], "incorrect_answers": [], "reference_answer": None, "false_premise": None,
             "task": None, "source_file": "f", "source_row": i} for i in range(n)]


@pytest.fixture
def store(request):
    s = ShardStore(f"memory://ops-{request.node.name}")
    yield s
    if s.fs.exists(s.base):
        s.fs.rm(s.base, recursive=True)


def _plan(store, stage, ids, done=(), failed=()):
    store.write_plan(stage, {i: f"key-{i}" for i in ids})
    for i in done:
        store.write_shard(stage, i, to_table(_rows(2, i), "instructions"), "instructions", f"key-{i}")
    for i in failed:
        store.mark_failed(stage, i, "RuntimeError: boom")


def test_selection_skips_only_unfinished_unselected_known_shards(store):
    _plan(store, "sample", ["a", "b", "c"], done=["a"], failed=["b"])
    task = _Task("sample-shard")
    with select_shards(store, ["b"], ["a", "b", "c"]):
        assert _verdict(task, {"shard_id": "b", "key": "key-b"}) is None  # selected
        assert _verdict(task, {"shard_id": "a", "key": "key-a"}) is None  # finished: runs, returns its shard
        assert isinstance(_verdict(task, {"shard_id": "c", "key": "key-c"}), ShardNotSelected)
        assert isinstance(_verdict(task, {"shard_id": "a", "key": "new-key"}), ShardNotSelected)  # stale
        assert _verdict(_Task("assemble-publish"), {"shard_id": "published", "key": "k"}) is None  # not a known id
    assert _verdict(task, {"shard_id": "c", "key": "key-c"}) is None  # outside the block


def test_plan_runs_from_the_first_unfinished_stage_downstream(store):
    ids = ["a", "b", "c"]
    _plan(store, "sample", ids, done=["a", "c"], failed=["b"])
    _plan(store, "generate", ["a", "c"], done=["a", "c"])
    _plan(store, "rate", ["a", "c"], done=["a", "c"])
    _plan(store, "assemble", ["published"], done=["published"])
    plan = plan_backfill(store)
    assert plan.stages == ["sample", "generate", "rate", "assemble"]
    assert plan.unfinished == {"sample": ["b"], "generate": [], "rate": [], "assemble": []}
    assert plan.known == ids
    # a failed rating shard: sample and generate are not rerun
    store.mark_failed("sample", "b", "x")
    _plan(store, "sample", ids, done=["a", "b", "c"])
    store.invalidate("rate", "c")
    assert plan_backfill(store).stages == ["rate", "assemble"]
    # looking at one stage only still carries its shards downstream
    assert plan_backfill(store, stages=["rate"]).stages == ["rate", "assemble"]
    assert plan_backfill(store, stages=["sample", "generate"]).stages == []


def test_plan_with_shards_limits_the_scope_and_checks_ids(store):
    _plan(store, "sample", ["a", "b", "c"], done=["a"], failed=["b", "c"])
    plan = plan_backfill(store, shards=["c"])
    assert plan.stages == ["sample"] and plan.unfinished == {"sample": ["c"]}
    assert plan_backfill(store, shards=["a"]).stages == []  # finished: nothing to do
    with pytest.raises(InputError, match=r"shards: \['zz'\] are not shards of this run"):
        plan_backfill(store, shards=["zz"])
    with pytest.raises(InputError, match="stages: unknown"):
        plan_backfill(store, stages=["judge"])


def test_plan_treats_an_asked_for_stage_that_never_ran_as_all_to_do(store):
    _plan(store, "sample", ["a"], done=["a"])
    assert plan_backfill(store).stages == []
    plan = plan_backfill(store, stages=["generate"])
    assert plan.stages == ["generate"] and plan.unfinished == {"generate": ["*"]}


def test_empty_output_and_missing_config_are_named_errors(store, tmp_path):
    with pytest.raises(InputError, match="no planned stages"):
        plan_backfill(store)
    with pytest.raises(InputError, match="holds no run"):
        recorded_config(store)
    cfg = scripted(tmp_path / "run")
    local = ShardStore(cfg.output)
    record_config(local, cfg)
    assert recorded_config(local) == cfg
