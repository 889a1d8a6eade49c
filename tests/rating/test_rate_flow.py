"""`--stages rate` through Prefect on scripted backends: shards, journal reuse, cost summary."""
from __future__ import annotations

import os

from flows.config import load_config
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tasks.rating.scripted import scripted_rating
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def test_rate_stage_on_existing_completions_then_rerun_and_backfill(prefect_harness, tmp_path):
    out = str(tmp_path / "run")
    cfg = load_config(CFG, output=out)
    ultrafeedback(config=cfg, stages=["sample", "generate"])
    store = ShardStore(out)
    n_comp = sum(r.rows for r in store.refs("generate"))

    first = ultrafeedback(config=cfg, stages=["rate"])["stages"]["rate"]
    n_shards = len(store.refs("generate"))
    assert first["shards"] == {"written": n_shards, "kept": 0, "cached": 0, "failed": 0}
    assert first["ratings"] == n_comp * 5 and set(first["parse_status"]) <= {"ok", "na"}
    n_instr = sum(r.rows for r in store.refs("sample"))
    assert first["requests_sent_this_run"] == n_instr * 4 + n_comp  # distinct completions, so no shared critiques
    [cost] = first["cost"]
    assert cost["model"] == "scripted-judge" and cost["requests"] == first["requests_sent_this_run"]
    assert cost["usd"] is None and cost["prompt_tokens"] > 0  # no price for this model: unpriced, not free

    ratings = [r for ref in store.refs("rate") for r in store.read_shard(ref).to_pylist()]
    comps = {(c["prompt_id"], c["completion_index"]): c for ref in store.refs("generate")
             for c in store.read_shard(ref).to_pylist()}
    for row in ratings:
        if row["aspect"] in ("honesty", "helpfulness"):
            want = scripted_rating(row["aspect"], comps[(row["prompt_id"], row["completion_index"])]["response"])
            assert (row["rating"], row["rating_na"]) == ((None, True) if want == "N/A" else (float(want), False))

    again = ultrafeedback(config=cfg, stages=["rate"])["stages"]["rate"]
    assert again["shards"]["cached"] == n_shards and again["requests_sent_this_run"] == 0

    # Backfill one lost shard: its answers come from the journal, nothing is sent.
    victim = store.refs("rate")[0]
    os.remove(os.path.join(out, "rate", f"{victim.shard_id}.parquet"))
    third = ultrafeedback(config=cfg, stages=["rate"])["stages"]["rate"]
    assert third["shards"]["written"] == 1 and third["requests_sent_this_run"] == 0
    assert third["answered_from_journal_this_run"] > 0
    assert store.done(victim.stage, victim.shard_id).sha256 == victim.sha256
