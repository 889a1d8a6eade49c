"""Rating stage as Prefect tasks: one task per completions shard.

Inputs: the run config, the finished completion shards (`upstream["generate"]`) and the
instruction shards of the same ids (from the store). Outputs: `rate/<shard_id>.parquet`
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

import os
import tempfile
from dataclasses import asdict

from prefect import task

import tasks.rating.cost
import tasks.rating.parse
import tasks.rating.prompts
import tasks.rating.protocol
import tasks.rating.rubrics
import tasks.rating.stage
from flows.common import StageResult, collect, key_from_param, logger, result_storage, transient_only
from storage.keys import code_version, shard_key
from storage.shards import ShardRef, ShardStore
from tasks.errors import InputError
from tasks.rating.cost import format_summary, merge, summarize_table
from tasks.backends.journal import Journal, journal_path
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
    price = r.price(ep.model)
    return {
        "seed": cfg.seed,
        "judge": ep.model_dump(mode="json", include={"kind", "model", "deployment", "answer_mode", "engine_model"}),
        "rating": r.model_dump(mode="json", include={"aspects", "critique", "temperature", "top_p", "max_tokens",
                                                     "critique_max_tokens", "reasks", "shuffle"}),
        "price": price.model_dump() if price else None,
    }


def rate_key(instr: ShardRef, comp: ShardRef, cfg) -> str:
    return shard_key(STAGE, [instr.sha256, comp.sha256], key_config(cfg), _code())


def _log_dir(store: ShardStore) -> str:
    protocol = store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]
    if protocol in ("file", "local"):
        return os.path.join(store.base, "logs")
    return os.path.join(tempfile.gettempdir(), "ultrafeedback-logs")


@task(name="rate-shard", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient_only,
      cache_key_fn=key_from_param, persist_result=True)
def rate_one(cfg, instr: ShardRef, comp: ShardRef, key: str) -> dict:
    """Rate one completions shard (answers come from the journal first)."""
    store = ShardStore(cfg.output)
    existing = store.done_with_key(STAGE, comp.shard_id, key)
    if existing is not None:
        return {"ref": existing, "action": "kept", "stats": None}
    journal = Journal(journal_path(cfg.output, comp.shard_id, cfg.rating.journal_dir, STAGE))
    judge = open_judge(cfg.rating.endpoint, _log_dir(store))
    table, stats = rate_shard(store.read_shard(instr), store.read_shard(comp), cfg.rating, cfg.seed, judge, journal)
    ref = store.write_shard(STAGE, comp.shard_id, table, "ratings", key)
    cost = "unpriced" if stats.cost_usd is None else f"{stats.cost_usd:.4f} USD"
    logger().info("rate %s: %d calls, %d sent, %d from journal, %d re-asks, %d unparsed and %d failed rows, "
                  "%d/%d tokens in/out, %s", comp.shard_id, stats.calls, stats.sent, stats.from_journal,
                  stats.reasks, stats.unparsed_rows, stats.failed_rows, stats.prompt_tokens,
                  stats.completion_tokens, cost)
    return {"ref": ref, "action": "written", "stats": asdict(stats)}


def _pairs(store: ShardStore, upstream: dict) -> list[tuple[ShardRef, ShardRef]]:
    comps = sorted(upstream["generate"].refs, key=lambda r: r.shard_id)
    instr = {r.shard_id: r for r in (upstream["sample"].refs if "sample" in upstream else store.refs("sample"))}
    missing = [c.shard_id for c in comps if c.shard_id not in instr]
    if missing:
        raise InputError(f"rate: completion shards {missing[:5]} have no finished instruction shard of the same id")
    return [(instr[c.shard_id], c) for c in comps]


def summarize_stage(store: ShardStore, refs: list[ShardRef]) -> dict:
    """Parse outcomes and cost of the stage's finished shards (this run's and earlier ones)."""
    lines, status = [], {}
    for ref in refs:
        table = store.read_shard(ref, columns=_COST_COLUMNS)
        lines.append(summarize_table(table, STAGE))
        for s in table.column("parse_status").to_pylist():
            status[s] = status.get(s, 0) + 1
    return {"parse_status": status, "cost": merge(*lines)}


def run_rate(cfg, store: ShardStore, upstream: dict) -> StageResult:
    pairs = _pairs(store, upstream)
    keys = [rate_key(i, c, cfg) for i, c in pairs]
    store.write_plan(STAGE, {c.shard_id: k for (_, c), k in zip(pairs, keys)})
    shard_task = rate_one.with_options(result_storage=result_storage(store))

    def submit(i, refresh=False):
        t = shard_task.with_options(refresh_cache=True) if refresh else shard_task
        return t.submit(cfg, pairs[i][0], pairs[i][1], keys[i])

    recomputed: dict[int, dict] = {}

    def rerun(i):
        recomputed[i] = submit(i, refresh=True).result()
        return recomputed[i]

    try:
        futures = [submit(i) for i in range(len(pairs))]
        refs, counts = collect(STAGE, store, futures, [c.shard_id for _, c in pairs], keys, rerun=rerun)
    finally:
        close_engines()
    # A cached task returns the stats of the run that computed it: not this run's work.
    outs = [recomputed[i] if i in recomputed else f.state.result() if f.state.is_completed()
            and f.state.name != "Cached" else None for i, f in enumerate(futures)]
    this_run = [o["stats"] for o in outs if o and o.get("stats")]
    summary = {"shards": counts, "ratings": sum(r.rows for r in refs),
               "judge": {"endpoint": cfg.rating.endpoint.name, "model": cfg.rating.endpoint.model,
                         "answer_mode": cfg.rating.endpoint.answer_mode},
               "requests_sent_this_run": sum(s["sent"] for s in this_run),
               "answered_from_journal_this_run": sum(s["from_journal"] for s in this_run),
               "reasks_this_run": sum(s["reasks"] for s in this_run),
               **summarize_stage(store, refs)}
    logger().info("rate: %d shards (%d written, %d unchanged, %d cached, %d failed), %d rating rows, %s\n%s",
                  len(pairs), counts["written"], counts["kept"], counts["cached"], counts["failed"],
                  summary["ratings"], summary["parse_status"], format_summary(summary["cost"]))
    return StageResult(STAGE, refs, summary)
