"""The audit's judge calls: render them with the rate stage's prompts, ask, parse into rows.

Inputs: `AuditCall`s (one aspect call over texts in a stated order), the judge endpoint and
the rating settings, an unentered Backend and a Journal. Outputs: AUDIT_RATINGS row dicts,
one per text of each call, in the call's presentation order.

Requests go through the same Backend protocol and request journal as the rate stage, so
an audit rerun pays only for answers it never got. Prompts and parsing are the rate
stage's own (tasks.rating.prompts / tasks.rating.parse): the only thing an audit call
changes is what it is meant to probe (the order, the judge, the texts). An answer that does
not parse is not re-asked here: its rows keep a null rating with parse_status `unparsed`
(a failed request: `failed`), and the statistics count them as not compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.backends.base import Backend, make_request, message_text
from tasks.backends.journal import Journal, JournaledBackend
from tasks.rating import prompts
from tasks.rating.config import JudgeEndpoint, RatingConfig
from tasks.rating.cost import request_cost, usage_tokens
from tasks.rating.parse import parse


@dataclass(frozen=True)
class Text:
    completion_index: int
    model: str
    response: str
    human_label: float | None = None


@dataclass
class AuditCall:
    """One aspect call: `texts` in presentation order (Text 1 first)."""

    probe: str
    set: str
    item_id: str
    aspect: str
    variant: int
    instruction: dict[str, Any]  # an INSTRUCTIONS-like row: instruction (+ reference fields)
    texts: list[Text]
    human_votes: list[int] | None = None
    baseline_label: str | None = None
    body: dict = field(default_factory=dict)
    request_id: str = ""


def render_call(call: AuditCall, endpoint: JudgeEndpoint, cfg: RatingConfig) -> AuditCall:
    """Fill the request body and id exactly as the rate stage would for this order."""
    knowledge = prompts.world_knowledge(call.instruction) if call.aspect == "truthfulness" else None
    user = prompts.aspect_user_message(call.aspect, call.instruction["instruction"], [t.response for t in call.texts],
                                       endpoint.answer_mode, knowledge)
    call.body = prompts.request_body(endpoint.request_model, user, call.aspect, len(call.texts),
                                     endpoint.answer_mode, temperature=cfg.temperature, top_p=cfg.top_p,
                                     max_tokens=cfg.max_tokens)
    call.request_id = prompts.request_id(call.body)
    return call


def ask(calls: list[AuditCall], endpoint: JudgeEndpoint, cfg: RatingConfig, backend: Backend,
        journal: Journal) -> list[dict]:
    """Send every call once (journal first) and return its rows."""
    for c in calls:
        render_call(c, endpoint, cfg)
    results: dict[str, dict] = {}
    if calls:
        with JournaledBackend(backend, journal) as jb:
            unique = {c.request_id: c.body for c in calls}
            for res in jb.run([make_request(cid, body) for cid, body in unique.items()]):
                results[res["custom_id"]] = res
    price = cfg.price(endpoint.model)
    return [row for c in calls for row in _rows(c, results.get(c.request_id), endpoint, price)]


def _rows(call: AuditCall, result: dict | None, endpoint: JudgeEndpoint, price) -> list[dict]:
    answer = message_text(result) if result else None
    parsed = parse(answer, call.aspect, len(call.texts), endpoint.answer_mode) if answer is not None else None
    p, c = usage_tokens(result) if result and answer is not None else (None, None)
    out = []
    for pos, t in enumerate(call.texts):
        j = parsed.items[pos] if parsed is not None and pos < len(parsed.items) else None
        out.append({
            "probe": call.probe, "set": call.set, "item_id": call.item_id, "aspect": call.aspect,
            "variant": call.variant, "completion_index": t.completion_index, "model": t.model,
            "position": pos + 1, "n_texts": len(call.texts), "response_chars": len(t.response),
            "rating": j.rating if j is not None and j.status == "ok" else None,
            "rating_na": bool(j is not None and j.na),
            "parse_status": "failed" if parsed is None else (j.status if j is not None else "unparsed"),
            "judge_model": endpoint.model, "origin": "audit", "human_label": t.human_label,
            "human_votes": call.human_votes, "baseline_label": call.baseline_label,
            "prompt_tokens": p, "completion_tokens": c, "cost_usd": request_cost(p, c, price),
            "request_id": call.request_id,
        })
    return out
