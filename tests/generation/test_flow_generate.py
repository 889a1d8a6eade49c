"""The generation stage through the Prefect flow on scripted backends."""
from __future__ import annotations

from flows.cli import status_data
from flows.config import load_config
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def _completions(out):
    store = ShardStore(out)
    return [r for ref in store.refs("generate") for r in store.read_shard(ref).to_pylist()]


def test_generate_after_sample_then_generate_alone(prefect_harness, tmp_path):
    out = str(tmp_path / "run")
    cfg = load_config(CFG, output=out)
    first = ultrafeedback(config=cfg, stages=["sample", "generate"])
    gen = first["stages"]["generate"]
    assert gen["shards"] == {"written": 5, "kept": 0, "cached": 0, "failed": 0}
    assert gen["completions"] == 60 and gen["failed_requests_this_run"] == 0
    assert sorted(e["engine_id"] for e in gen["engines"]) == sorted(m.name for m in cfg.generation.models)
    rows = _completions(out)
    assert len(rows) == 60 and all(r["response"] and r["error"] is None for r in rows)
    per_prompt = {}
    for r in rows:
        per_prompt.setdefault(r["prompt_id"], set()).add(r["model"])
    assert len(per_prompt) == 15 and all(len(m) == 4 for m in per_prompt.values())

    # `--stages generate` on the instruction shards of the earlier run: nothing to redo.
    again = ultrafeedback(config=cfg, stages=["generate"])["stages"]["generate"]
    assert again["shards"]["written"] == 0 and again["shards"]["failed"] == 0
    assert all(e["written"] == 0 and e["requests"] == 0 for e in again["engines"])
    assert _completions(out) == rows
    status = status_data(out)["stages"]["generate"]
    assert status["counts"] == {"done": 5} and status["rows"] == 60


def test_dead_engine_fails_its_shards_and_a_rerun_backfills(prefect_harness, tmp_path):
    out = str(tmp_path / "run")
    dying = load_config(CFG, ["generation.models.2.script={die_after: 0}"], output=out)
    state = ultrafeedback(config=dying, stages=["sample", "generate"], return_state=True)
    assert state.is_failed() and "5 shard(s) failed" in state.message  # the run says so; its result is the summary
    summary = state.result(raise_on_failure=False)["stages"]["generate"]
    assert summary["shards"]["failed"] == 5 and summary["shards"]["written"] == 0
    assert any("EngineDiedError" in e.get("error", "") for e in summary["engines"])
    store = ShardStore(out)
    assert sorted(store.incomplete("generate")) == sorted(r.shard_id for r in store.refs("sample"))
    # the healthy engines' parts survived
    assert len(store.fs.glob(f"{store.base}/generate_parts/scripted-alpha/*.done.json")) == 5

    fixed = load_config(CFG, output=out)
    summary = ultrafeedback(config=fixed, stages=["generate"])["stages"]["generate"]
    assert summary["shards"]["written"] == 5 and summary["shards"]["failed"] == 0
    by_engine = {e["engine_id"]: e for e in summary["engines"]}
    assert by_engine["scripted-alpha"]["written"] == 0 and by_engine["scripted-gamma"]["written"] == 5
    assert store.incomplete("generate") == []
