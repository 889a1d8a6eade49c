"""Rating stage as Prefect tasks: one task per completions shard.

Inputs: the run config, the completion shards (finished, or the generate stage of the same
run still in flight: then each shard is rated as soon as it is merged), the instruction
shards of the same ids and optionally `only` (the shard ids a backfill is limited to). Outputs: `rate/<shard_id>.parquet`
(RATINGS) with done markers, the stage plan, a request journal per shard
(tasks.backends.journal), and a summary: shard counts, parse outcomes, requests sent and
answered from the journal this run, and tokens and money per judge model.

A shard's key covers its inputs' content hashes, the judge settings that change answers
(model, mode, sampling, aspects, re-asks, prices) and the rating code, but not rate limits
or timeouts. Shard tasks retry on transient errors only; a retry, a rerun or a backfill
sends only the requests the journal has no answer for. HTTP judges are shared by all shard
tasks of the process through one limiter per endpoint; a launched local vLLM judge starts
once and stops when the stage ends.
"""
from __future__ import annotations

from dataclasses import asdict

from prefect import task

import tasks.rating.cost
import tasks.rating.parse
import tasks.rating.prompts
import tasks.rating.protocol
import tasks.rating.rubrics
import tasks.rating.stage
from flows.common import StageResult, logger
from flows.shard_tasks import (
    ShardJob,
    StageInFlight,
    Submitted,
    chosen_jobs,
    collect_shard_tasks,
    key_from_param,
    start_shard_tasks,
    submit_shard_tasks,
    transient_only,
)
from storage.keys import code_version, shard_key
from storage.shards import ShardRef, ShardStore
from tasks.backends.batch_state import state_path
from tasks.backends.journal import Journal, journal_path
from tasks.errors import InputError
from tasks.rating.cost import format_summary, merge, summarize_table, with_realtime_equivalent
from tasks.rating.judges import close_engines, open_judge
from tasks.rating.stage import rate_shard

STAGE = "rate"
_COST_COLUMNS = ["judge_model", "prompt_tokens", "completion_tokens", "cost_usd", "request_id", "parse_status"]


def _code() -> str:
    t = tasks.rating
    return code_version(t.protocol, t.rubrics, t.prompts, t.parse, t.stage, t.cost)


def key_config(cfg) -> dict:
    """The settings that change a shard's ratings (limits, timeouts, URLs do not)."""
    r, ep = cfg.rating, cfg.rating.endpoint
    price = r.price(ep.model, ep.mode)
    return {
        "seed": cfg.seed,
        # `script`: a scripted judge's planted fault changes its ratings (tests and demos of the audit)
        "judge": ep.model_dump(mode="json", include={"kind", "model", "deployment", "answer_mode", "engine_model",
                                                      "script"}),
        "rating": r.model_dump(mode="json", include={"aspects", "critique", "temperature", "top_p", "max_tokens",
                                                     "critique_max_tokens", "reasks", "shuffle"}),
        "price": price.model_dump() if price else None,
    }


def rate_key(instr: ShardRef, comp: ShardRef, cfg) -> str:
    return shard_key(STAGE, [instr.sha256, comp.sha256], key_config(cfg), _code())


@task(name="rate-shard", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient_only,
      cache_key_fn=key_from_param, persist_result=True)
def rate_one(cfg, instr: ShardRef, comp: ShardRef, key: str) -> dict:
    """Rate one completions shard (answers come from the journal first)."""
    store = ShardStore(cfg.output)
    existing = store.done_with_key(STAGE, comp.shard_id, key)
    if existing is not None:
        return {"ref": existing, "action": "kept", "stats": None}
    journal = Journal(journal_path(cfg.output, comp.shard_id, cfg.rating.journal_dir, STAGE))
    judge = open_judge(cfg.rating.endpoint, store.log_dir(), state_path(journal.path))
    table, stats = rate_shard(store.read_shard(instr), store.read_shard(comp), cfg.rating, cfg.seed, judge, journal)
    ref = store.write_shard(STAGE, comp.shard_id, table, "ratings", key)
    cost = "unpriced" if stats.cost_usd is None else f"{stats.cost_usd:.4f} USD"
    logger().info("rate %s: %d calls, %d sent, %d from journal, %d re-asks, %d unparsed and %d failed rows, "
                  "%d/%d tokens in/out, %s", comp.shard_id, stats.calls, stats.sent, stats.from_journal,
                  stats.reasks, stats.unparsed_rows, stats.failed_rows, stats.prompt_tokens,
                  stats.completion_tokens, cost)
    return {"ref": ref, "action": "written", "stats": asdict(stats)}


def _pairs(instructions: StageResult, completions: StageResult) -> list[tuple[ShardRef, ShardRef]]:
    comps = sorted(completions.refs, key=lambda r: r.shard_id)
    instr = {r.shard_id: r for r in instructions.refs}
    missing = [c.shard_id for c in comps if c.shard_id not in instr]
    if missing:
        raise InputError(f"rate: completion shards {missing[:5]} have no finished instruction shard of the same id")
    return [(instr[c.shard_id], c) for c in comps]


def batches_in_flight(cfg, shard_ids: list[str]) -> list[dict]:
    """Open provider batches of these shards (id, status, counts, age), from their batch records."""
    from tasks.backends.batch_state import in_flight

    return in_flight(p for p in (state_path(journal_path(cfg.output, s, cfg.rating.journal_dir, STAGE))
                                 for s in shard_ids) if p.exists())


def _report_in_flight(cfg, rows: list[dict]) -> None:
    from flows.progress import _artifact, artifact_key

    _artifact("create_table_artifact", key=artifact_key(cfg.name, "batches-in-flight"), table=rows,
              description=f"{cfg.name}: provider batches still running; a later run collects them")
    logger().warning("rate: %d provider batch(es) still running (%s); their shards stay pending, rerun or "
                     "backfill later to collect", len(rows), ", ".join(f"{r['batch_id']} {r['status']}" for r in rows[:5]))


def summarize_stage(store: ShardStore, refs: list[ShardRef]) -> dict:
    """Parse outcomes and cost of the stage's finished shards (this run's and earlier ones)."""
    lines, status = [], {}
    for ref in refs:
        table = store.read_shard(ref, columns=_COST_COLUMNS)
        lines.append(summarize_table(table, STAGE))
        for s in table.column("parse_status").to_pylist():
            status[s] = status.get(s, 0) + 1
    return {"parse_status": status, "cost": merge(*lines)}


def _rate_job(cfg, instr: dict[str, ShardRef], comp: ShardRef) -> ShardJob:
    if comp.shard_id not in instr:
        raise InputError(f"rate: completion shard {comp.shard_id} has no finished instruction shard of the same id")
    i = instr[comp.shard_id]
    return ShardJob(comp.shard_id, rate_key(i, comp, cfg), {"cfg": cfg, "instr": i, "comp": comp})


def _submit_behind(cfg, store: ShardStore, instructions: StageResult, completions: StageInFlight,
                   only: list[str] | None) -> tuple[Submitted, StageResult, list[str]]:
    """Submit each rate shard the moment its completions shard is merged; (the rate tasks, the
    generate stage's result, the shards not rated because their completions shard failed).

    The plan is written first with a placeholder key per shard to come (its rating key needs
    the completions' hash), so a run that dies meanwhile shows them unfinished; then again
    with the real keys."""
    instr = {r.shard_id: r for r in instructions.refs}
    planned = {j.shard_id: f"after-generate:{j.key}" for j in completions.jobs}
    sub = start_shard_tasks(STAGE, store, rate_one, planned)
    sub.held = None if only is None else 0
    jobs: dict[str, ShardJob] = {}

    def rate_when_merged(merge: ShardJob, out: dict) -> None:
        job = jobs[merge.shard_id] = _rate_job(cfg, instr, out["ref"])
        if chosen_jobs(STAGE, store, [job], only):
            sub.submit(job)
        else:
            sub.held += 1

    generated = completions.collect(on_done=rate_when_merged)
    upstream_failed = [s for s in planned if s not in jobs]
    store.write_plan(STAGE, {**planned, **{s: j.key for s, j in jobs.items()}})
    if upstream_failed:
        sub.held = (sub.held or 0) + len(upstream_failed)
        logger().warning("rate: %d shard(s) not rated, their completions shard failed: %s",
                         len(upstream_failed), ", ".join(upstream_failed[:10]))
    return sub, generated, upstream_failed


def run_rate(cfg, store: ShardStore, instructions: StageResult, completions: StageResult | StageInFlight,
             only: list[str] | None = None) -> StageResult:
    """Rating shards for the completion shards (with `only`, just those ids).

    `completions` finished: one rate task per shard, all at once. In flight (the generate
    stage of this run): each rate task starts as soon as its shard is merged, while the
    other shards are still generating; a shard whose merge failed is held, not rated."""
    upstream_failed: list[str] = []
    try:
        if isinstance(completions, StageInFlight):
            sub, _, upstream_failed = _submit_behind(cfg, store, instructions, completions, only)
        else:
            jobs = [ShardJob(c.shard_id, rate_key(i, c, cfg), {"cfg": cfg, "instr": i, "comp": c})
                    for i, c in _pairs(instructions, completions)]
            sub = submit_shard_tasks(STAGE, store, jobs, rate_one, only)
        done = collect_shard_tasks(sub, detail=lambda o: f"{sum(r.rows for r in o.refs)} rating rows")
    finally:
        close_engines()
    shard_ids = [j.shard_id for j in sub.jobs]
    # A cached task returns the stats of the run that computed it: not this run's work.
    this_run = [done.outputs[s]["stats"] for s in done.fresh if done.outputs[s].get("stats")]
    flight = batches_in_flight(cfg, shard_ids)
    if flight:
        _report_in_flight(cfg, flight)
    summary = {"shards": done.counts, "ratings": sum(r.rows for r in done.refs),
               "judge": {"endpoint": cfg.rating.endpoint.name, "model": cfg.rating.endpoint.model,
                         "answer_mode": cfg.rating.endpoint.answer_mode, "mode": cfg.rating.endpoint.mode},
               "batches_in_flight": flight,
               **({"held_upstream_failed": upstream_failed} if upstream_failed else {}),
               "requests_sent_this_run": sum(s["sent"] for s in this_run),
               "answered_from_journal_this_run": sum(s["from_journal"] for s in this_run),
               "reasks_this_run": sum(s["reasks"] for s in this_run),
               **summarize_stage(store, done.refs)}
    if cfg.rating.endpoint.mode == "batch":
        summary["cost"] = with_realtime_equivalent(summary["cost"], cfg.rating.prices, "batch")
    logger().info("rate: %s\n%s", summary["parse_status"], format_summary(summary["cost"]))
    return StageResult(STAGE, done.refs, summary, done.failed)
