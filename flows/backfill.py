"""The `ultrafeedback-backfill` flow: finish the shards a run left unfinished, then re-assemble.

Inputs: the run's output root (its recorded config is read from there), the stages to look
at (default: every stage the run planned) and optionally the shard ids to limit it to.
Output: the missing shards written, the manifest and artifacts rewritten, and a summary:
the stages run, the shards that were unfinished, the ones backfilled and those still
unfinished.

A shard is unfinished when its stage planned it and no finished shard exists for its
current key (failed, pending or stale; `ShardStore.incomplete`). The flow runs the first
stage with unfinished shards and every later stage the run planned, so backfilled shards
flow downstream and the dataset is assembled again. Finished shards are not recomputed:
each stage skips them through its markers and Prefect's cache, and the rating journal
answers requests already paid for. With `shards`, the stages run with `only=shards`:
unfinished shards outside the list are held back, not run (flows/shard_tasks.py).

A backfill that leaves shards of its scope unfinished ends in state Failed, its result
still the summary, as a run of the `ultrafeedback` flow does.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.states import Failed

from flows.common import logger, quiet_expected_errors
from flows.config import STAGES, Stage, checked_stages
from flows.run_record import recorded_config
from flows.ultrafeedback import run_pipeline
from storage.shards import ShardStore
from tasks.errors import InputError

quiet_expected_errors()


@dataclass
class BackfillPlan:
    stages: list[str]  # stages to run, in pipeline order
    unfinished: dict[str, list[str]]  # per examined stage: unfinished shards in scope
    known: list[str]  # shard ids a selection may name (the first planned stage's shards)


def plan_backfill(store: ShardStore, stages: list[str] | None = None, shards: list[str] | None = None) -> BackfillPlan:
    """Decide what to run; pure reading of the store, nothing is written."""
    planned = [s for s in STAGES if s in store.stages()]
    if not planned:
        raise InputError(f"output: {store.root} has no planned stages; start it with `ultrafeedback run`")
    targets = checked_stages(stages or planned)
    known = sorted(store.plan(planned[0]))
    if shards:
        missing = sorted(set(shards) - set(known))
        if missing:
            raise InputError(f"shards: {missing} are not shards of this run (e.g. {known[:3]})")
    unfinished: dict[str, list[str]] = {}
    for stage in targets:
        if stage in planned:
            ids = store.incomplete(stage)
            unfinished[stage] = [s for s in ids if s in shards] if shards else ids
        else:  # asked for but never reached: all of it is to do
            unfinished[stage] = ["*"]
    todo = [s for s in targets if unfinished[s]]
    if not todo:
        return BackfillPlan([], unfinished, known)
    first = STAGES.index(todo[0])
    run = [s for s in STAGES[first:] if s in targets or s in planned]
    return BackfillPlan(run, unfinished, known)


def backfill_run(output: str, stages: list[str] | None = None, shards: list[str] | None = None) -> dict:
    """Body of the flow: plan, run the stages, report what is backfilled and what is left."""
    store = ShardStore(output)
    cfg = recorded_config(store)
    if ShardStore(cfg.output).base != store.base:
        raise InputError(f"output: the recorded config writes to {cfg.output}, not {output}")
    plan = plan_backfill(store, stages, shards)
    result = {"output": output, "stages_run": plan.stages, "unfinished_before": plan.unfinished,
              "backfilled": {}, "still_unfinished": {}, "summary": None}
    if not plan.stages:
        logger().info("backfill %s: nothing unfinished in %s", output, list(plan.unfinished))
        return result
    logger().info("backfill %s: unfinished %s; running %s", output,
                  {k: len(v) for k, v in plan.unfinished.items() if v}, plan.stages)
    result["summary"] = run_pipeline(cfg, plan.stages, only=shards)
    for stage in plan.stages:
        left = store.incomplete(stage)
        left = [s for s in left if s in shards] if shards else left
        before = plan.unfinished.get(stage, [])
        result["backfilled"][stage] = [s for s in before if s != "*" and s not in left]
        if left:
            result["still_unfinished"][stage] = left
    logger().info("backfill %s: backfilled %s; still unfinished %s", output,
                  {k: len(v) for k, v in result["backfilled"].items() if v}, result["still_unfinished"] or "none")
    return result


@flow(name="ultrafeedback-backfill", log_prints=False, validate_parameters=True)
def backfill(output: str, stages: list[Stage] | None = None, shards: list[str] | None = None) -> dict:
    """Rerun only the unfinished (failed, pending, stale) shards of a run, then re-assemble."""
    result = backfill_run(output, list(stages) if stages else None, list(shards) if shards else None)
    left = [f"{stage}:{shard}" for stage, ids in result["still_unfinished"].items() for shard in ids]
    if left:
        return Failed(message=f"backfill of {output}: {len(left)} shard(s) still unfinished "
                              f"({', '.join(left[:10])}{' ...' if len(left) > 10 else ''})", data=result)
    return result
