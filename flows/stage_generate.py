"""Generation stage as Prefect tasks: one task per engine, then one merge task per shard.

Inputs: the run config, the finished instruction shards and optionally `only` (the shard
ids a backfill is limited to).
Outputs: `generate_parts/<model>/<shard_id>` per pool entry and instruction shard, then
`generate/<shard_id>` (COMPLETIONS, k rows per instruction), the stage plan, and a
summary (shards, completions, failed requests, tokens, engine timings).

Grouped by model as in the original: each engine task starts its engine once, sends the
requests of every shard that drew it, and stops it. Engine tasks retry on transient
errors (a dead server, too many failed requests); finished parts are kept, so a retry
redoes only unfinished shards. Without `generation.gpu_slots` the vLLM engines run one
after another (one machine, one engine at a time); with it, every engine task takes
`tensor_parallel_size` slots of that Prefect concurrency limit and they run in parallel.
"""
from __future__ import annotations

from contextlib import nullcontext

from prefect import allow_failure, task

from flows.common import StageResult, logger
from flows.shard_tasks import ShardJob, key_from_param, run_shard_tasks, transient_only
from storage.shards import ShardRef, ShardStore
from tasks.generation.engines import VLLM_MODES, EngineGroup, engine_groups
from tasks.generation.stage import STAGE, merge_key, merge_shard, run_group


def rows_by_source(cfg) -> dict[str, str]:
    return {s.name: s.principle_source for s in cfg.sources}


@task(name="generate-engine", retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def generate_with_engine(cfg, group: EngineGroup, instr_refs: list[ShardRef]) -> dict:
    """Bring one engine up, generate every unfinished part of its entries, stop it.

    Not cached by Prefect: the parts' done markers decide what is left to do, and a task
    with nothing left to do starts no engine.
    """
    store = ShardStore(cfg.output)
    gate = nullcontext()
    if cfg.generation.gpu_slots and group.serve in VLLM_MODES:
        from prefect.concurrency.sync import concurrency

        gate = concurrency(cfg.generation.gpu_slots, occupy=group.entries[0].tensor_parallel_size)
    with gate:
        res = run_group(store, group, instr_refs, cfg.generation, cfg.seed, rows_by_source(cfg), store.log_dir())
    logger().info("engine %s: %d parts written, %d kept, %d requests (%d failed), %d tokens in %.1fs",
                  group.engine_id, res.written, res.kept, res.requests, res.failed_requests,
                  res.completion_tokens, res.generate_s)
    return {"engine_id": res.engine_id, "written": res.written, "kept": res.kept, "requests": res.requests,
            "failed_requests": res.failed_requests, "completion_tokens": res.completion_tokens,
            "engine_s": round(res.engine_s, 3), "generate_s": round(res.generate_s, 3)}


@task(name="generate-merge", retries=0, cache_key_fn=key_from_param, persist_result=True)
def merge_completions(cfg, instr: ShardRef, key: str) -> dict:
    store = ShardStore(cfg.output)
    existing = store.done_with_key(STAGE, instr.shard_id, key)
    if existing is not None:
        return {"ref": existing, "action": "kept"}
    return {"ref": merge_shard(store, instr, cfg.generation, cfg.seed, rows_by_source(cfg)), "action": "written"}


def _submit_engines(cfg, groups: list[EngineGroup], instr_refs: list[ShardRef]) -> list:
    futures, previous = [], None
    for group in groups:
        serial = group.serve in VLLM_MODES and not cfg.generation.gpu_slots
        wait_for = [allow_failure(previous)] if serial and previous is not None else None
        fut = generate_with_engine.with_options(name=f"generate-engine-{group.engine_id}").submit(
            cfg, group, instr_refs, wait_for=wait_for)
        futures.append(fut)
        if serial:
            previous = fut
    return futures


def _engine_outcomes(futures: list) -> list[dict]:
    engines = []
    for fut in futures:
        state = fut.wait() or fut.state
        if state.is_completed():
            engines.append(state.result())
            continue
        try:
            state.result()
        except Exception as exc:  # kept in the summary; the shards it left unfinished fail at the merge
            engines.append({"error": f"{type(exc).__name__}: {exc}"[:2000]})
    return engines


def run_generate(cfg, store: ShardStore, instructions: StageResult, only: list[str] | None = None) -> StageResult:
    """Completion shards for the finished instruction shards (with `only`, just those ids)."""
    instr_refs = sorted(instructions.refs, key=lambda r: r.shard_id)
    rows = rows_by_source(cfg)
    jobs = [ShardJob(r.shard_id, merge_key(r, cfg.generation, cfg.seed, rows), {"cfg": cfg, "instr": r})
            for r in instr_refs]
    # Planned before the engines run, so a run that dies in an engine still shows them unfinished.
    store.write_plan(STAGE, {j.shard_id: j.key for j in jobs})
    # A shard held back by `only` needs no parts; a finished one has them all already.
    wanted = instr_refs if only is None else [r for r in instr_refs if r.shard_id in set(only)]
    engines = _engine_outcomes(_submit_engines(cfg, engine_groups(cfg.generation), wanted))
    done = run_shard_tasks(STAGE, store, jobs, merge_completions, only,
                           detail=lambda o: f"{sum(r.rows for r in o.refs)} completions")
    summary = {"shards": done.counts, "completions": sum(r.rows for r in done.refs),
               "failed_requests_this_run": sum(e.get("failed_requests", 0) for e in engines),
               "completion_tokens_this_run": sum(e.get("completion_tokens", 0) for e in engines),
               "engines": engines}
    return StageResult(STAGE, done.refs, summary, done.failed)
