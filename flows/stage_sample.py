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
from flows.common import StageResult
from flows.shard_tasks import ShardJob, key_from_param, run_shard_tasks
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


def run_sample(cfg, store: ShardStore, only: list[str] | None = None) -> StageResult:
    """Instruction shards of the run (all of them, or with `only` just those ids)."""
    plan = plan_sample(cfg)
    jobs = [ShardJob(s["shard_id"], s["key"], {"output": cfg.output, "selection": plan["selection"],
                                               "shard_id": s["shard_id"], "start": s["start"], "stop": s["stop"]})
            for s in plan["shards"]]
    done = run_shard_tasks(STAGE, store, jobs, write_instruction_shard, only,
                           detail=lambda o: f"{sum(r.rows for r in o.refs)} instructions")
    summary = {"shards": done.counts, "instructions": sum(r.rows for r in done.refs), "sources": plan["counts"]}
    return StageResult(STAGE, done.refs, summary, done.failed)
