"""Generation stage as Prefect tasks: one task per engine, and one merge task per shard that
starts when the engines serving its shard have written their parts of it.

Inputs: the run config, the finished instruction shards and optionally `only` (the shard
ids a backfill is limited to).
Outputs: `generate_parts/<model>/<shard_id>` per pool entry and instruction shard, then
`generate/<shard_id>` (COMPLETIONS, k rows per instruction), the stage plan, and a
summary (shards, completions, failed requests, tokens, engine timings). `run_generate`
returns the stage in flight (flows.shard_tasks.StageInFlight), so the rate stage can start
each shard's rating as soon as that shard is merged.

Grouped by model as in the original: each engine task starts its engine once, sends the
requests of every shard that drew it, and stops it. Engine tasks retry on transient
errors (a dead server, too many failed requests); finished parts are kept, so a retry
redoes only unfinished shards.

Engine tasks follow the GPU plan (tasks/generation/schedule_pool.py), which is logged and
kept in the stage summary (so in the manifest): they are submitted longest first, and a
vLLM engine waits (`wait_for`) for the engines planned before it on any of its GPUs. With
`generation.schedule.gpus` unset every vLLM engine takes the one slot, so they run one
after another, unless `generation.gpu_slots` names a Prefect concurrency limit: then every
engine task takes its GPUs' worth of slots and the limit alone decides (as before). With
`schedule.gpus` set, a launched server gets its planned replicas as `--data-parallel-size`
and its planned GPUs as CUDA_VISIBLE_DEVICES.

With `schedule.mode: elastic` a placement is one server segment of an engine: every
engine task is submitted at once, each still one task (so shards, parts, markers,
retries and backfill are the same), and they wait on the run's GPU ledger
(tasks/generation/gpu_ledger.py), not on each other's futures (flows/generate_elastic.py
runs one such engine task). A vllm_server engine
drives its servers as they get their GPUs (tasks/generation/elastic_engine.py); a
vllm_batch engine holds its one placement while it runs (tasks/generation/held_engine.py).
With `schedule.replan` the run's Replanner (tasks/generation/replanner.py) plans what is
left again from the engines' observed pace as they go. The ledger's record of who held
which GPU when, and each re-plan, go into the summary beside the plan.
"""
from __future__ import annotations

import uuid
from contextlib import nullcontext

from prefect import allow_failure, task

from flows.common import StageResult, logger, rows_by_source
from flows.generate_elastic import run_elastic, start_replanner
from flows.shard_tasks import (
    Collector,
    ShardJob,
    StageInFlight,
    chosen_jobs,
    key_from_param,
    start_shard_tasks,
    transient_only,
)
from storage.shards import ShardRef, ShardStore
from tasks.generation import gpu_ledger, part_events
from tasks.generation.engines import VLLM_MODES, EngineGroup, engine_groups, planned_engine, with_engine
from tasks.generation.schedule import Plan
from tasks.generation.schedule_pool import plan_for_pool
from tasks.generation.stage import STAGE, merge_key, merge_shard, run_group


@task(name="generate-engine", retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def generate_with_engine(cfg, group: EngineGroup, instr_refs: list[ShardRef], gpus: int | None = None,
                         ledger_key: str | None = None, parts_key: str | None = None) -> dict:
    """Bring one engine up, generate every unfinished part of its entries, stop it.

    Not cached by Prefect: the parts' done markers decide what is left to do, and a task
    with nothing left to do starts no engine. `ledger_key`: the run's GPU ledger (elastic
    mode), which this task's servers wait on for their GPUs. `parts_key`: the run's channel
    (tasks/generation/part_events.py), told as each shard's parts are written.
    """
    store = ShardStore(cfg.output)

    def on_part(shard_id: str) -> None:
        part_events.notify(parts_key, group.engine_id, shard_id)

    if ledger_key is not None:
        return _summary(*run_elastic(cfg, store, group, instr_refs, gpu_ledger.ledger(ledger_key), on_part))
    gate = nullcontext()
    if cfg.generation.gpu_slots and group.serve in VLLM_MODES:
        from prefect.concurrency.sync import concurrency

        gate = concurrency(cfg.generation.gpu_slots, occupy=gpus or group.entries[0].tensor_parallel_size)
    with gate:
        res = run_group(store, group, instr_refs, cfg.generation, cfg.seed, rows_by_source(cfg), store.log_dir(),
                        on_part=on_part)
    return _summary(res)


def _summary(res, servers: list | None = None) -> dict:
    logger().info("engine %s: %d parts written, %d kept, %d requests (%d failed), %d tokens in %.1fs",
                  res.engine_id, res.written, res.kept, res.requests, res.failed_requests,
                  res.completion_tokens, res.generate_s)
    out = {"engine_id": res.engine_id, "written": res.written, "kept": res.kept, "requests": res.requests,
           "failed_requests": res.failed_requests, "completion_tokens": res.completion_tokens,
           "engine_s": round(res.engine_s, 3), "generate_s": round(res.generate_s, 3)}
    if servers is not None:
        out["servers"] = servers
    return out


@task(name="generate-merge", retries=0, cache_key_fn=key_from_param, persist_result=True)
def merge_completions(cfg, instr: ShardRef, key: str) -> dict:
    store = ShardStore(cfg.output)
    existing = store.done_with_key(STAGE, instr.shard_id, key)
    if existing is not None:
        return {"ref": existing, "action": "kept"}
    return {"ref": merge_shard(store, instr, cfg.generation, cfg.seed, rows_by_source(cfg)), "action": "written"}


def _as_planned(cfg, group: EngineGroup, replicas: int, gpu_ids: list[int]) -> EngineGroup:
    """The group with its planned replicas and GPUs in the launched engine's arguments."""
    sched = cfg.generation.schedule
    if group.serve != "vllm_server" or sched.gpus is None:
        return group
    pin = sched.pin_devices and sched.gpus > 1
    return with_engine(group, planned_engine(group.entries[0].engine, replicas, gpu_ids, pin))


def engine_runner(engines: int):
    """A thread pool of the engine tasks' own, one thread per engine, when the flow runs on
    the default thread pool; None on other task runners (Dask, Ray keep engines on their
    workers). An engine task holds its thread from submission (waiting for its `wait_for`
    or the GPU ledger) until its engine stops: on the flow's bounded pool (flows/runtime.py)
    as many engines as threads would leave none for the merges and rate tasks that run
    beside generation. Enter it before submitting; leave it once the engines are done."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    ctx = FlowRunContext.get()
    if ctx is None or type(ctx.task_runner) is not ThreadPoolTaskRunner:
        return None
    return ThreadPoolTaskRunner(max_workers=max(1, engines))


def _submit_one(runner, engine_id: str, params: dict, wait_for=None):
    named = generate_with_engine.with_options(name=f"generate-engine-{engine_id}")
    if runner is None:
        return named.submit(**params, wait_for=wait_for)
    return runner.submit(named, params, wait_for)


def _submit_engines(cfg, groups: list[EngineGroup], instr_refs: list[ShardRef], plan: Plan,
                    ledger_key: str | None = None, parts_key: str | None = None, runner=None) -> list:
    """One engine task per group, in plan order (on `runner` if given). Elastic mode
    (`ledger_key`) submits them all at once: the ledger, not `wait_for`, orders their servers."""
    by_id = {g.engine_id: g for g in groups}
    common = {"cfg": cfg, "instr_refs": instr_refs, "parts_key": parts_key}
    if ledger_key is not None:
        return [_submit_one(runner, e, {**common, "group": by_id[e], "ledger_key": ledger_key})
                for e in plan.order()]
    gated = cfg.generation.gpu_slots and cfg.generation.schedule.gpus is None  # the limit alone decides
    futures, last_on = [], {}
    for engine_id in plan.order():
        group = by_id[engine_id]
        gpu_ids = sorted({g for p in plan.of(engine_id) for g in p.gpus})
        before = [] if gated else list(dict.fromkeys(last_on[g] for g in gpu_ids if g in last_on))
        fut = _submit_one(runner, engine_id, {
            **common, "group": _as_planned(cfg, group, plan.replicas(engine_id), gpu_ids),
            "gpus": len(gpu_ids) if cfg.generation.schedule.gpus else None},
            wait_for=[allow_failure(f) for f in before] or None)
        futures.append(fut)
        for g in gpu_ids:
            last_on[g] = fut
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


def _engines_by_shard(cfg, store: ShardStore, groups: list[EngineGroup], refs: list[ShardRef]) -> dict[str, set]:
    """Per instruction shard, the engines that have requests for it (from the shard's draws,
    cached for the engines and the merge, which read them again)."""
    from tasks.generation.stage import _PLANS, _Plans

    engine_of = {e.name: g.engine_id for g in groups for e in g.entries}
    rows = rows_by_source(cfg)
    return {ref.shard_id: {engine_of[p.model] for p in _PLANS.get(store, ref, cfg.generation, cfg.seed, rows,
                                                                  _Plans.key(ref, cfg.generation, cfg.seed, rows))}
            for ref in refs}


def run_generate(cfg, store: ShardStore, instructions: StageResult, only: list[str] | None = None) -> StageInFlight:
    """Completion shards for the finished instruction shards (with `only`, just those ids), in flight.

    The engines are submitted now. `collect(on_done)` (or `settled`) submits each shard's
    merge as soon as every engine that has requests for it has written its parts (word
    from inside the engine tasks, tasks/generation/part_events.py) or has ended, a failed
    engine failing only the shards whose parts it did not write, and calls
    `on_done(job, output)` as each shard is merged: that is how the rate stage starts
    behind generation, on the first shards while the engines still generate the rest. A
    merge is submitted when it can run rather than at once with `wait_for`, because a task
    waiting for its `wait_for` holds a thread of the bounded thread pool: merges waiting
    for a slow engine would take every thread from the merges that could run. Engine
    tasks in other processes (Dask, Ray) send no word; their shards merge when they end.
    """
    instr_refs = sorted(instructions.refs, key=lambda r: r.shard_id)
    rows = rows_by_source(cfg)
    jobs = [ShardJob(r.shard_id, merge_key(r, cfg.generation, cfg.seed, rows), {"cfg": cfg, "instr": r})
            for r in instr_refs]
    # Planned before the engines run, so a run that dies in an engine still shows them unfinished.
    merges = start_shard_tasks(STAGE, store, merge_completions, {j.shard_id: j.key for j in jobs})
    # A shard held back by `only` needs no parts; a finished one has them all already.
    wanted = instr_refs if only is None else [r for r in instr_refs if r.shard_id in set(only)]
    groups = engine_groups(cfg.generation)
    plan = plan_for_pool(cfg.generation, groups, sum(r.rows for r in instr_refs))
    mode = cfg.generation.schedule.mode
    logger().info("%s\nmode: %s", plan.render(), mode)
    key = f"{cfg.output}|{uuid.uuid4().hex}" if mode == "elastic" else None
    led = gpu_ledger.open_ledger(key, plan) if key else None
    replanner = start_replanner(cfg, groups, led, sum(r.rows for r in instr_refs))
    parts_key = f"{cfg.output}|parts|{uuid.uuid4().hex}"
    events = part_events.open_channel(parts_key)  # before the engines start: none of their word is lost
    runner = engine_runner(len(groups))
    if runner is not None:
        runner.__enter__()
    engine_futures = _submit_engines(cfg, groups, wanted, plan, key, parts_key, runner)
    future_of = dict(zip(plan.order(), engine_futures))
    for engine_id, fut in future_of.items():
        fut.add_done_callback(lambda _f, e=engine_id: events.put(("engine", e, None)))
    serving = _engines_by_shard(cfg, store, groups, wanted)
    run = chosen_jobs(STAGE, store, jobs, only)
    merges.held = None if only is None else len(jobs) - len(run)

    def collect(on_done) -> StageResult:
        collector, left, ended, written = Collector(merges, len(run)), list(run), set(), set()

        def merge_ready() -> None:
            nonlocal left
            ready = [j for j in left if all(e in ended or (e, j.shard_id) in written
                                            for e in serving.get(j.shard_id, ()))]
            left = [j for j in left if j not in ready]
            # wait_for names the ended engines only (the UI's arrows): not the ones still at work
            collector.add([(j, merges.submit(j, [allow_failure(future_of[e]) for e in serving.get(j.shard_id, ())
                                                 if e in ended])) for j in ready], on_done)

        merge_ready()  # shards that need no engine (finished parts, or held back)
        try:
            while len(ended) < len(future_of):
                kind, engine, shard_id = events.get()
                if kind == "engine":
                    ended.add(engine)
                else:
                    written.add((engine, shard_id))
                merge_ready()
        finally:
            part_events.close_channel(parts_key)
            if replanner is not None:
                replanner.__exit__(None, None, None)
        engines = _engine_outcomes(engine_futures)
        if runner is not None:
            runner.__exit__(None, None, None)  # every engine task has ended: its threads go
        schedule = {"mode": mode, **plan.to_dict()}
        if led is not None:  # who held which GPU when, as it happened
            schedule["ran"] = led.history()
            if replanner is not None:
                schedule["replans"] = replanner.history
            gpu_ledger.close_ledger(key)
        done = collector.finish(lambda o: f"{sum(r.rows for r in o.refs)} completions")
        summary = {"shards": done.counts, "completions": sum(r.rows for r in done.refs),
                   "failed_requests_this_run": sum(e.get("failed_requests", 0) for e in engines),
                   "completion_tokens_this_run": sum(e.get("completion_tokens", 0) for e in engines),
                   "engines": engines, "schedule": schedule}
        return StageResult(STAGE, done.refs, summary, done.failed)

    return StageInFlight(run, collect)
