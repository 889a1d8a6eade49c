"""Sampling stage as Prefect tasks: one planning task, then one task per instruction shard.

Inputs: the run config. Outputs: instruction shards `sample/<source>-<k>.parquet`
(INSTRUCTIONS schema) with done markers, the stage plan, and per-source counts.

The planning task validates every source before anything is written. Each shard task
is keyed on the content hash of its rows + code version, so a rerun of the same config is
served from Prefect's cache or the markers, and a raised quota rewrites only the shards
whose rows changed (selection is rank-ordered, so new rows land in the last shards).
"""
from __future__ import annotations

from prefect import task

import tasks.sources.adapters
import tasks.sources.filters
import tasks.sources.sampling
from flows.common import StageResult, collect, key_from_param, logger, result_storage
from storage.keys import code_version, shard_key
from storage.schemas import to_table
from storage.shards import ShardStore, table_hash

STAGE = "sample"


def _code() -> str:
    return code_version(tasks.sources.adapters, tasks.sources.filters, tasks.sources.sampling)


@task(name="sample-plan", retries=0)
def plan_sample(cfg) -> dict:
    """Select all rows and stage them in a content-addressed selection file."""
    from tasks.sources.sampling import select

    sel = select(cfg.sources, cfg.sampling, cfg.seed, cfg.shard_size)
    store = ShardStore(cfg.output)
    table = to_table(sel.rows, "instructions")
    digest = table_hash(table)
    sel_stage = f"{STAGE}/_selection"
    if store.done(sel_stage, digest[:24]) is None:
        store.write_shard(sel_stage, digest[:24], table, "instructions", key=digest)
    shards = []
    for sp in sel.shards:
        part = table.slice(sp.start, sp.stop - sp.start)
        key = shard_key(STAGE, [table_hash(part)], {"shard_id": sp.shard_id}, _code())
        shards.append({"shard_id": sp.shard_id, "start": sp.start, "stop": sp.stop, "key": key})
    return {"selection": digest[:24], "shards": shards, "counts": sel.counts}


@task(name="sample-shard", retries=2, retry_delay_seconds=1, cache_key_fn=key_from_param, persist_result=True)
def write_instruction_shard(output: str, selection: str, shard_id: str, start: int, stop: int, key: str) -> dict:
    store = ShardStore(output)
    existing = store.done_with_key(STAGE, shard_id, key)
    if existing is not None:
        return {"ref": existing, "action": "kept"}
    table = store.read_shard(f"{STAGE}/_selection", selection).slice(start, stop - start)
    return {"ref": store.write_shard(STAGE, shard_id, table, "instructions", key), "action": "written"}


def run_sample(cfg, store: ShardStore, upstream: dict) -> StageResult:
    plan = plan_sample(cfg)
    shards = plan["shards"]
    store.write_plan(STAGE, {s["shard_id"]: s["key"] for s in shards})
    shard_task = write_instruction_shard.with_options(result_storage=result_storage(store))

    def submit(s, refresh=False):
        t = shard_task.with_options(refresh_cache=True) if refresh else shard_task
        return t.submit(cfg.output, plan["selection"], s["shard_id"], s["start"], s["stop"], s["key"])

    futures = [submit(s) for s in shards]
    refs, counts = collect(STAGE, store, futures, [s["shard_id"] for s in shards], [s["key"] for s in shards],
                           rerun=lambda i: submit(shards[i], refresh=True).result())
    rows = sum(r.rows for r in refs)
    logger().info(
        "sample: %d shards (%d written, %d unchanged, %d cached, %d failed), %d instructions",
        len(shards), counts["written"], counts["kept"], counts["cached"], counts["failed"], rows)
    return StageResult(STAGE, refs, {"shards": counts, "instructions": rows, "sources": plan["counts"]})
