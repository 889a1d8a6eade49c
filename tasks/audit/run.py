"""One audit part at a time: the run probes, or one human set; then the figures.

Inputs: the run's tables (for the run part), the RatingConfig and AuditConfig, the seed,
unentered Backends and Journals (the caller opens judges; nothing here knows Prefect).
Outputs: AUDIT_RATINGS tables, the AUDIT_RESULTS table, and the audit's cost lines.

The run part holds the rate stage's own ratings of the sample (probe "rate", paid by the
rate stage), the position re-asks and the second judge's ratings; a human part holds the
judge's ratings of one human set's sample. Each part is one shard, so a failed second
judge does not cost the position answers (they are journaled either way).
"""
from __future__ import annotations

import pyarrow as pa

from storage.schemas import SCHEMAS, to_table
from tasks.audit import humans
from tasks.audit.calls import ask
from tasks.audit.config import AuditConfig, HumanSet
from tasks.audit.probes import RunSample, sample_prompts
from tasks.audit.stats import Audit
from tasks.backends.base import Backend
from tasks.backends.journal import Journal
from tasks.rating.config import JudgeEndpoint, RatingConfig
from tasks.rating.cost import summarize


def _table(rows: list[dict]) -> pa.Table:
    return to_table(rows, "audit_ratings") if rows else SCHEMAS["audit_ratings"].empty_table()


def run_part(instructions: pa.Table, completions: pa.Table, ratings: pa.Table, rating: RatingConfig,
             audit: AuditConfig, seed: int, judge: Backend, journal: Journal,
             second: tuple[JudgeEndpoint, Backend, Journal] | None = None) -> pa.Table:
    aspects = audit.audited(list(rating.aspects))
    pids = sample_prompts(ratings, aspects, audit.sample, seed)
    s = RunSample(instructions, completions, ratings, aspects, pids)
    rows = s.rate_rows()
    if audit.position:
        rows += ask(s.position_calls(audit.rotations), rating.endpoint, rating, judge, journal)
    if second is not None:
        endpoint, backend, second_journal = second
        rows += ask(s.second_judge_calls(), endpoint, rating, backend, second_journal)
    return _table(rows)


def human_part(hs: HumanSet, rating: RatingConfig, seed: int, judge: Backend, journal: Journal) -> pa.Table:
    items = humans.sample(humans.load(hs), hs.sample, seed)
    return _table(ask(humans.calls_for(hs, items, seed), rating.endpoint, rating, judge, journal))


def self_model(pool: list, endpoint: JudgeEndpoint, audit: AuditConfig) -> str | None:
    """The pool entry that is the judge's own model (named, else matched by model name)."""
    names = {m.name for m in pool}
    if audit.self_model:
        return audit.self_model if audit.self_model in names else None
    judge = {endpoint.model, endpoint.request_model}
    return next((m.name for m in pool if m.name in judge or (m.model and m.model in judge)
                 or (m.served_name and m.served_name in judge)), None)


def figures(rows: pa.Table, audit: AuditConfig, self_name: str | None, seed: int) -> pa.Table:
    out = Audit(rows.to_pandas(), self_name, audit.bootstrap, audit.confidence, seed).all()
    return to_table(out, "audit_results") if out else SCHEMAS["audit_results"].empty_table()


def cost_lines(rows: pa.Table) -> list[dict]:
    """Tokens and money of the requests the audit itself sent (stage "audit")."""
    cols = ["judge_model", "prompt_tokens", "completion_tokens", "cost_usd", "request_id", "origin"]
    asked = [r for r in rows.select(cols).to_pylist() if r["origin"] == "audit"]
    return summarize(asked, "audit", model_key="judge_model")
