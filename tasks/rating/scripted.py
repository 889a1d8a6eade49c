"""An in-process judge with scripted, exactly predictable answers, for fast flow tests.

Inputs: judge requests rendered by tasks.rating.prompts (read through the wire contract in
tasks.rating.protocol). Outputs: OpenAI-shaped chat-completion results, in text mode (the
UltraFeedback format) or, when the request carries `response_format`, in structured mode.

Each verdict is a pure function of the text being judged (`scripted_rating`,
`scripted_types`, `scripted_score`), so a test predicts every rating of a completion
whatever position the shuffle gave it. Text answers vary their surface form on purpose
(blank lines inside rationales, **emphasis**, `4/5`) so the real parser is exercised.
`usage` is deterministic: characters / 4. Hooks `answer_fn` and `error_fn` let a test
replace an answer (malformed, truncated) or fail a request.
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult, result_error, result_ok
from tasks.rating.protocol import (
    CRITIQUE,
    NA_ASPECTS,
    TYPED_ASPECTS,
    find_aspect,
    find_response,
    find_texts,
)
from tasks.rating.rubrics import REASK_LEAD


def _h(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:12], 16)


def scripted_rating(aspect: str, text: str) -> str:
    """The scripted 1-5 rating of a text ("N/A" for some texts where the rubric allows it)."""
    values = ["1", "2", "3", "4", "5"] + (["N/A"] if aspect in NA_ASPECTS else [])
    return values[_h("rating", aspect, text) % len(values)]


def scripted_types(aspect: str, text: str) -> list[str]:
    """The scripted type list (empty means None) of a text for a typed aspect."""
    bits = _h("types", aspect, text) % 8
    return [str(i + 1) for i in range(3) if bits >> i & 1]


def scripted_score(text: str) -> int:
    """The scripted critique score, 1-10."""
    return 1 + _h("score", text) % 10


def is_reask(body: dict) -> bool:
    return any(REASK_LEAD in (m.get("content") or "") for m in body.get("messages", []) if m.get("role") == "user")


def _text_block(k: int, aspect: str, text: str) -> str:
    rating, style = scripted_rating(aspect, text), _h("style", aspect, text) % 3
    shown = {0: rating, 1: f"**{rating}**", 2: f"{rating}/5" if rating != "N/A" else rating}[style]
    label = "**Rating**:" if style == 1 else "Rating:"
    why = f"Scripted verdict for text {k}.\n\nIt spans a blank line on purpose."
    if aspect in TYPED_ASPECTS:
        types = scripted_types(aspect, text)
        shown_types = f"[{', '.join(types)}]" if types else "None"
        return (f"#### Output for Text {k}\nType: {shown_types}\nRationale: Types of text {k}.\n"
                f"{label} {shown}\nRationale: {why}")
    return f"#### Output for Text {k}\n{label} {shown}\nRationale: {why}"


def _json_item(k: int, aspect: str, text: str) -> dict:
    item = {"rating": scripted_rating(aspect, text), "rationale": f"Scripted verdict for text {k}."}
    if aspect in TYPED_ASPECTS:
        return {"types": scripted_types(aspect, text), "type_rationale": f"Types of text {k}.", **item}
    return item


def scripted_answer(body: dict) -> str:
    """What the scripted judge says to a request (text or structured by the request)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    aspect = find_aspect(user)
    structured = "response_format" in body
    if aspect == CRITIQUE:
        resp = find_response(user) or ""
        score = scripted_score(resp)
        if structured:
            return json.dumps({"feedback": "Scripted feedback.", "overall_score": str(score)})
        return f"Feedback: Scripted feedback.\n\nIt has a second paragraph.\n\nOverall Score: {score}"
    texts = find_texts(user)
    if structured:
        return json.dumps({"outputs": [_json_item(k, aspect, t) for k, t in enumerate(texts, 1)]})
    return "\n\n".join(_text_block(k, aspect, t) for k, t in enumerate(texts, 1))


class ScriptedCrash(RuntimeError):
    """Raised by `fail_after`: the process dies mid-shard (as far as the stage can tell)."""


class ScriptedJudge:
    """Backend that answers judge prompts from scripts; counts what it was sent."""

    name = "scripted"

    def __init__(self, answer_fn: Callable[[dict, str], str | None] | None = None,
                 error_fn: Callable[[dict], tuple[str, str] | None] | None = None, fail_after: int | None = None):
        self.answer_fn, self.error_fn, self.fail_after = answer_fn, error_fn, fail_after
        self.sent: list[str] = []  # custom_ids in the order received
        self.usage_total = {"prompt_tokens": 0, "completion_tokens": 0}

    def __enter__(self) -> "ScriptedJudge":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        for req in requests:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise ScriptedCrash(f"scripted crash after {self.fail_after} requests")
            self.sent.append(req["custom_id"])
            yield self._answer(req)

    def _answer(self, req: BatchRequest) -> BatchResult:
        body = req["body"]
        failure = self.error_fn(body) if self.error_fn else None
        if failure:
            return result_error(req["custom_id"], *failure)
        answer = scripted_answer(body)
        if self.answer_fn is not None:
            replaced = self.answer_fn(body, answer)
            answer = answer if replaced is None else replaced
        prompt_tokens = sum(len(m.get("content") or "") for m in body["messages"]) // 4
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer) // 4,
                 "total_tokens": prompt_tokens + len(answer) // 4}
        for k in ("prompt_tokens", "completion_tokens"):
            self.usage_total[k] += usage[k]
        return result_ok(req["custom_id"], {
            "id": f"chatcmpl-{req['custom_id']}", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": usage,
        })
