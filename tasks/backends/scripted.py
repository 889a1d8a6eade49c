"""Deterministic in-process generator for tests and dry runs.

Inputs: chat-completion request records. Outputs: result records whose text is a pure
function of (model, system prompt, user prompt, seed): the same request always gets the
same answer, so tests can assert exact content. Usage counts are characters / 4.

Options (`script` in a pool entry or constructor kwargs):
  fail_ids: custom_ids answered with an HTTP 400 error record (permanent: the row's error)
  transient_ids: custom_ids answered with an HTTP 500 error record (transient)
  empty_ids: custom_ids answered with an empty message
  die_after: raise EngineDiedError after this many results in this backend's life
  latency_s: reported latency per result (no sleeping)
The verbalized-calibration prompt is honoured (a closing "Confidence: NN%" line), so the
rating stage can be exercised on realistic shapes.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult, result_error, result_ok
from tasks.errors import EngineDiedError


class ScriptedBackend:
    def __init__(self, name: str = "scripted", fail_ids: Iterable[str] = (), empty_ids: Iterable[str] = (),
                 die_after: int | None = None, latency_s: float = 0.01, transient_ids: Iterable[str] = ()):
        self.name = name
        self.fail_ids = set(fail_ids)
        self.transient_ids = set(transient_ids)
        self.empty_ids = set(empty_ids)
        self.die_after = die_after
        self.latency_s = latency_s
        self.served = 0
        self.open = False

    def __enter__(self) -> "ScriptedBackend":
        self.open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.open = False

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        if not self.open:
            raise RuntimeError("ScriptedBackend.run outside its context")
        for req in requests:
            if self.die_after is not None and self.served >= self.die_after:
                raise EngineDiedError(f"scripted engine {self.name} died after {self.served} results")
            self.served += 1
            cid = req["custom_id"]
            if cid in self.fail_ids or cid in self.transient_ids:
                code = "http_400" if cid in self.fail_ids else "http_500"
                yield result_error(cid, code, "scripted failure", self.latency_s)
                continue
            yield result_ok(cid, self.answer(req["body"], empty=cid in self.empty_ids), self.latency_s)

    @staticmethod
    def text_for(body: dict) -> str:
        msgs = body.get("messages") or []
        system = next((m["content"] for m in msgs if m["role"] == "system"), "")
        user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        key = f"{body.get('model')}\x1f{system}\x1f{user}\x1f{body.get('seed')}\x1f{body.get('temperature')}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        text = f"[{body.get('model')}] Answer {digest[:12]} to: {' '.join(user.split()[:12])}"
        if "Confidence: NN%" in system:
            text += f"\nConfidence: {int(digest[12:14], 16) * 100 // 255}%"
        return text

    def answer(self, body: dict, empty: bool = False) -> dict:
        text = "" if empty else self.text_for(body)
        max_tokens = int(body.get("max_tokens") or 1024)
        tokens = max(1, len(text) // 4) if text else 0
        finish = "length" if tokens > max_tokens else "stop"
        prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages") or [])
        return {
            "id": "scripted", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": max(1, prompt_chars // 4), "completion_tokens": min(tokens, max_tokens),
                      "total_tokens": max(1, prompt_chars // 4) + min(tokens, max_tokens)},
        }
