"""Pipelining: the judge runs behind generation, and assemble publishes what is done.

The pool has three instant scripted models and one slow model behind a real local
OpenAI-protocol server (one request at a time, `latency_s` each). With k=2 of 4 and one
prompt per shard, about half the shards never draw the slow model: their merges and
ratings must happen while the slow engine is still generating, as the outputs' own
write times show. With k=4 of 4 every shard draws the slow model: a shard is merged and
rated as soon as the slow engine has written its part, not when that engine ends.
"""
from __future__ import annotations

import pyarrow as pa
import pytest

from flows.cli import main
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tests.deployments.helpers import SCRIPTED, published_tables, scripted

SLOW_S = 0.6


def pipelined_cfg(out, url: str, *more: str):
    slow = f"{{name: slow-delta, serve: openai, base_url: '{url}', model: slow-delta, concurrency: 1}}"
    return scripted(out, "shard_size=1", "generation.k=2", f"generation.models.3={slow}", *more)


def mtime(path) -> float:
    return path.stat().st_mtime


def test_rating_starts_while_the_slow_engine_still_generates(prefect_harness, judge_server_factory, tmp_path):
    server = judge_server_factory(latency_s=SLOW_S)
    cfg = pipelined_cfg(tmp_path / "run", server.url)
    state = ultrafeedback(config=cfg, return_state=True)
    summary = state.result()
    assert all(summary["stages"][s]["shards"]["failed"] == 0 for s in ("sample", "generate", "rate", "assemble"))
    store, out = ShardStore(cfg.output), tmp_path / "run"
    # Shards that drew no slow-delta completion: their merge waits only for the instant engines.
    early = {s for s in store.plan("generate") if store.done("generate_parts/slow-delta", s) is None}
    assert early and early != set(store.plan("generate")), "the draws must give some shards the slow model"
    assert summary["stages"]["rate"]["shards"]["written"] == len(store.plan("rate")) == 15
    # The slow engine writes its parts shard by shard, the last one when it is done.
    slow_done = max(mtime(p) for p in (out / "generate_parts" / "slow-delta").glob("*.parquet"))
    rated_before = {s for s in store.plan("rate") if mtime(out / "rate" / f"{s}.parquet") < slow_done}
    # Whole shards were rated while the slow engine was still generating: some it does not
    # serve, and any it does only after it had written their part.
    assert rated_before & early, (rated_before, early)
    slow = out / "generate_parts" / "slow-delta"
    assert all(mtime(slow / f"{s}.parquet") <= mtime(out / "rate" / f"{s}.parquet") for s in rated_before - early)


def test_with_every_model_in_every_shard_rating_starts_before_the_last_part(prefect_harness, judge_server_factory,
                                                                           tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner

    server = judge_server_factory(latency_s=SLOW_S)
    gamma = f"{{name: slow-gamma, serve: openai, base_url: '{server.url}', model: slow-gamma, concurrency: 1}}"
    # k=4 of 4: no shard avoids the slow models. Two task threads: if the two slow engine
    # tasks held the flow's threads, no merge or rate task could run before they ended.
    cfg = pipelined_cfg(tmp_path / "run", server.url, "generation.k=4", f"generation.models.2={gamma}")
    summary = ultrafeedback.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(config=cfg)
    assert summary["stages"]["rate"]["shards"]["written"] == 15
    store, out = ShardStore(cfg.output), tmp_path / "run"
    assert all(store.done(f"generate_parts/slow-{m}", s) for s in store.plan("generate") for m in ("gamma", "delta"))
    last_part = max(mtime(p) for m in ("gamma", "delta") for p in (out / "generate_parts" / f"slow-{m}").glob("*.parquet"))
    rated = sorted(mtime(out / "rate" / f"{s}.parquet") for s in store.plan("rate"))
    # Each slow engine writes a part every SLOW_S or so; shards were merged and rated while
    # they still generated the rest, so the first rate shard comes well before the last part.
    assert rated[0] < last_part - 2 * SLOW_S, (rated[:3], last_part)
    assert sum(t < last_part for t in rated) >= 3


def test_a_failed_merge_holds_only_its_own_rate_shard(prefect_harness, judge_server_factory, tmp_path, monkeypatch):
    server = judge_server_factory()
    cfg = pipelined_cfg(tmp_path / "run", server.url)
    ultrafeedback(config=cfg, stages=["sample"])
    store = ShardStore(cfg.output)
    victim, n = min(store.plan("sample")), len(store.plan("sample"))
    monkeypatch.setenv("UF_FAIL_SHARDS", f"generate:{victim}")
    summary = ultrafeedback(config=cfg, stages=["generate", "rate"], return_state=True).result(raise_on_failure=False)
    gen, rate = summary["stages"]["generate"]["shards"], summary["stages"]["rate"]["shards"]
    assert gen["failed"] == 1 and gen["written"] == n - 1
    assert rate == {"written": n - 1, "kept": 0, "cached": 0, "failed": 0, "held": 1}
    assert summary["stages"]["rate"]["held_upstream_failed"] == [victim]
    assert summary["failed"] == {"generate": [victim]}
    assert store.incomplete("rate") == [victim] and store.incomplete("generate") == [victim]


@pytest.fixture
def api_url(prefect_harness, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the CLI uses it and starts no server


def test_assemble_on_demand_publishes_an_unfinished_run(api_url, tmp_path, monkeypatch):
    out = tmp_path / "run"
    store = ShardStore(str(out))
    monkeypatch.setenv("UF_FAIL_SHARDS", "rate:*")  # the judge has finished no shard yet...
    assert main(["run", "--config", SCRIPTED, "--out", str(out), "--stages", "sample,generate,rate"]) == 1
    monkeypatch.delenv("UF_FAIL_SHARDS")
    rated = min(store.plan("rate"))  # ...then one shard is rated, the others still are not
    assert main(["backfill", "--out", str(out), "--stages", "rate", "--shards", rated]) == 0
    unrated = sorted(set(store.plan("rate")) - {rated})
    assert unrated and store.incomplete("rate") == unrated

    assert main(["run", "--config", SCRIPTED, "--out", str(out), "--stages", "assemble"]) == 0
    tables = published_tables(out)
    dataset = pa.concat_tables(t for name, t in tables.items() if name.startswith("dataset/"))
    assert dataset.num_rows == sum(r.rows for r in store.refs("sample"))  # every prompt, rated or not
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"{len(unrated)} rate shard(s) are not finished" in card
    rated_ids = set(store.read_shard(store.done("rate", rated)).column("prompt_id").to_pylist())
    long = pa.concat_tables(t for name, t in tables.items() if name.startswith("dataset_long/")).to_pylist()
    assert rated_ids and {r["prompt_id"] for r in long if r["rating"] is not None} <= rated_ids
    assert {r["prompt_id"] for r in long if r["rating"] is not None} & rated_ids
