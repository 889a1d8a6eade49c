"""The rate stage's pure logic: one instructions shard + its completions -> RATINGS rows.

Inputs: an INSTRUCTIONS table, a COMPLETIONS table (same shard), the RatingConfig, the run
seed, an unentered Backend and a Journal. Outputs: a RATINGS table (one row per completion
and aspect, plus aspect "critique") and RateStats for the progress output.

Per instruction and aspect, one judge call holds all its completions, shuffled by a
permutation seeded from (seed, prompt_id, aspect); the row keeps that permutation as the
completion indexes in presentation order (Text 1 first). Per completion, one critique call.
Requests go through the journal (answered ones are never sent again). An answer that does
not parse is re-asked up to `reasks` times; then its rows keep the raw text with a null
rating and the reason. A request that failed for good (a 4xx) becomes rows with status
`failed`; if any failed transiently, TransientError is raised after all answers are
journaled, so the orchestrator's retry pays only for what is missing.
Completions without a response (generation failed) are not rated and get no rows.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from storage.keys import stable_hash
from storage.schemas import to_table
from tasks.backends.base import Backend, make_request, message_text
from tasks.backends.faults import is_transient
from tasks.backends.journal import Journal, JournaledBackend
from tasks.errors import InputError, TransientError
from tasks.rating import prompts
from tasks.rating.config import RatingConfig
from tasks.rating.cost import request_cost, usage_tokens
from tasks.rating.parse import Judgement, ParsedAnswer, parse
from tasks.rating.protocol import CRITIQUE


@dataclass
class Call:
    """One judge question (aspect call or critique) and its attempts."""

    prompt_id: str
    aspect: str
    members: list[dict]  # completion rows in presentation order
    permutation: list[int] | None
    user: str
    request_id: str = ""
    attempts: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    answer: str | None = None
    parsed: ParsedAnswer | None = None
    error: str | None = None
    transient: bool = False
    history: list[tuple[int, str | None, ParsedAnswer, str]] = field(default_factory=list)  # attempt, answer, parsed, id


@dataclass
class RateStats:
    calls: int = 0
    requests: int = 0
    from_journal: int = 0
    sent: int = 0
    reasks: int = 0
    unparsed_rows: int = 0
    failed_rows: int = 0
    skipped_completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    torn_journal_lines: int = 0


def permutation(seed: int, prompt_id: str, aspect: str, indexes: list[int], shuffle: bool = True) -> list[int]:
    """Completion indexes in presentation order, seeded by (run seed, prompt_id, aspect)."""
    if not shuffle:
        return list(indexes)
    rng = random.Random(int(stable_hash(seed, prompt_id, aspect), 16))
    return rng.sample(list(indexes), len(indexes))


def build_calls(instructions: pa.Table, completions: pa.Table, cfg: RatingConfig, seed: int) -> tuple[list[Call], int]:
    """All first-attempt calls of a shard, and the number of completions left unrated."""
    by_id = {r["prompt_id"]: r for r in instructions.to_pylist()}
    groups: dict[str, list[dict]] = {}
    skipped = 0
    for row in completions.to_pylist():
        if row["prompt_id"] not in by_id:
            raise InputError(f"completions: prompt_id {row['prompt_id'][:12]}... is not in the instructions shard")
        if row.get("response") is None:
            skipped += 1
            continue
        groups.setdefault(row["prompt_id"], []).append(row)
    mode = cfg.endpoint.answer_mode
    calls: list[Call] = []
    for pid in sorted(groups):
        inst, rows = by_id[pid], sorted(groups[pid], key=lambda r: r["completion_index"])
        by_index = {r["completion_index"]: r for r in rows}
        for aspect in cfg.aspects:
            perm = permutation(seed, pid, aspect, list(by_index), cfg.shuffle)
            members = [by_index[i] for i in perm]
            knowledge = prompts.world_knowledge(inst) if aspect == "truthfulness" else None
            user = prompts.aspect_user_message(aspect, inst["instruction"], [m["response"] for m in members],
                                               mode, knowledge)
            calls.append(Call(pid, aspect, members, perm, user))
        if cfg.critique:
            for r in rows:
                user = prompts.critique_user_message(inst["instruction"], r["response"], r["system_prompt"], mode)
                calls.append(Call(pid, CRITIQUE, [r], None, user))
    return calls, skipped


def _body(call: Call, cfg: RatingConfig, note: str | None = None) -> tuple[dict[str, Any], str]:
    """The request body and its request id."""
    user = call.user if note is None else f"{call.user}\n\n{note}"
    ep = cfg.endpoint
    return prompts.body_and_id(
        ep.request_model, user, call.aspect, len(call.members), ep.answer_mode, temperature=cfg.temperature,
        top_p=cfg.top_p, max_tokens=cfg.critique_max_tokens if call.aspect == CRITIQUE else cfg.max_tokens)


def _transient(result: dict) -> bool:
    """The backend's verdict (tasks.backends.faults): a 400 is the row's answer, a 5xx is not."""
    return is_transient(result.get("error") or {"code": "missing"})


def _error_text(result: dict | None) -> str:
    if result is None:
        return "the backend returned no result"
    err = result.get("error") or {}
    resp = result.get("response") or {}
    return f"{err.get('code') or resp.get('status_code')}: {str(err.get('message') or '')[:300]}"


def _absorb(call: Call, result: dict | None, mode: str) -> None:
    """Record one attempt's answer (tokens add up over attempts: each attempt was paid)."""
    call.attempts += 1
    answer = message_text(result) if result else None
    if answer is None:
        call.error, call.transient = _error_text(result), result is None or _transient(result)
        return
    p, c = usage_tokens(result)
    if p is not None:
        call.prompt_tokens = (call.prompt_tokens or 0) + p
    if c is not None:
        call.completion_tokens = (call.completion_tokens or 0) + c
    choice = (result["response"]["body"].get("choices") or [{}])[0]
    call.error, call.answer = None, answer
    call.parsed = parse(answer, call.aspect, len(call.members), mode)
    if not call.parsed.ok and choice.get("finish_reason") == "length":
        call.parsed = ParsedAnswer([j if j.parsed else Judgement(types=j.types, reason=f"{j.reason} (answer cut at "
                                    "max_tokens)") for j in call.parsed.items])
    call.history.append((call.attempts, answer, call.parsed, call.request_id))


def rate_shard(instructions: pa.Table, completions: pa.Table, cfg: RatingConfig, seed: int,
               backend: Backend, journal: Journal) -> tuple[pa.Table, RateStats]:
    """Rate one shard; see the module docstring."""
    calls, skipped = build_calls(instructions, completions, cfg, seed)
    stats = RateStats(calls=len(calls), skipped_completions=skipped)
    pending = calls
    with JournaledBackend(backend, journal) as jb:
        for attempt in range(cfg.reasks + 1):
            bodies, labels = {}, {}
            for call in pending:
                note = None if attempt == 0 else prompts.reask_note(call.parsed.reason or "unreadable", attempt + 1)
                body, call.request_id = _body(call, cfg, note)
                bodies[call.request_id] = body
                labels[call.request_id] = call.aspect
            stats.requests += len(pending)
            stats.reasks += len(pending) if attempt else 0
            reqs = [make_request(cid, b, labels[cid]) for cid, b in bodies.items()]
            results = {r["custom_id"]: r for r in jb.run(reqs)}
            for call in pending:
                _absorb(call, results.get(call.request_id), cfg.endpoint.answer_mode)
            pending = [c for c in pending if c.error is None and not c.parsed.ok]
            if not pending:
                break
        stats.from_journal, stats.sent, stats.torn_journal_lines = jb.from_journal, jb.sent, journal.torn_lines
    transient = [c for c in calls if c.error and c.transient]
    if transient:
        raise TransientError(f"{len(transient)} of {len(calls)} judge requests failed ({transient[0].error}); "
                             "answers so far are journaled, a retry sends only the rest")
    order = {a: i for i, a in enumerate([*cfg.aspects, CRITIQUE])}
    rows = sorted((row for call in calls for row in _rows(call, cfg)),
                  key=lambda r: (r["prompt_id"], r["completion_index"], order[r["aspect"]]))
    _tally(stats, calls, rows)
    return to_table(rows, "ratings"), stats


def _final(call: Call) -> tuple[str | None, ParsedAnswer | None, str]:
    """The answer that parsed best (the latest among equals) and its request id."""
    if not call.history:
        return None, None, call.request_id
    best = max(call.history, key=lambda h: (sum(j.parsed for j in h[2].items), h[0]))
    return best[1], best[2], best[3]


def _rows(call: Call, cfg: RatingConfig) -> list[dict]:
    answer, parsed, request_id = _final(call)
    price = cfg.price(cfg.endpoint.model, cfg.endpoint.mode)  # batch mode: the provider's batch price
    common = {
        "prompt_id": call.prompt_id, "aspect": call.aspect, "raw_text": answer,
        "permutation": call.permutation, "judge_model": cfg.endpoint.model,
        "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
        "cost_usd": request_cost(call.prompt_tokens, call.completion_tokens, price),
        "request_id": request_id,
    }
    rows = []
    for k, member in enumerate(call.members):
        j = parsed.items[k] if parsed is not None else Judgement()
        if parsed is None:
            status, reason = "failed", f"request failed: {call.error}"
        else:
            status, reason = j.status, j.reason
            if not j.parsed and call.attempts > 1:
                reason = f"{reason} (after {call.attempts - 1} re-ask{'s' if call.attempts > 2 else ''})"
        rows.append({
            **common, "completion_index": member["completion_index"], "model": member["model"],
            "rating": j.rating, "rating_na": j.na, "types": j.types, "rationale": j.rationale,
            "rationale_for_rating": j.rationale_for_rating, "parse_status": status, "parse_reason": reason,
        })
    return rows


def _tally(stats: RateStats, calls: list[Call], rows: list[dict]) -> None:
    stats.unparsed_rows = sum(r["parse_status"] == "unparsed" for r in rows)
    stats.failed_rows = sum(r["parse_status"] == "failed" for r in rows)
    distinct = {c.request_id: c for c in calls}.values()  # equal critiques share one request
    stats.prompt_tokens = sum(c.prompt_tokens or 0 for c in distinct)
    stats.completion_tokens = sum(c.completion_tokens or 0 for c in distinct)
    costs = {r["request_id"]: r["cost_usd"] for r in rows if r["cost_usd"] is not None}
    stats.cost_usd = sum(costs.values()) if costs else None
