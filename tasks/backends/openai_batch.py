"""The OpenAI Batch API (OpenAI, Azure OpenAI, any OpenAI-format /v1/files + /v1/batches).

Inputs: Batch-style requests (exactly the realtime chat-completion bodies), an endpoint's
base URL, key and batch settings. Outputs: a `ProviderBatchBackend`
(tasks/backends/batch_lifecycle.py) over `OpenAIBatchAPI`, whose calls are:
- submit: upload the JSONL (`purpose=batch`, file name `<group>.jsonl`; a file of that
  name uploaded before a crash is reused), record its id, then create the batch with
  `metadata.uf_group = <group>`;
- find: list batches (newest first, back to shortly before the group's intent) for that
  metadata, so a create whose answer was lost is adopted, not repeated;
- poll: retrieve; `validating`/`in_progress`/`finalizing`/`cancelling` are running,
  `completed`/`expired`/`cancelled` ended (partial output possible), `failed` is the
  provider rejecting the input file (its `errors.data` become the message);
- results: the output file's lines as they are (status 200 -> answer), the error file's
  lines as error results with their HTTP status or error code (`batch_expired`, ...).
The official `openai` SDK is the client; its own retries (with Retry-After) cover the few
control calls. The key is read when the backend is built and never leaves the client.
"""
from __future__ import annotations

import io
import json
from typing import Any, Iterator

from tasks.backends.base import BatchRequest, BatchResult, result_error, result_ok
from tasks.backends.batch_lifecycle import Poll, ProviderBatchBackend
from tasks.backends.batch_state import BatchState, Group
from tasks.backends.faults import status_code

MAX_LINES, MAX_BYTES = 50_000, 200 * 1024 * 1024  # OpenAI's per-file limits (Azure: the same)
_RUNNING = {"validating", "in_progress", "finalizing", "cancelling"}
_MISSING = {"expired": "batch_expired", "cancelled": "batch_cancelled", "failed": "batch_failed"}
FIND_MARGIN_S = 600.0  # clock skew allowance when listing batches created around an intent


class OpenAIBatchAPI:
    """One OpenAI-format Files + Batches endpoint (see the module docstring)."""

    def __init__(self, client: Any, label: str, *, url: str = "/v1/chat/completions", completion_window: str = "24h"):
        self.client, self.label, self.url, self.completion_window = client, label, url, completion_window
        self.max_lines, self.max_bytes = MAX_LINES, MAX_BYTES

    def encode(self, req: BatchRequest) -> bytes:
        line = {"custom_id": req["custom_id"], "method": "POST", "url": self.url, "body": req["body"]}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    def _find_file(self, group: Group) -> str | None:
        name = f"{group.group}.jsonl"
        for f in self.client.files.list(purpose="batch"):
            if f.filename == name and f.created_at >= group.intent_at - FIND_MARGIN_S:
                return f.id
        return None

    def submit(self, group: Group, payload: list[bytes], state: BatchState) -> str:
        file_id = group.file_id or self._find_file(group)
        if file_id is None:
            f = self.client.files.create(file=(f"{group.group}.jsonl", io.BytesIO(b"".join(payload))), purpose="batch")
            file_id = f.id
        if file_id != group.file_id:
            state.uploaded(group, file_id)
        batch = self.client.batches.create(input_file_id=file_id, endpoint=self.url,
                                           completion_window=self.completion_window,
                                           metadata={"uf_group": group.group})
        return batch.id

    def find(self, group: Group) -> str | None:
        for b in self.client.batches.list(limit=100):  # newest first; the SDK pages on
            if b.created_at < group.intent_at - FIND_MARGIN_S:
                return None
            if (b.metadata or {}).get("uf_group") == group.group:
                return b.id
        return None

    def poll(self, batch_id: str) -> Poll:
        b = self.client.batches.retrieve(batch_id)
        rc = b.request_counts
        counts = {"total": rc.total, "completed": rc.completed, "failed": rc.failed} if rc else {}
        if b.status in _RUNNING:
            return Poll(False, b.status, counts)
        rejected = None
        if b.status == "failed":
            errs = (b.errors.data if b.errors and b.errors.data else [])
            rejected = "; ".join(f"line {e.line}: {e.code}: {e.message}" if e.line is not None else
                                 f"{e.code}: {e.message}" for e in errs[:5]) or "status failed, no reason given"
        return Poll(True, b.status, counts, rejected, _MISSING.get(b.status, "missing"))

    def results(self, batch_id: str) -> Iterator[BatchResult]:
        b = self.client.batches.retrieve(batch_id)
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            for raw in self.client.files.content(file_id).content.splitlines():
                if raw.strip():
                    yield _result(json.loads(raw))


def _result(line: dict) -> BatchResult:
    cid, resp, err = line.get("custom_id"), line.get("response") or {}, line.get("error")
    if err:
        return result_error(cid, str(err.get("code") or "batch_error"), str(err.get("message") or ""))
    status, body = resp.get("status_code"), resp.get("body") or {}
    if status == 200:
        return result_ok(cid, body)
    message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    code = status_code(int(status)) if str(status).isdigit() else "bad_response"
    return result_error(cid, code, str(message or body)[:500])


def openai_client(kind: str, base_url: str | None, key: str | None, api_version: str | None = None,
                  timeout_s: float = 120.0) -> Any:
    """A synchronous SDK client for the control calls (bounded SDK retries honour Retry-After)."""
    import openai

    if kind == "azure":
        return openai.AzureOpenAI(azure_endpoint=base_url, api_version=api_version, api_key=key, max_retries=3,
                                  timeout=timeout_s)
    return openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", max_retries=3, timeout=timeout_s)


def batch_backend(client: Any, label: str, settings: Any, state_file, *, azure: bool = False) -> ProviderBatchBackend:
    """A ProviderBatchBackend over an OpenAI-format endpoint with `settings` (BatchSettings)."""
    api = OpenAIBatchAPI(client, label, url="/chat/completions" if azure else "/v1/chat/completions",
                         completion_window=settings.completion_window)
    return ProviderBatchBackend(api, state_file, poll_interval_s=settings.poll_interval_s,
                                max_wait_s=settings.max_wait_s, resubmits=settings.resubmits,
                                max_lines=settings.max_lines, max_bytes=settings.max_bytes)


__all__ = ["OpenAIBatchAPI", "batch_backend", "openai_client", "MAX_LINES", "MAX_BYTES"]
