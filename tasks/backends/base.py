"""The one small interface every model backend implements.

Inputs: request records shaped like OpenAI Batch JSONL lines
    {"custom_id": str, "method": "POST", "url": "/v1/chat/completions", "body": {...},
     "label": str}                  # optional, ours: the kind of request, for the limiter
Outputs: result records shaped like OpenAI Batch output lines
    {"custom_id": str,
     "response": {"status_code": int, "body": <chat.completion dict>} | None,
     "error": {"code": str, "message": str, "transient": bool} | None,
     "latency_s": float}            # our addition; absent in OpenAI's files

Error codes and the `transient` flag follow tasks/backends/faults.py, the same for every
backend: a transient error may succeed on a later try (the shard is retried), a permanent
one is the row's final answer.

Backends are plain classes used as context managers (`__enter__` starts an engine or a
client, `__exit__` stops it). `run` yields one result per request, in any order, and
raises a TransientError when the whole engine is gone (the shard is then retried).
Heavy imports (vllm, openai) happen inside the backend modules, never here.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, TypedDict, runtime_checkable


class BatchRequest(TypedDict):
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]


class BatchResult(TypedDict, total=False):
    custom_id: str
    response: dict[str, Any] | None
    error: dict[str, str] | None
    latency_s: float


@runtime_checkable
class Backend(Protocol):
    name: str

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]: ...


def make_request(custom_id: str, body: dict[str, Any], label: str | None = None) -> BatchRequest:
    req: BatchRequest = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    if label:
        req["label"] = label  # type: ignore[typeddict-unknown-key]
    return req


def result_ok(custom_id: str, body: dict[str, Any], latency_s: float = 0.0, status_code: int = 200) -> BatchResult:
    return {"custom_id": custom_id, "response": {"status_code": status_code, "body": body}, "error": None, "latency_s": latency_s}


def result_error(custom_id: str, code: str, message: str, latency_s: float = 0.0,
                 transient: bool | None = None) -> BatchResult:
    """An error result; `transient` defaults to the code's class (tasks.backends.faults)."""
    from tasks.backends.faults import is_transient

    err = {"code": code, "message": message}
    err["transient"] = is_transient(err) if transient is None else transient
    return {"custom_id": custom_id, "response": None, "error": err, "latency_s": latency_s}


def message_text(result: BatchResult) -> str | None:
    """The assistant text of a successful chat-completion result, else None."""
    resp = result.get("response")
    if not resp or resp.get("status_code") != 200:
        return None
    choices = resp["body"].get("choices") or []
    return (choices[0].get("message") or {}).get("content") if choices else None
