"""Render judge requests: aspect calls, critique calls and corrective re-asks.

Inputs: an instruction row (INSTRUCTIONS columns), completion texts in presentation order,
the answer mode and sampling settings. Outputs: chat messages and OpenAI request bodies.
Pure functions; tests compare their output with golden files.

Every user message follows tasks.rating.protocol: first line `Aspect: <name>`, completions
fenced `<text id="N">`, the critique's answer fenced `<response>`. A re-ask is a fresh
single-turn request (same message plus a note saying why the last answer was unreadable),
so the judge sees the texts again, the contract still holds, and the unreadable answer is
not paid for a second time as input.
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any, Mapping, Sequence

from tasks.rating import rubrics
from tasks.rating.protocol import (
    CRITIQUE,
    NA_ASPECTS,
    TYPED_ASPECTS,
    aspect_header,
    fence_response,
    fence_text,
    response_format,
)

NO_KNOWLEDGE = "No additional world knowledge."
FALSE_PREMISE = "The question is based on a false premise."


_FENCE_TAG = re.compile(r"<\s*(/?)\s*(text|response|instruction)\b", re.I)


def _clean(text: str) -> str:
    """Keep an instruction or reference from opening or closing our fences."""
    if "<" not in text:  # nothing to neutralise (most texts): skip the regex pass
        return text
    return _FENCE_TAG.sub(r"< \1\2", text)


def _answers(values: Sequence[str] | None) -> list[str]:
    return [v for v in (values or []) if v and v.strip() and v.strip() != "None"]


def world_knowledge(row: Mapping[str, Any]) -> str:
    """The reference given to the truthfulness aspect only (UltraFeedback's rule)."""
    correct, incorrect = _answers(row.get("correct_answers")), _answers(row.get("incorrect_answers"))
    if correct or incorrect:
        lines = ["Correct answers:"] + ([f"- {a}" for a in correct] or ["- (none given)"])
        lines += ["Incorrect answers:"] + ([f"- {a}" for a in incorrect] or ["- (none given)"])
        return "\n".join(lines)
    if row.get("false_premise"):
        return FALSE_PREMISE
    ref = (row.get("reference_answer") or "").strip()
    return f"Reference answer:\n{ref}" if ref else NO_KNOWLEDGE


def _scale(aspect: str) -> str:
    return "1 to 5, or N/A" if aspect in NA_ASPECTS else "1 to 5"


def format_instructions(aspect: str, n: int, mode: str) -> str:
    if aspect == CRITIQUE:
        return rubrics.TEXT_FORMAT_CRITIQUE if mode == "text" else rubrics.STRUCTURED_CRITIQUE
    typed = aspect in TYPED_ASPECTS
    if mode == "structured":
        fields = ('"types" (the type numbers as strings, an empty list for None), "type_rationale", '
                  '"rating" and "rationale"') if typed else '"rating" and "rationale"'
        scale = '"1" to "5" or "N/A"' if aspect in NA_ASPECTS else '"1" to "5"'
        return rubrics.STRUCTURED_ASPECT.format(n=n, fields=fields, scale=scale)
    more = "" if n == 1 else "\n(then the same block for Text 2)" if n == 2 else \
        f"\n(then the same block for each of Text 2 to Text {n})"
    template = rubrics.TEXT_FORMAT_TYPED if typed else rubrics.TEXT_FORMAT_PLAIN
    return template.format(first=1, scale=_scale(aspect), more=more).rstrip("\n")


def aspect_user_message(aspect: str, instruction: str, texts: Sequence[str], mode: str,
                        knowledge: str | None = None, note: str | None = None) -> str:
    parts = [aspect_header(aspect), rubrics.RUBRICS[aspect]]
    if knowledge is not None:
        parts.append(f"World knowledge:\n{_clean(knowledge)}")
    parts.append(f"Instruction:\n<instruction>\n{_clean(instruction)}\n</instruction>")
    parts.append("Texts:\n" + "\n\n".join(fence_text(i + 1, t) for i, t in enumerate(texts)))
    parts.append(format_instructions(aspect, len(texts), mode))
    if note:
        parts.append(note)
    return "\n\n".join(parts)


def critique_user_message(instruction: str, response: str, system_prompt: str, mode: str,
                          note: str | None = None) -> str:
    # As in the original, the completion's guidance is appended to the instruction as a note.
    guidance = (system_prompt or "").strip()
    asked = f"{instruction}\n\nNote: {guidance}" if guidance else instruction
    parts = [aspect_header(CRITIQUE), rubrics.CRITIQUE,
             f"Instruction:\n<instruction>\n{_clean(asked)}\n</instruction>",
             f"Answer:\n{fence_response(response)}",
             format_instructions(CRITIQUE, 1, mode)]
    if note:
        parts.append(note)
    return "\n\n".join(parts)


def reask_note(reason: str, attempt: int = 2) -> str:
    """The note appended to a re-ask; the attempt number keeps each re-ask a new request."""
    return rubrics.REASK.format(reason=reason.rstrip("."), attempt=attempt)


def messages(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": rubrics.SYSTEM}, {"role": "user", "content": user}]


def request_body(model: str, user: str, aspect: str, n: int, mode: str, *, temperature: float,
                 top_p: float, max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat-completions body; structured mode adds the protocol's JSON schema."""
    body: dict[str, Any] = {"model": model, "messages": messages(user), "temperature": temperature,
                            "top_p": top_p, "max_tokens": max_tokens}
    if mode == "structured":
        body["response_format"] = response_format(aspect, n)
    return body


def request_id(body: Mapping[str, Any]) -> str:
    """Deterministic id of a judge request: hash of model, messages and every parameter.

    Equal to `"rq-" + stable_hash(dict(body), length=32)`, computed without its generic
    walk over the value: a body is plain JSON (string keys)."""
    blob = json.dumps([dict(body)], sort_keys=True, ensure_ascii=False)
    return "rq-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


_USER_MARK = "\x00user\x00"  # no rendered system prompt, model name or schema holds a NUL


@lru_cache(maxsize=256, typed=True)  # typed: 0 and 0.0 render differently
def _id_frame(model: str, aspect: str, n: int, mode: str, temperature: float, top_p: float, max_tokens: int):
    """The hash state after the body's JSON up to the user message, and the JSON after it."""
    body = request_body(model, _USER_MARK, aspect, n, mode, temperature=temperature, top_p=top_p,
                        max_tokens=max_tokens)
    head, tail = json.dumps([body], sort_keys=True, ensure_ascii=False).split(json.dumps(_USER_MARK), 1)
    return hashlib.sha256(head.encode("utf-8")), tail.encode("utf-8")


def body_and_id(model: str, user: str, aspect: str, n: int, mode: str, *, temperature: float, top_p: float,
                max_tokens: int) -> tuple[dict[str, Any], str]:
    """`request_body(...)` and its `request_id`, the id hashed from a cached frame around the user
    message: only the message is encoded per request (half a million times at full scale),
    not the system prompt and schema. Same value as `request_id(body)` (tests check it)."""
    body = request_body(model, user, aspect, n, mode, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    head, tail = _id_frame(model, aspect, n, mode, temperature, top_p, max_tokens)
    h = head.copy()
    h.update(json.dumps(user, ensure_ascii=False).encode("utf-8"))
    h.update(tail)
    return body, "rq-" + h.hexdigest()[:32]
