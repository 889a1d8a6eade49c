"""Fault-injection parsing, stage validation, the run record and backfill planning, without Prefect runs."""
from __future__ import annotations

import pytest

from flows.backfill import plan_backfill
from flows.config import ConfigError, checked_stages
from flows.faults import FAULT_ENV, InjectedFault, fault_for, parse_faults, requested_faults
from flows.run_record import record_config, recorded_config
from storage.schemas import to_table
from storage.shards import ShardStore
from tasks.errors import InputError
from tests.deployments.helpers import scripted


def test_parse_faults_accepts_stage_shard_pairs_and_rejects_typos():
    assert parse_faults(" sample:sharegpt-00001, rate:* ") == {("sample", "sharegpt-00001"), ("rate", "*")}
    assert parse_faults("") == set() and parse_faults(None) == set()
    with pytest.raises(ValueError, match="UF_FAIL_SHARDS: 'smaple:x'"):
        parse_faults("smaple:x")
    with pytest.raises(ValueError, match="not stage:shard_id"):
        parse_faults("sample")


def test_faults_name_shards_or_whole_stages(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sample:a-00001,rate:*")
    faults = requested_faults()
    assert isinstance(fault_for("sample", "a-00001", faults), InjectedFault)
    assert "UF_FAIL_SHARDS forces sample:a-00001 to fail" in str(fault_for("sample", "a-00001", faults))
    assert fault_for("sample", "a-00002", faults) is None
    assert isinstance(fault_for("rate", "z-00009", faults), InjectedFault)
    assert fault_for("generate", "a-00001", faults) is None
    monkeypatch.delenv(FAULT_ENV)
    assert requested_faults() == set()
    monkeypatch.setenv(FAULT_ENV, "bogus")
    with pytest.raises(ValueError, match="UF_FAIL_SHARDS"):
        requested_faults()


def test_stages_come_back_in_pipeline_order_and_unknown_ones_are_named():
    assert checked_stages(["assemble", "sample"]) == ["sample", "assemble"]
    with pytest.raises(ConfigError, match=r"--stages: unknown \['judge'\]"):
        checked_stages(["sample", "judge"], "--stages")


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
    with pytest.raises(ConfigError, match="stages: unknown"):
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
