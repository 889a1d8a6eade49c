"""Anthropic's Messages API behind the Backend protocol: realtime and Message Batches.

Inputs: Batch-style requests whose bodies are OpenAI chat-completion bodies (what the rate
stage builds), a JudgeEndpoint (kind anthropic). Outputs: Batch-style results whose
bodies are chat.completion-shaped, so the stage's parser, re-asks and rows work unchanged.

Mapping: `system` messages become the `system` parameter, the others stay messages;
`max_tokens`, `temperature`, `top_p` carry over. A `response_format` JSON schema becomes
one forced tool (`tool_choice` = that tool) whose input is the answer; the tool input is
handed on as the answer's JSON text. `stop_reason` max_tokens -> finish_reason "length";
`usage.input_tokens`/`output_tokens` -> prompt/completion tokens.

Realtime (`AnthropicMessagesBackend`): up to `max_concurrency` requests in flight, within
the budget the `anthropic-ratelimit-*-remaining` headers leave; when it is used up every
request of the endpoint waits for the `-reset` time, then a single probe goes first; 429 and 529
(overloaded) wait `retry-after` (else
a growing backoff) and are retried until `max_rate_limit_wait_s`, then become transient
error results; other 4xx are permanent error results; 401/403 raise InputError. The SDK's
own retries are off so that waits happen in one place.

Message Batches (`message_batch_backend`): the shared lifecycle
(tasks/backends/batch_lifecycle.py) over `MessageBatchAPI`: 100,000 requests / 256 MB a
batch, results by `custom_id` (succeeded, errored, expired, canceled). Anthropic batches
carry no metadata, so a create whose answer a crash lost is found again by listing batches
created since the intent with the same request count; a wrong match costs a resubmit, never
a wrong answer (results are matched by custom_id, the request's content hash).
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from typing import Any, Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult, result_error, result_ok
from tasks.backends.batch_lifecycle import Poll, ProviderBatchBackend
from tasks.backends.batch_state import BatchState, Group
from tasks.backends.faults import status_code

MAX_LINES, MAX_BYTES = 100_000, 256 * 1024 * 1024
TOOL = "answer"
FIND_MARGIN_S = 600.0


def to_params(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions body as Messages API parameters."""
    system = [m["content"] for m in body.get("messages", []) if m.get("role") == "system"]
    params: dict[str, Any] = {"model": body["model"], "max_tokens": body.get("max_tokens") or 1024,
                              "messages": [{"role": m["role"], "content": m["content"]}
                                           for m in body.get("messages", []) if m.get("role") != "system"]}
    if system:
        params["system"] = "\n\n".join(system)
    for k in ("temperature", "top_p"):
        if body.get(k) is not None:
            params[k] = body[k]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]
        params["tools"] = [{"name": TOOL, "description": f"Give the answer ({schema.get('name', 'answer')}) as "
                            "this tool's input.", "input_schema": schema["schema"]}]
        params["tool_choice"] = {"type": "tool", "name": TOOL}
    return params


def to_completion(message: dict[str, Any]) -> dict[str, Any]:
    """A Messages API message as a chat.completion body."""
    parts = message.get("content") or []
    tool = next((p for p in parts if p.get("type") == "tool_use"), None)
    text = json.dumps(tool["input"], ensure_ascii=False) if tool else \
        "".join(p.get("text", "") for p in parts if p.get("type") == "text")
    usage = message.get("usage") or {}
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) + \
        (usage.get("cache_read_input_tokens") or 0)
    return {"id": message.get("id"), "object": "chat.completion", "model": message.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if message.get("stop_reason") == "max_tokens" else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": usage.get("output_tokens") or 0,
                      "total_tokens": prompt + (usage.get("output_tokens") or 0)}}


def anthropic_client(base_url: str | None, key: str | None, timeout_s: float = 120.0, max_retries: int = 3) -> Any:
    import anthropic

    return anthropic.Anthropic(api_key=key or "EMPTY", base_url=base_url, timeout=timeout_s, max_retries=max_retries)


# --- realtime -----------------------------------------------------------------------------
class _Gate:
    """Request budget of an endpoint, shared by its requests.

    `remaining` is what the last answer's anthropic-ratelimit-*-remaining headers left
    (minus requests sent since); at 0, requests wait for the `-reset` time (or a 429/529's
    retry-after), then one probe goes first and its headers say how many may follow, so a
    pause does not end in a burst that the provider refuses again."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.remaining: int | None = None  # None: unknown, no limit seen yet
        self.reset_at = 0.0
        self.in_flight = 0

    def acquire(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                if self.remaining is None or self.remaining > 0:
                    self.remaining = None if self.remaining is None else self.remaining - 1
                    break
                if now >= self.reset_at:
                    self.reset_at = now + 1.0  # the probe; others wait for its headers (or 1 s)
                    break
                self.cond.wait(self.reset_at - now)
            self.in_flight += 1

    def release(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def pause(self, seconds: float) -> None:
        with self.cond:
            self.remaining, self.reset_at = 0, max(self.reset_at, time.monotonic() + seconds)

    def learn(self, headers: Any) -> None:
        """Adopt the tightest of the requests / tokens budgets the answer reports."""
        budgets = []
        for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
            left, reset = headers.get(f"anthropic-ratelimit-{kind}-remaining"), \
                headers.get(f"anthropic-ratelimit-{kind}-reset")
            if left is not None and reset:
                at = datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp() - time.time()
                budgets.append((int(left) if kind == "requests" else (1 if int(left) > 0 else 0), at))
        if not budgets:
            return
        left, reset_in = min(budgets)
        with self.cond:
            self.remaining = max(0, left - (self.in_flight - 1))
            if self.remaining == 0:
                self.reset_at = time.monotonic() + max(0.0, reset_in)
            self.cond.notify_all()


class AnthropicMessagesBackend:
    """Realtime Messages API backend (see the module docstring)."""

    def __init__(self, endpoint: Any):
        self.endpoint, self.name = endpoint, f"anthropic:{endpoint.name}"
        self.gate, self._client = _Gate(), None

    def __enter__(self) -> "AnthropicMessagesBackend":
        from tasks.errors import InputError

        key = self.endpoint.api_key()
        if not key:
            raise InputError(f"rating.endpoints[{self.endpoint.name}]: environment variable {self.endpoint.key_env} "
                             "is not set (it must hold the API key for kind anthropic)")
        self._client = anthropic_client(self.endpoint.resolved_base_url(), key, self.endpoint.timeout_s, max_retries=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        reqs = list(requests)
        with ThreadPoolExecutor(max_workers=min(self.endpoint.max_concurrency, max(1, len(reqs)))) as pool:
            for fut in as_completed([pool.submit(self._one, r) for r in reqs]):
                yield fut.result()

    def _one(self, req: BatchRequest) -> BatchResult:
        import anthropic

        from tasks.errors import InputError

        cid, params, t0 = req["custom_id"], to_params(req["body"]), time.monotonic()
        # Sampling goes in the JSON body as the API documents it: recent SDKs dropped the
        # keyword arguments for models that refuse them, older ones still take them.
        sampling = {k: params.pop(k) for k in ("temperature", "top_p") if k in params}
        tries = 0
        while True:
            self.gate.acquire()
            try:
                raw = self._client.messages.with_raw_response.create(**params, extra_body=sampling or None)
            except anthropic.APIStatusError as exc:
                self.gate.release()
                status = exc.status_code
                if status in (401, 403):
                    raise InputError(f"anthropic endpoint {self.endpoint.name!r} refused the key from "
                                     f"${self.endpoint.key_env} (HTTP {status})") from None
                if status in (429, 529) or status >= 500:
                    tries += 1
                    after = exc.response.headers.get("retry-after")
                    wait = float(after) if after else min(30.0, 0.5 * 2 ** tries)
                    if time.monotonic() - t0 + wait <= self.endpoint.max_rate_limit_wait_s and tries <= 50:
                        self.gate.pause(wait) if status in (429, 529) else time.sleep(wait)
                        continue
                message = str((exc.body or {}).get("error", {}).get("message") if isinstance(exc.body, dict)
                              else exc)[:500]
                return result_error(cid, status_code(status), message, time.monotonic() - t0)
            except anthropic.APIConnectionError as exc:
                self.gate.release()
                tries += 1
                if tries <= 3:
                    time.sleep(0.5 * 2 ** tries)
                    continue
                return result_error(cid, "connection_error", str(exc)[:500], time.monotonic() - t0)
            self.gate.learn(raw.headers)
            self.gate.release()
            message = raw.parse().model_dump(mode="json")
            return result_ok(cid, to_completion(message), time.monotonic() - t0)


# --- Message Batches ----------------------------------------------------------------------
_ERROR_CODES = {"invalid_request_error": "http_400", "not_found_error": "http_404",
                "overloaded_error": "http_529", "api_error": "http_500", "rate_limit_error": "http_429"}


class MessageBatchAPI:
    """Anthropic Message Batches as a BatchAPI of the shared lifecycle."""

    def __init__(self, client: Any, label: str):
        self.client, self.label = client, label
        self.max_lines, self.max_bytes = MAX_LINES, MAX_BYTES

    def encode(self, req: BatchRequest) -> bytes:
        line = {"custom_id": req["custom_id"], "params": to_params(req["body"])}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    def submit(self, group: Group, payload: list[bytes], state: BatchState) -> str:
        return self.client.messages.batches.create(requests=[json.loads(line) for line in payload]).id

    def find(self, group: Group) -> str | None:
        for b in self.client.messages.batches.list(limit=100):  # newest first
            if b.created_at.timestamp() < group.intent_at - FIND_MARGIN_S:
                return None
            rc = b.request_counts
            if rc.processing + rc.succeeded + rc.errored + rc.canceled + rc.expired == len(group.ids):
                return b.id
        return None

    def poll(self, batch_id: str) -> Poll:
        b = self.client.messages.batches.retrieve(batch_id)
        rc = b.request_counts
        counts = {"total": rc.processing + rc.succeeded + rc.errored + rc.canceled + rc.expired,
                  "completed": rc.succeeded, "failed": rc.errored + rc.canceled + rc.expired}
        return Poll(b.processing_status == "ended", b.processing_status, counts)

    def results(self, batch_id: str) -> Iterator[BatchResult]:
        for item in self.client.messages.batches.results(batch_id):
            cid, res = item.custom_id, item.result.model_dump(mode="json")
            kind = res.get("type")
            if kind == "succeeded":
                yield result_ok(cid, to_completion(res["message"]))
            elif kind == "errored":
                err = (res.get("error") or {}).get("error") or {}
                yield result_error(cid, _ERROR_CODES.get(err.get("type"), "http_500"), str(err.get("message") or ""))
            else:
                yield result_error(cid, "batch_expired" if kind == "expired" else "batch_cancelled",
                                   f"request {kind} in batch {batch_id}")


def message_batch_backend(client: Any, label: str, settings: Any, state_file) -> ProviderBatchBackend:
    return ProviderBatchBackend(MessageBatchAPI(client, label), state_file, poll_interval_s=settings.poll_interval_s,
                                max_wait_s=settings.max_wait_s, resubmits=settings.resubmits,
                                max_lines=settings.max_lines, max_bytes=settings.max_bytes)
