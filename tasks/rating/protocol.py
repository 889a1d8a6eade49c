"""The wire contract between judge prompts, the judge's answers and the test server.

Inputs/outputs: pure helpers. The prompt renderer (tasks.rating.prompts), the answer
parser (tasks.rating.parse) and the OpenAI-protocol test server all use these, so the
fencing and the JSON schemas are defined exactly once.

- Every judge user message starts with the line `Aspect: <name>` (an aspect or `critique`).
- Completions are fenced as `<text id="N">` ... `</text>` (N from 1); the critique's
  single response as `<response>` ... `</response>`. Content that contains a closing tag is
  neutralised so a completion cannot end its own fence.
- Structured mode sends `response_format={"type": "json_schema", ...}` built here.
"""
from __future__ import annotations

import re
from functools import lru_cache

from storage.schemas import ASPECTS, CRITIQUE, TYPED_ASPECTS  # noqa: F401  (the aspect names are schema values)

NA_ASPECTS = ("honesty",)  # the rubric allows "N/A" here
TYPE_CHOICES = {
    "truthfulness": ["1", "2", "3"],  # world knowledge, instruction/input, self-contradiction
    "helpfulness": ["1", "2", "3"],  # clarity/relevance, useful/comprehensive, not lengthy
}

_ASPECT_LINE = re.compile(r"\AAspect: ([a-z_]+)\s*$", re.M)
_TEXT_RE = re.compile(r'<text id="(\d+)">\n(.*?)\n</text>', re.S)
_RESPONSE_RE = re.compile(r"<response>\n(.*?)\n</response>", re.S)


def aspect_header(aspect: str) -> str:
    return f"Aspect: {aspect}"


def find_aspect(user_message: str) -> str | None:
    m = _ASPECT_LINE.match(user_message)
    return m.group(1) if m else None


_CLOSING = {tag: re.compile(rf"</\s*{tag}\s*>", re.I) for tag in ("text", "response")}


def _neutralise(content: str, tag: str) -> str:
    if "</" not in content:  # no closing tag possible (most texts): skip the regex pass
        return content
    return _CLOSING[tag].sub(f"</ {tag}>", content)


def fence_text(index: int, content: str) -> str:
    return f'<text id="{index}">\n{_neutralise(content, "text")}\n</text>'


def find_texts(user_message: str) -> list[str]:
    """The fenced completions of an aspect prompt, in prompt order (Text 1 first)."""
    found = sorted(((int(i), body) for i, body in _TEXT_RE.findall(user_message)))
    return [body for _, body in found]


def fence_response(content: str) -> str:
    return f"<response>\n{_neutralise(content, 'response')}\n</response>"


def find_response(user_message: str) -> str | None:
    m = _RESPONSE_RE.search(user_message)
    return m.group(1) if m else None


def rating_enum(aspect: str) -> list[str]:
    values = ["1", "2", "3", "4", "5"]
    return values + ["N/A"] if aspect in NA_ASPECTS else values


def aspect_schema(aspect: str, n_texts: int) -> dict:
    """JSON schema (OpenAI `strict` subset) for one aspect call over n texts."""
    item: dict = {
        "type": "object",
        "properties": {"rating": {"type": "string", "enum": rating_enum(aspect)}, "rationale": {"type": "string"}},
        "required": ["rating", "rationale"],
        "additionalProperties": False,
    }
    if aspect in TYPED_ASPECTS:
        item["properties"] = {
            "types": {"type": "array", "items": {"type": "string", "enum": TYPE_CHOICES[aspect]}},
            "type_rationale": {"type": "string"},
            **item["properties"],
        }
        item["required"] = ["types", "type_rationale", "rating", "rationale"]
    return {
        "type": "object",
        "properties": {"outputs": {"type": "array", "items": item, "minItems": n_texts, "maxItems": n_texts}},
        "required": ["outputs"],
        "additionalProperties": False,
    }


def critique_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "feedback": {"type": "string"},
            "overall_score": {"type": "string", "enum": [str(i) for i in range(1, 11)]},
        },
        "required": ["feedback", "overall_score"],
        "additionalProperties": False,
    }


def response_format(aspect: str, n_texts: int = 1) -> dict:
    """The `response_format` of one call; one shared object per (aspect, n): read, never change it."""
    return _response_format(aspect, n_texts)


@lru_cache(maxsize=64)  # built once per (aspect, n), not per judge call
def _response_format(aspect: str, n_texts: int) -> dict:
    schema = critique_schema() if aspect == CRITIQUE else aspect_schema(aspect, n_texts)
    return {"type": "json_schema", "json_schema": {"name": f"ultrafeedback_{aspect}", "schema": schema, "strict": True}}
