"""Scripted judges with planted, known faults, to test that the judge audit finds them.

Inputs: judge requests rendered by tasks.rating.prompts. Outputs: OpenAI-shaped results
like tasks.rating.scripted (text or structured by the request), whose 1-5
ratings follow one rule per judge:
- fair:           base(text), a hash of the text onto 2..4 (no fault);
- first_position: base + `bonus` for the text shown as Text 1;
- long:           1 + min(4, characters // `chars_per_point`): longer is better;
- self:           base + `bonus` for texts that contain `marker` (the judge's own model's
                  answers carry its name: the scripted generator writes `[<model>] ...`);
- oracle:         the human label where it knows the text, else base; the labels come
                  from `oracle` (pointwise (aspect, text) -> rating, pairwise (text, text) ->
                  the preferred text or None for a tie), which the judge audit supplies from
                  its bundled human sets (tasks.audit.humans.oracle_labels);
- random:         uniform 1..5 from a hash of the whole request: no relation to the texts.
base stays inside 2..4 so a +1 or -1 fault is never cut off by the scale. Critique calls
are answered as by the plain scripted judge. Options come from a judge endpoint's
`script` mapping: {fault: <rule or list of rules>, bonus: 1, marker: "[name]", chars_per_point: 80}.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Callable, Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult, result_ok
from tasks.rating.protocol import CRITIQUE, TYPED_ASPECTS, find_aspect, find_texts
from tasks.rating.scripted import scripted_answer

FAULTS = ("fair", "first_position", "long", "self", "oracle", "random")


def _h(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:12], 16)


def base_rating(aspect: str, text: str) -> int:
    return 2 + _h("fault-base", aspect, text) % 3


class FaultyJudge:
    """Backend answering aspect calls by one planted rule (see the module docstring)."""

    def __init__(self, fault: str | list[str] = "fair", bonus: int = 1, marker: str | None = None,
                 chars_per_point: int = 80, name: str = "scripted-faulty",
                 oracle: Callable[[], tuple[dict, dict]] | None = None):
        faults = [fault] if isinstance(fault, str) else list(fault)
        bad = [f for f in faults if f not in FAULTS]
        if bad or not faults:
            raise ValueError(f"script.fault: {bad or faults!r} not among {FAULTS}")
        if "self" in faults and not marker:
            raise ValueError("script.marker: required for fault self")
        if "oracle" in faults and oracle is None:
            raise ValueError("script.fault: oracle needs human labels; the judge audit passes them "
                             "(tasks.audit.humans.oracle_labels)")
        self.oracle = oracle
        self.faults, self.bonus, self.marker, self.chars_per_point = faults, bonus, marker, chars_per_point
        self.fault = "+".join(faults)
        self.name = name
        self.sent: list[str] = []

    def __enter__(self) -> "FaultyJudge":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def ratings(self, aspect: str, texts: list[str], user: str) -> list[int]:
        """The planted rules in order: long, random and oracle set the ratings, first_position
        and self add their bonus on top (several faults combine; the scale then clips)."""
        out = [base_rating(aspect, t) for t in texts]
        for f in self.faults:
            if f == "long":
                out = [1 + min(4, len(t) // self.chars_per_point) for t in texts]
            elif f == "random":
                rng = random.Random(_h("random", user))
                out = [rng.randint(1, 5) for _ in texts]
            elif f == "oracle":
                point, pair = self.oracle()
                if len(texts) == 2 and tuple(texts) in pair:
                    winner = pair[tuple(texts)]
                    out = [3, 3] if winner is None else [4 if t == winner else 2 for t in texts]
                else:
                    out = [point.get((aspect, t), b) for t, b in zip(texts, out)]
            elif f == "first_position":
                out = [b + (self.bonus if k == 0 else 0) for k, b in enumerate(out)]
            elif f == "self":
                out = [b + (self.bonus if self.marker in t else 0) for b, t in zip(out, texts)]
        return out

    def answer(self, body: dict) -> str:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        aspect = find_aspect(user)
        if aspect == CRITIQUE:
            return scripted_answer(body)
        texts = find_texts(user)
        ratings = [max(1, min(5, r)) for r in self.ratings(aspect, texts, user)]
        if "response_format" in body:
            items = []
            for k, r in enumerate(ratings, 1):
                item = {"rating": str(r), "rationale": f"Planted rule {self.fault}, text {k}."}
                if aspect in TYPED_ASPECTS:
                    item = {"types": [], "type_rationale": "None.", **item}
                items.append(item)
            return json.dumps({"outputs": items})
        blocks = []
        for k, r in enumerate(ratings, 1):
            typed = "Type: None\nRationale: None.\n" if aspect in TYPED_ASPECTS else ""
            blocks.append(f"#### Output for Text {k}\n{typed}Rating: {r}\nRationale: Planted rule {self.fault}.")
        return "\n\n".join(blocks)

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        for req in requests:
            self.sent.append(req["custom_id"])
            body = req["body"]
            answer = self.answer(body)
            prompt_tokens = sum(len(m.get("content") or "") for m in body["messages"]) // 4
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer) // 4,
                     "total_tokens": prompt_tokens + len(answer) // 4}
            yield result_ok(req["custom_id"], {
                "id": f"chatcmpl-{req['custom_id']}", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}],
                "usage": usage})
