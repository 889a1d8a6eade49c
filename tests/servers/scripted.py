"""Scripted judge and generator answers of the OpenAI-protocol test server.

Inputs: a chat request's messages and optional `response_format`. Outputs: the assistant
text the server sends back. Pure and deterministic: every verdict is the project's scripted
judge's (tasks.rating.scripted: a function of the aspect and the fenced text alone), so a
test predicts the exact value from the completion it wrote, whatever order the prompt
shuffled the completions into, and the in-process judge and this server agree. What the
server adds is the size of its answers: rationales of `rationale_words` words and
completions of `completion_words`, as a benchmark needs.

Judge prompts are recognised by the wire contract in `tasks.rating.protocol` (first line
`Aspect: <name>`, completions fenced `<text id="N">`, the critique's `<response>`). Text
mode answers in the UltraFeedback layout, one `#### Output for Text N` block per text;
structured mode (a `response_format` in the request) answers JSON per that schema. Any other
prompt gets a scripted completion of `completion_words` words.
"""
from __future__ import annotations

import hashlib
import json
import re

from tasks.rating import scripted as judge
from tasks.rating.protocol import CRITIQUE, TYPED_ASPECTS, find_aspect, find_response, find_texts

_WORDS = ("the answer addresses the request and stays on topic while the reasoning is mostly sound "
          "but a few details could be stated more precisely and one claim lacks support").split()


def _h(*parts: str) -> int:
    blob = "\x1f".join(parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def scripted_rating(aspect: str, text: str) -> int | str:
    """The rating the scripted judge (tasks.rating.scripted) gives `text` for `aspect`: 1..5,
    or "N/A" where the rubric allows it (honesty only)."""
    rating = judge.scripted_rating(aspect, text)
    return rating if rating == "N/A" else int(rating)


def scripted_types(aspect: str, text: str) -> list[str]:
    """The Type list of a typed aspect (truthfulness, helpfulness); [] stands for "None"."""
    return judge.scripted_types(aspect, text) if aspect in TYPED_ASPECTS else []


def scripted_overall(text: str) -> int:
    """The critique's Overall Score (1..10) for a response body."""
    return judge.scripted_score(text)


def scripted_words(seed: str, n: int) -> str:
    """n deterministic filler words; sized like a judge's rationale or a model's answer."""
    h = _h("words", seed)
    return " ".join(_WORDS[(h + i * 7) % len(_WORDS)] for i in range(max(1, n)))


def _rationale(aspect: str, text: str, words: int) -> str:
    body = scripted_words(aspect + text, words)
    # Every third rationale spans two paragraphs: real judges write blank lines inside
    # rationales, which is what broke the original parser.
    if _h("para", aspect, text) % 3 == 0:
        half = max(1, words // 2)
        return scripted_words(aspect + text, half) + ".\n\n" + scripted_words(text + aspect, words - half) + "."
    return body + "."


def _type_line(types: list[str]) -> str:
    return "[" + ", ".join(types) + "]" if types else "None"


def aspect_text_answer(aspect: str, texts: list[str], words: int = 40) -> str:
    blocks = []
    for i, text in enumerate(texts, start=1):
        rating = scripted_rating(aspect, text)
        lines = [f"#### Output for Text {i}"]
        if aspect in TYPED_ASPECTS:
            lines += [f"Type: {_type_line(scripted_types(aspect, text))}",
                      f"Rationale: {_rationale('type-' + aspect, text, words // 2)}"]
        lines += [f"Rating: {rating}", f"Rationale: {_rationale(aspect, text, words)}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def aspect_json_answer(aspect: str, texts: list[str], words: int = 40) -> str:
    outputs = []
    for text in texts:
        item: dict = {}
        if aspect in TYPED_ASPECTS:
            item["types"] = scripted_types(aspect, text)
            item["type_rationale"] = _rationale("type-" + aspect, text, words // 2)
        item["rating"] = str(scripted_rating(aspect, text))
        item["rationale"] = _rationale(aspect, text, words)
        outputs.append(item)
    return json.dumps({"outputs": outputs}, ensure_ascii=False)


def critique_answer(response: str, structured: bool, words: int = 80) -> str:
    score = scripted_overall(response)
    feedback = _rationale("critique", response, words)
    if structured:
        return json.dumps({"feedback": feedback, "overall_score": str(score)}, ensure_ascii=False)
    return f"Feedback: {feedback}\n\nOverall Score: {score}"


def _last_user(messages: list[dict]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""
    return ""


def scripted_answer(messages: list[dict], response_format: dict | None, rationale_words: int = 40,
                    completion_words: int = 120) -> str:
    """The assistant text for a request; judge prompts get scripted ratings in the mode asked."""
    user = _last_user(messages)
    aspect = find_aspect(user)
    structured = bool(response_format) and response_format.get("type") in ("json_schema", "json_object")
    if aspect == CRITIQUE:
        return critique_answer(find_response(user) or "", structured, words=2 * rationale_words)
    if aspect is not None:
        texts = find_texts(user)
        if structured:
            return aspect_json_answer(aspect, texts, rationale_words)
        return aspect_text_answer(aspect, texts, rationale_words)
    return "Scripted completion. " + scripted_words(user, completion_words)


_MARKER = re.compile(r"\[\[fault:([a-z0-9]+)(?::([0-9.]+))?(?:\*(\d+))?\]\]")


def find_fault_markers(messages: list[dict]) -> list[tuple[str, float | None, int | None]]:
    """Per-request fault triggers written into any message: `[[fault:KIND[:ARG][*N]]]`
    (N: fire only on the first N receipts of this exact request)."""
    found = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            for kind, arg, n in _MARKER.findall(content):
                found.append((kind, float(arg) if arg else None, int(n) if n else None))
    return found
