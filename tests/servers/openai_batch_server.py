"""OpenAI Files + Batches on the OpenAI-protocol test server, for batch-mode tests and benches.

Inputs: the endpoints of OpenAI's Batch API as documented (platform.openai.com/docs/api-reference/batch
and /files): POST /v1/files (multipart, purpose=batch), GET /v1/files, GET /v1/files/{id},
GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches (newest first, `after`, `limit`),
GET /v1/batches/{id}, POST /v1/batches/{id}/cancel; plus the realtime routes of JudgeServer.
Controls: POST /_batch_faults (applied to the next created batches, in order), POST
/_batch_release (let held batches go on), GET /_batch_stats. Outputs: batch objects with
`request_counts`, output and error files in the documented line shape, answers from the same
scripted judge (tests/servers/scripted.py) counted per request fingerprint in /_stats, so a
test sees any request answered twice.

Status progression: validating -> in_progress -> finalizing -> completed, one step per
`polls_per_status` retrieves (0: a batch has ended at its first retrieve, "instant").
Validation (at the end of validating): each line JSON with a unique custom_id, method POST,
the batch's url, one model, within `max_lines`/`max_bytes`; else status `failed` with
`errors.data` (line, code, message). Faults: {"kind": "expire", "answer": N} (N lines
answered, the rest in the error file as `batch_expired`), {"kind": "line_errors", "count":
N, "status": 500}, {"kind": "malformed", "count": N} (N answers in no judge format),
{"kind": "hold"} (in_progress until /_batch_release), {"kind": "reject"} (fails validation). Cancel: `cancelling`, then `cancelled` with the first half answered and
the rest absent from both files. `upload_delay_s`, `create_delay_s` and `download_delay_s`
keep a response back after its effect took place, so a kill can land in that window.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import parse_qs, urlparse

if __package__ in (None, ""):  # run as a script: make `tests.servers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.servers.openai_server import JudgeServer, _Handler, count_tokens, prompt_tokens  # noqa: E402
from tests.servers.scripted import scripted_answer  # noqa: E402
from tests.servers.server_state import request_fingerprint  # noqa: E402

_STEPS = ["validating", "in_progress", "finalizing", "completed"]


class BatchJudgeServer(JudgeServer):
    def __init__(self, port: int = 0, *, polls_per_status: int = 0, max_lines: int = 50_000,
                 max_bytes: int = 200 * 1024 * 1024, upload_delay_s: float = 0.0, create_delay_s: float = 0.0,
                 download_delay_s: float = 0.0, **kwargs):
        super().__init__(port, **kwargs)
        self.RequestHandlerClass = _BatchHandler
        self.polls_per_status, self.max_lines, self.max_bytes = polls_per_status, max_lines, max_bytes
        self.upload_delay_s, self.create_delay_s, self.download_delay_s = upload_delay_s, create_delay_s, download_delay_s
        self.block = threading.Lock()
        self.files: dict[str, dict] = {}
        self.file_data: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.internal: dict[str, dict] = {}
        self.batch_faults: list[dict] = []
        self.counters = {"uploads": 0, "creates": 0, "retrieves": 0, "lists": 0, "downloads": 0, "cancels": 0,
                         "downloads_started": 0, "lines_answered": 0, "uploaded_bytes": 0}

    # --- batch engine ----------------------------------------------------------------------
    def _new_id(self, prefix: str, table: dict) -> str:
        return f"{prefix}{len(self.files) + len(self.batches) + 1:06d}"

    def add_file(self, name: str, purpose: str, data: bytes) -> dict:
        fid = self._new_id("file-", self.files)
        obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()), "filename": name,
               "purpose": purpose, "status": "processed", "status_details": None}
        self.files[fid], self.file_data[fid] = obj, data
        return obj

    def create_batch(self, body: dict) -> tuple[int, dict]:
        fid = body.get("input_file_id")
        if fid not in self.files:
            return 400, {"error": {"message": f"No such File object: {fid}", "type": "invalid_request_error",
                                   "param": "input_file_id", "code": None}}
        if body.get("completion_window") != "24h":
            return 400, {"error": {"message": "completion_window must be 24h", "type": "invalid_request_error",
                                   "param": "completion_window", "code": None}}
        bid = self._new_id("batch_", self.batches)
        now = int(time.time())
        obj = {"id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None, "input_file_id": fid,
               "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
               "created_at": now, "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None,
               "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
               "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
               "metadata": body.get("metadata")}
        self.batches[bid] = obj
        self.internal[bid] = {"polls": 0, "fault": self.batch_faults.pop(0) if self.batch_faults else None,
                              "released": False, "lines": []}
        return 200, obj

    def retrieve(self, bid: str) -> dict:
        obj, inner = self.batches[bid], self.internal[bid]
        inner["polls"] += 1
        if obj["status"] == "cancelling":
            self._finish(bid, "cancelled", answer=len(inner["lines"]) // 2, absent=True)
            return obj
        while obj["status"] in _STEPS[:-1]:
            if self.polls_per_status and inner["polls"] % self.polls_per_status:
                break
            before = obj["status"]
            self._step(bid)
            if self.polls_per_status or obj["status"] == before:  # one step per poll, or held
                break
        return obj

    def _step(self, bid: str) -> None:
        obj, inner = self.batches[bid], self.internal[bid]
        fault = inner["fault"] or {}
        now = int(time.time())
        if obj["status"] == "validating":
            errors = self._validate(obj)
            if errors or fault.get("kind") == "reject":
                errors = errors or [{"code": "invalid_request", "message": "The batch input file was rejected.",
                                     "param": None, "line": None}]
                obj.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
                return
            obj.update(status="in_progress", in_progress_at=now)
            obj["request_counts"]["total"] = len(inner["lines"])
        elif obj["status"] == "in_progress":
            if fault.get("kind") == "hold" and not inner["released"]:
                return
            if fault.get("kind") == "expire":
                self._finish(bid, "expired", answer=int(fault.get("answer", 0)))
                return
            obj.update(status="finalizing", finalizing_at=now)
        elif obj["status"] == "finalizing":
            self._finish(bid, "completed", answer=len(inner["lines"]))

    def _validate(self, obj: dict) -> list[dict]:
        data, inner = self.file_data[obj["input_file_id"]], self.internal[obj["id"]]
        errors, seen, models = [], set(), set()
        if len(data) > self.max_bytes:
            return [{"code": "file_too_large", "message": f"file over {self.max_bytes} bytes", "param": None, "line": None}]
        lines = [ln for ln in data.splitlines() if ln.strip()]
        if len(lines) > self.max_lines:
            return [{"code": "too_many_requests", "message": f"over {self.max_lines} requests", "param": None, "line": None}]
        for n, raw in enumerate(lines, start=1):
            try:
                rec = json.loads(raw)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                               "param": None, "line": n})
                continue
            cid, body = rec.get("custom_id"), rec.get("body") or {}
            problem = ("missing_custom_id", "custom_id is required") if not cid else \
                ("duplicate_custom_id", f"The custom_id for this request is a duplicate of another request: {cid}") \
                if cid in seen else ("invalid_method", "method must be POST") if rec.get("method") != "POST" else \
                ("invalid_url", f"url must be {obj['endpoint']}") if rec.get("url") != obj["endpoint"] else \
                ("missing_required_parameter", "body.model is required") if not body.get("model") else None
            if problem:
                errors.append({"code": problem[0], "message": problem[1], "param": None, "line": n})
            seen.add(cid)
            models.add(body.get("model"))
            inner["lines"].append(rec)
        if len(models) > 1:
            errors.append({"code": "mismatched_model", "message": "all requests must use the same model",
                           "param": None, "line": None})
        return errors[:10]

    def _finish(self, bid: str, status: str, answer: int, absent: bool = False) -> None:
        obj, inner = self.batches[bid], self.internal[bid]
        fault = inner["fault"] or {}
        bad = int(fault.get("count", 0)) if fault.get("kind") == "line_errors" else 0
        unreadable = int(fault.get("count", 0)) if fault.get("kind") == "malformed" else 0
        out, err, done, failed = [], [], 0, 0
        for i, rec in enumerate(inner["lines"]):
            rid = f"req_{bid}_{i}"
            if i >= answer:
                if not absent:
                    err.append({"id": f"batch_req_{bid}_{i}", "custom_id": rec["custom_id"], "response": None,
                                "error": {"code": "batch_expired", "message": "This request could not be executed "
                                          "before the completion window expired."}})
                    failed += 1
                continue
            if i < bad:
                status_code = int(fault.get("status", 500))
                err.append({"id": f"batch_req_{bid}_{i}", "custom_id": rec["custom_id"], "error": None,
                            "response": {"status_code": status_code, "request_id": rid, "body": {"error": {
                                "message": "The server had an error processing your request.", "type": "server_error",
                                "param": None, "code": None}}}})
                failed += 1
                continue
            out.append({"id": f"batch_req_{bid}_{i}", "custom_id": rec["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": rid,
                                     "body": self.answer(rec["body"], malformed=i < unreadable)}})
            done += 1
        now = int(time.time())
        obj["request_counts"] = {"total": len(inner["lines"]), "completed": done, "failed": failed}
        if out:
            obj["output_file_id"] = self.add_file(f"{bid}_output.jsonl", "batch_output", _jsonl(out))["id"]
        if err:
            obj["error_file_id"] = self.add_file(f"{bid}_error.jsonl", "batch_output", _jsonl(err))["id"]
        obj.update(status=status, **{f"{status}_at": now})

    def answer(self, body: dict, malformed: bool = False) -> dict:
        """One line's chat.completion, counted like a realtime answer (fingerprint, tokens)."""
        fp = request_fingerprint(body)
        self.state.receive(fp)
        messages = body.get("messages") or []
        content = scripted_answer(messages, body.get("response_format"), self.rationale_words, self.completion_words)
        if malformed:  # the realtime server's `malformed` fault: an answer in no judge format
            content = "I am sorry, I would rather not grade these texts.\n\nScore somewhere around good-ish."
        p_tok, c_tok = prompt_tokens(messages), count_tokens(content)
        usage = {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}
        self.state.done(fp, 200, None, body.get("model"), usage)
        self.counters["lines_answered"] += 1
        return {"id": "chatcmpl-" + fp[:24], "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"), "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop", "logprobs": None}]}


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in rows)


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


class _BatchHandler(_Handler):
    server: BatchJudgeServer

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _wait(self, seconds: float) -> None:
        if seconds:
            self.server.stopping.wait(seconds)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts, srv = url.path.strip("/").split("/"), self.server
        if url.path == "/_batch_stats":
            with srv.block:
                return self._send(200, {**srv.counters, "batches": list(srv.batches.values()),
                                        "files": len(srv.files)})
        if parts[:1] != ["v1"] or len(parts) < 2 or parts[1] not in ("files", "batches"):
            return super().do_GET()
        if not self._authorised():
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if parts[1] == "files":
            return self._get_file(parts[2:], q)
        with srv.block:
            if len(parts) == 2:
                srv.counters["lists"] += 1
                return self._send(200, _page(sorted(srv.batches.values(), key=lambda b: b["id"], reverse=True), q))
            if parts[2] not in srv.batches:
                return self._error(404, f"No batch found with id '{parts[2]}'.", "not_found")
            srv.counters["retrieves"] += 1
            return self._send(200, srv.retrieve(parts[2]))

    def _get_file(self, rest: list[str], q: dict) -> None:
        srv = self.server
        with srv.block:
            if not rest:
                rows = [f for f in srv.files.values() if not q.get("purpose") or f["purpose"] == q["purpose"]]
                return self._send(200, _page(sorted(rows, key=lambda f: f["id"], reverse=True), q))
            if rest[0] not in srv.files:
                return self._error(404, f"No such File object: {rest[0]}", "not_found")
            if len(rest) == 1:
                return self._send(200, srv.files[rest[0]])
            srv.counters["downloads_started"] += 1
            data = srv.file_data[rest[0]]
        self._wait(srv.download_delay_s)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with srv.block:
            srv.counters["downloads"] += 1

    def do_POST(self) -> None:
        path, srv = urlparse(self.path).path, self.server
        parts = path.strip("/").split("/")
        if path in ("/_batch_faults", "/_batch_release"):
            body = json.loads(self._raw_body() or b"{}")
            with srv.block:
                if path == "/_batch_faults":
                    srv.batch_faults = list(body.get("faults", []))
                else:
                    for inner in srv.internal.values():
                        inner["released"] = True
            return self._send(200, {"ok": True})
        if parts[:1] != ["v1"] or len(parts) < 2 or parts[1] not in ("files", "batches"):
            return super().do_POST()
        raw = self._raw_body()
        if not self._authorised():
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        if parts[1] == "files":
            form = _multipart(self.headers.get("Content-Type", ""), raw)
            name, data = form.get("file", (None, b""))
            purpose = form.get("purpose", (None, b""))[1].decode()
            if purpose != "batch" or not data:
                return self._error(400, "purpose must be batch and file non-empty", "invalid_request_error")
            with srv.block:
                obj = srv.add_file(name or "upload.jsonl", purpose, data)
                srv.counters["uploads"] += 1
                srv.counters["uploaded_bytes"] += len(data)
            self._wait(srv.upload_delay_s)
            return self._send(200, obj)
        with srv.block:
            if len(parts) == 2:
                status, obj = srv.create_batch(json.loads(raw or b"{}"))
                srv.counters["creates"] += status == 200
            elif len(parts) == 4 and parts[3] == "cancel" and parts[2] in srv.batches:
                obj, status = srv.batches[parts[2]], 200
                if obj["status"] in ("validating", "in_progress", "finalizing"):
                    obj.update(status="cancelling", cancelling_at=int(time.time()))
                    srv.counters["cancels"] += 1
            else:
                return self._error(404, f"no route {path}", "not_found")
        self._wait(srv.create_delay_s if len(parts) == 2 else 0.0)
        self._send(status, obj)


def _page(rows: list[dict], q: dict) -> dict:
    """OpenAI's cursor page: `after` an id, at most `limit` rows, `has_more`."""
    if q.get("after"):
        ids = [r["id"] for r in rows]
        rows = rows[ids.index(q["after"]) + 1:] if q["after"] in ids else []
    limit = int(q.get("limit") or 20)
    page = rows[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(rows) > limit}


def main(argv: list[str] | None = None) -> None:
    """`python tests/servers/openai_batch_server.py --port 0` prints its URL and serves (benches)."""
    import argparse

    ap = argparse.ArgumentParser(description="OpenAI Files + Batches test server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--polls-per-status", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    args = ap.parse_args(argv)
    srv = BatchJudgeServer(args.port, polls_per_status=args.polls_per_status).start()
    print(srv.url, flush=True)
    try:
        srv.stopping.wait(args.max_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
