"""An Anthropic Messages API + Message Batches imitation on 127.0.0.1, for tests.

Inputs: the documented routes (docs.anthropic.com/en/api/messages, /en/api/creating-message-batches):
POST /v1/messages; POST /v1/messages/batches, GET /v1/messages/batches (newest first,
`limit`, `after_id`), GET /v1/messages/batches/{id}, GET /v1/messages/batches/{id}/results
(JSONL), POST /v1/messages/batches/{id}/cancel; the key in `x-api-key` (or `Authorization:
Bearer`, as recent SDKs send it) and an `anthropic-version` header. Controls: POST
/_faults {"overloaded": N, "rate_limited": N, "expire": N}, GET /_stats. Outputs: Messages (`content`
blocks, `stop_reason`, `usage.input_tokens`/
`output_tokens`) from the scripted judge of the OpenAI test server (a forced tool gets the
structured answer as its `input`), `anthropic-ratelimit-requests-*` headers (RFC 3339
reset), 429 with `retry-after` past `rpm`, 529 `overloaded_error`, and batches that end at
the `polls_per_status`-th retrieve (0: the first), answered per request and counted by
request fingerprint (ServerState), so a test sees any request answered twice.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.servers.openai_server import count_tokens, prompt_tokens
from tests.servers.scripted import scripted_answer
from tests.servers.server_state import Limits, ServerState, request_fingerprint


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


class AnthropicServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0, *, api_key: str | None = None, rpm: float | None = None, window_s: float = 60.0,
                 polls_per_status: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.api_key, self.polls_per_status = api_key, polls_per_status
        self.state = ServerState(Limits(rpm=rpm, window_s=window_s, burst=1 / 6 if rpm else 1 / 60))
        self.lock = threading.Lock()
        self.faults = {"overloaded": 0, "rate_limited": 0, "expire": 0}
        self.batches: dict[str, dict] = {}
        self.pending: dict[str, dict] = {}  # batch id -> {"requests", "polls", "results"}
        self.counters = {"messages": 0, "overloaded": 0, "rate_limited": 0, "batch_creates": 0, "retrieves": 0,
                         "lines_answered": 0}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "AnthropicServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def message(self, params: dict) -> dict:
        """One Messages API answer, counted by fingerprint like the OpenAI server's answers."""
        fp = request_fingerprint(params)
        self.state.receive(fp)
        messages = [{"role": "system", "content": params.get("system") or ""}, *params.get("messages", [])]
        tool = next(iter(params.get("tools") or []), None)
        forced = tool is not None and (params.get("tool_choice") or {}).get("name") == tool["name"]
        text = scripted_answer(messages, {"type": "json_schema"} if forced else None)
        p_tok, c_tok = prompt_tokens(messages), count_tokens(text)
        content = [{"type": "tool_use", "id": "toolu_" + fp[:20], "name": tool["name"], "input": json.loads(text)}] \
            if forced else [{"type": "text", "text": text}]
        self.state.done(fp, 200, None, params.get("model"), {"prompt_tokens": p_tok, "completion_tokens": c_tok})
        return {"id": "msg_" + fp[:24], "type": "message", "role": "assistant", "model": params.get("model"),
                "content": content, "stop_reason": "tool_use" if forced else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": p_tok, "output_tokens": c_tok}}

    def create_batch(self, requests: list[dict]) -> dict:
        bid = f"msgbatch_{len(self.batches) + 1:06d}"
        now = time.time()
        obj = {"id": bid, "type": "message_batch", "processing_status": "in_progress",
               "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                  "expired": 0},
               "ended_at": None, "created_at": _rfc3339(now), "expires_at": _rfc3339(now + 86400),
               "cancel_initiated_at": None, "archived_at": None, "results_url": None}
        self.batches[bid] = obj
        expire, self.faults["expire"] = self.faults["expire"], 0
        self.pending[bid] = {"requests": requests, "polls": 0, "results": None, "expire": expire}
        self.counters["batch_creates"] += 1
        return obj

    def retrieve(self, bid: str) -> dict:
        obj, inner = self.batches[bid], self.pending[bid]
        inner["polls"] += 1
        if obj["processing_status"] != "ended" and (obj["processing_status"] == "canceling"
                                                    or inner["polls"] >= max(1, self.polls_per_status)):
            self._end(bid)
        return obj

    def _end(self, bid: str) -> None:
        obj, inner = self.batches[bid], self.pending[bid]
        canceling = obj["processing_status"] == "canceling"
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results = []
        for i, req in enumerate(inner["requests"]):
            if canceling and i >= len(inner["requests"]) // 2:
                results.append({"custom_id": req["custom_id"], "result": {"type": "canceled"}})
                counts["canceled"] += 1
            elif i < inner["expire"]:
                results.append({"custom_id": req["custom_id"], "result": {"type": "expired"}})
                counts["expired"] += 1
            else:
                results.append({"custom_id": req["custom_id"],
                                "result": {"type": "succeeded", "message": self.message(req["params"])}})
                counts["succeeded"] += 1
                self.counters["lines_answered"] += 1
        inner["results"] = results
        obj.update(processing_status="ended", request_counts=counts, ended_at=_rfc3339(time.time()),
                   results_url=f"{self.url}/v1/messages/batches/{bid}/results")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AnthropicServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, payload: dict | bytes, headers: dict | None = None, ctype="application/json") -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", f"req_{time.monotonic_ns()}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def _checked(self) -> bool:
        key = self.server.api_key
        if key is not None and key not in (self.headers.get("x-api-key"),
                                           (self.headers.get("Authorization") or "").removeprefix("Bearer ")):
            self._error(401, "authentication_error", "invalid x-api-key")
            return False
        if not self.headers.get("anthropic-version"):
            self._error(400, "invalid_request_error", "anthropic-version header is required")
            return False
        return True

    def do_GET(self) -> None:
        url, srv = urlparse(self.path), self.server
        parts = url.path.strip("/").split("/")
        if url.path == "/_stats":
            return self._send(200, {**srv.state.stats(), **srv.counters, "batches": list(srv.batches.values())})
        if parts[:3] != ["v1", "messages", "batches"] or not self._checked():
            return None if parts[:3] == ["v1", "messages", "batches"] else self._error(404, "not_found_error", url.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        with srv.lock:
            if len(parts) == 3:
                rows = sorted(srv.batches.values(), key=lambda b: b["id"], reverse=True)
                if q.get("after_id") in srv.batches:
                    rows = rows[[r["id"] for r in rows].index(q["after_id"]) + 1:]
                page = rows[:int(q.get("limit") or 20)]
                return self._send(200, {"data": page, "has_more": len(rows) > len(page),
                                        "first_id": page[0]["id"] if page else None,
                                        "last_id": page[-1]["id"] if page else None})
            if parts[3] not in srv.batches:
                return self._error(404, "not_found_error", f"no batch {parts[3]}")
            if len(parts) == 5 and parts[4] == "results":
                inner = srv.pending[parts[3]]
                if inner["results"] is None:
                    return self._error(400, "invalid_request_error", "batch has not ended")
                data = b"".join(json.dumps(r).encode() + b"\n" for r in inner["results"])
                return self._send(200, data, ctype="application/binary")
            srv.counters["retrieves"] += 1
            return self._send(200, srv.retrieve(parts[3]))

    def do_POST(self) -> None:
        path, srv = urlparse(self.path).path, self.server
        body = self._body()
        if path == "/_faults":
            with srv.lock:
                srv.faults.update({k: int(v) for k, v in body.items()})
            return self._send(200, {"ok": True})
        if not self._checked():
            return None
        parts = path.strip("/").split("/")
        if path == "/v1/messages":
            return self._messages(body)
        with srv.lock:
            if path == "/v1/messages/batches":
                return self._send(200, srv.create_batch(body.get("requests") or []))
            if len(parts) == 5 and parts[4] == "cancel" and parts[3] in srv.batches:
                obj = srv.batches[parts[3]]
                if obj["processing_status"] == "in_progress":
                    obj.update(processing_status="canceling", cancel_initiated_at=_rfc3339(time.time()))
                return self._send(200, obj)
        self._error(404, "not_found_error", path)

    def _messages(self, params: dict) -> None:
        srv = self.server
        if not params.get("messages") or not params.get("max_tokens"):
            return self._error(400, "invalid_request_error", "messages and max_tokens are required")
        with srv.lock:
            srv.counters["messages"] += 1
            if srv.faults["overloaded"] > 0:
                srv.faults["overloaded"] -= 1
                srv.counters["overloaded"] += 1
                return self._error(529, "overloaded_error", "Overloaded", {"retry-after": "0"})
            forced_429 = srv.faults["rate_limited"] > 0
            srv.faults["rate_limited"] -= forced_429
        ok, wait, _ = srv.state.admit(1)
        if forced_429 or not ok:
            with srv.lock:
                srv.counters["rate_limited"] += 1
            return self._error(429, "rate_limit_error", "Number of requests has exceeded your rate limit",
                               {"retry-after": str(max(1, int(wait + 0.999))) if not forced_429 else "1"})
        headers = {}
        if srv.state.rpm is not None:
            b = srv.state.rpm
            headers = {"anthropic-ratelimit-requests-limit": str(int(b.limit)),
                       "anthropic-ratelimit-requests-remaining": str(max(0, int(b.level))),
                       "anthropic-ratelimit-requests-reset": _rfc3339(time.time() + b.reset_s())}
        self._send(200, srv.message(params), headers)
