"""A real OpenAI-protocol HTTP server on 127.0.0.1 for tests and benchmarks.

Inputs: chat-completion requests (POST /v1/chat/completions, Azure's
/openai/deployments/<name>/chat/completions), GET /v1/models; control endpoints
GET /_stats, POST /_reset, POST /_faults. Outputs (404 model_not_found for a model it does not
serve when started with strict_models): scripted answers (tests/servers/scripted.py)
with `usage`, OpenAI's rate-limit headers, 429s when the configured RPM/TPM is exceeded, and
injected faults.

Faults: `[[fault:KIND[:ARG][*N]]]` anywhere in a message or an `X-Fault: KIND[:ARG][*N]`
header triggers one for that request (N: only its first N receipts); scheduled faults
(count, rate or seconds) come from `--fault` or POST /_faults. In /_stats, status 0 means the
client got no readable answer (hang, reset, cut, badjson). Kinds: 429 (ARG = Retry-After
seconds), 400 (context too long), 500/502/503/504, hang (ARG seconds, then the connection closes unanswered), reset
(TCP RST), cut (body cut short), badjson (200 with a body that is not JSON), truncate (answer
cut in half, finish_reason "length"), malformed (answer in no judge format), slow (ARG
seconds before a normal answer).

Tokens are counted as words and punctuation marks (a BPE-like count that clients can only
estimate), so limiters must reconcile their estimates with `usage`.

By hand: `python tests/servers/openai_server.py --port 0 --rpm 600 --tpm 200000` prints its
URL and serves until interrupted.
"""
from __future__ import annotations

import json
import math
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

if __package__ in (None, ""):  # run as a script: make `tests.servers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.servers.scripted import find_fault_markers, scripted_answer  # noqa: E402
from tests.servers.server_state import Fault, Limits, ServerState, request_fingerprint  # noqa: E402

_TOKEN = re.compile(r"\w+|[^\w\s]")
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
MAX_HANG_S = 120.0


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text or ""))


def prompt_tokens(messages: list[dict]) -> int:
    n = 3
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        n += 4 + count_tokens(content or "")
    return n


class JudgeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, port: int = 0, limits: Limits | None = None, faults: list[Fault] | None = None,
                 api_key: str | None = None, latency_s: float = 0.0, latency_per_token_s: float = 0.0,
                 rationale_words: int = 40, completion_words: int = 120, models: tuple[str, ...] = ("judge",),
                 seed: int = 0, strict_models: bool = False):
        super().__init__(("127.0.0.1", port), _Handler)
        self.strict_models = strict_models  # 404 model_not_found for a model not in `models`, as OpenAI does
        self.state = ServerState(limits or Limits(), faults, seed)
        self.api_key = api_key
        self.latency_s, self.latency_per_token_s = latency_s, latency_per_token_s
        self.rationale_words, self.completion_words = rationale_words, completion_words
        self.models = models
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> "JudgeServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # wakes hanging and slow handlers
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(timeout=5)


def _parse_fault(spec: str) -> tuple[str, float | None, int | None]:
    m = re.fullmatch(r"([a-z0-9]+)(?::([0-9.]+))?(?:\*(\d+))?", spec.strip())
    if not m:
        raise ValueError(f"bad fault spec {spec!r}")
    return m.group(1), float(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(3) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: JudgeServer

    def log_message(self, *args) -> None:  # quiet: tests read /_stats instead
        pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the socket was reset or closed on purpose

    # --- plumbing ----------------------------------------------------------------------
    def _send(self, status: int, payload: dict | bytes, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str, headers: dict | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": code, "param": None, "code": code}}, headers)

    def _read_json(self) -> dict | None | bool:
        """The JSON object body; None if it is not one; False if the client hung up mid-body."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            return False
        try:
            data = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def _authorised(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {key}" or self.headers.get("api-key") == key

    def _reset_connection(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    # --- routes ------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path == "/_stats":
            self._send(200, self.server.state.stats())
        elif path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.server.models]
            self._send(200, {"object": "list", "data": data})
        elif path == "/health":
            self._send(200, {"ok": True})
        else:
            self._error(404, f"no route {path}", "not_found")

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        body = self._read_json()
        if body is False:  # a request the client abandoned is not a request
            self.close_connection = True
            return
        if path == "/_reset":
            faults = [Fault(**f) for f in (body or {}).get("faults", [])]
            self.server.state.reset(faults)
            self._send(200, {"ok": True})
        elif path == "/_faults":
            self.server.state.set_faults([Fault(**f) for f in (body or {}).get("faults", [])])
            self._send(200, {"ok": True})
        elif path in ("/v1/chat/completions", "/chat/completions") or _AZURE_PATH.match(path):
            if body is None:
                self._error(400, "request body is not a JSON object", "invalid_request_error")
            elif not self._authorised():  # counted like any answer, so tests see how often a bad key was tried
                fp = request_fingerprint(body)
                self.server.state.receive(fp)
                try:
                    self._error(401, "Incorrect API key provided.", "invalid_api_key")
                finally:
                    self.server.state.done(fp, 401, None, body.get("model"))
            else:
                m = _AZURE_PATH.match(path)
                if m:
                    body = {**body, "model": body.get("model") or m.group(1)}
                self._chat(body)
        else:
            self._error(404, f"no route {path}", "not_found")

    def _trigger(self, body: dict, receipt: int) -> tuple[str, float | None] | None:
        markers = find_fault_markers(body.get("messages") or [])
        if self.headers.get("X-Fault"):
            markers.append(_parse_fault(self.headers["X-Fault"]))
        for kind, arg, first_n in markers:
            if first_n is None or receipt <= first_n:
                return kind, arg
        f = self.server.state.scheduled_fault()
        return (f.kind, f.arg) if f else None

    def _chat(self, body: dict) -> None:
        srv, state = self.server, self.server.state
        fp = request_fingerprint(body)
        receipt = state.receive(fp)
        status, fault_kind, usage, model, note = 500, None, None, body.get("model"), None
        try:
            messages = body.get("messages")
            if srv.strict_models and model not in srv.models:
                status, note = 404, f"The model `{model}` does not exist or you do not have access to it."
                return self._error(404, note, "model_not_found")
            if not isinstance(messages, list) or not messages:
                status, note = 400, f"messages: expected a non-empty list, got {str(messages)[:200]}"
                return self._error(400, note, "invalid_request_error")
            fault = self._trigger(body, receipt)
            fault_kind = fault[0] if fault else None
            if fault_kind == "429":
                status = 429
                return self._rate_limited(fault[1] if fault[1] is not None else 1.0, state.headers())
            content = scripted_answer(messages, body.get("response_format"), srv.rationale_words, srv.completion_words)
            finish = "stop"
            if fault_kind == "truncate":
                content, finish = content[: len(content) // 2], "length"
            elif fault_kind == "malformed":
                content = "I am sorry, I would rather not grade these texts.\n\nScore somewhere around good-ish."
            p_tok, c_tok = prompt_tokens(messages), count_tokens(content)
            ok, wait, headers = state.admit(p_tok + c_tok)
            if not ok:
                fault_kind, status = None, 429
                return self._rate_limited(wait, headers)
            try:
                status = self._deliver(fault, body, content, finish, p_tok, c_tok, headers)
            except OSError:  # the client hung up before the answer was written
                status = 0
            if status == 200:
                usage = {"prompt_tokens": p_tok, "completion_tokens": c_tok}
        finally:
            state.done(fp, status, fault_kind, model, usage, note)

    def _rate_limited(self, wait: float, headers: dict[str, str]) -> None:
        headers = {**headers, "retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))}
        self._error(429, f"Rate limit reached; please try again in {wait:.3f}s.", "rate_limit_exceeded", headers)

    def _deliver(self, fault, body, content, finish, p_tok, c_tok, headers) -> int:
        """Send the answer, or the fault in its place; returns the status the client saw."""
        srv = self.server
        kind, arg = fault if fault else (None, None)
        delay = srv.latency_s + srv.latency_per_token_s * c_tok + ((arg or 1.0) if kind == "slow" else 0.0)
        if kind == "hang":
            srv.stopping.wait(min(arg or 30.0, MAX_HANG_S))
            self._reset_connection()
            return 0
        if delay and srv.stopping.wait(delay):
            return 0
        if kind == "400":  # what a hosted endpoint says to a prompt over the model's context
            self._error(400, "This model's maximum context length is 4096 tokens; your messages resulted in "
                             "5012 tokens.", "context_length_exceeded", headers)
            return 400
        if kind in ("500", "502", "503", "504"):
            self._error(int(kind), "The server had an error while processing your request.", "server_error", headers)
            return int(kind)
        if kind == "reset":
            self._reset_connection()
            return 0
        completion = {
            "id": "chatcmpl-" + request_fingerprint(body)[:24], "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model") or srv.models[0],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok},
        }
        if kind == "badjson":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"message": ', headers)
            return 0
        if kind == "cut":
            raw = json.dumps(completion).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw[: len(raw) // 2])
            self.wfile.flush()
            self._reset_connection()
            return 0
        self._send(200, completion, headers)
        return 200


def _cli_fault(spec: str) -> Fault:
    """`KIND[:ARG]@rate=0.05|count=3|seconds=10`"""
    head, _, sched = spec.partition("@")
    kind, arg, _n = _parse_fault(head)
    key, _, value = sched.partition("=")
    if key not in ("rate", "count", "seconds"):
        raise SystemExit(f"--fault {spec!r}: expected KIND[:ARG]@rate=|count=|seconds=")
    return Fault(kind=kind, arg=arg, **{key: int(value) if key == "count" else float(value)})


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rpm", type=float, default=None)
    ap.add_argument("--tpm", type=float, default=None)
    ap.add_argument("--window-s", type=float, default=60.0, help="length of the rate-limit 'minute' (scaled time)")
    ap.add_argument("--burst", type=float, default=1 / 60, help="bucket capacity as a fraction of the window's limit")
    ap.add_argument("--no-limit-headers", action="store_true", help="do not send x-ratelimit-limit-* headers")
    ap.add_argument("--free-rejections", action="store_true", help="429'd requests do not count against the RPM limit")
    ap.add_argument("--api-key", default=None, help="require this key (default: accept any)")
    ap.add_argument("--latency-s", type=float, default=0.0)
    ap.add_argument("--latency-per-token-s", type=float, default=0.0)
    ap.add_argument("--rationale-words", type=int, default=40)
    ap.add_argument("--completion-words", type=int, default=120)
    ap.add_argument("--fault", action="append", default=[], help="KIND[:ARG]@rate=R|count=N|seconds=S")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long (bounded by design)")
    args = ap.parse_args(argv)
    limits = Limits(rpm=args.rpm, tpm=args.tpm, window_s=args.window_s, burst=args.burst,
                    headers=not args.no_limit_headers, charge_rejected=not args.free_rejections)
    srv = JudgeServer(args.port, limits, [_cli_fault(f) for f in args.fault], args.api_key, args.latency_s,
                      args.latency_per_token_s, args.rationale_words, args.completion_words).start()
    print(srv.url, flush=True)
    try:
        srv.stopping.wait(args.max_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
