"""The batch book of the OpenAI Batch API test server: files, batches and their progression.

Inputs: uploads, batch creations, retrieves and cancels from the HTTP layer
(tests/servers/openai_batch_server.py, which documents the behaviour), scheduled batch
faults. Outputs: file and batch objects in OpenAI's documented shapes, output and error
files, answers from the scripted judge counted in the server's ServerState. Not
thread-safe on its own: the HTTP layer holds `block` around every call.
"""
from __future__ import annotations

import json
import time

from tests.servers.openai_server import count_tokens, prompt_tokens
from tests.servers.scripted import scripted_answer
from tests.servers.server_state import request_fingerprint

_STEPS = ["validating", "in_progress", "finalizing", "completed"]


class BatchBook:
    """Mixed into the test server (it provides `state`, `rationale_words`, `completion_words`)."""

    def _init_book(self, polls_per_status: int, max_lines: int, max_bytes: int) -> None:
        self.polls_per_status, self.max_lines, self.max_bytes = polls_per_status, max_lines, max_bytes
        self.files: dict[str, dict] = {}
        self.file_data: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.internal: dict[str, dict] = {}
        self.batch_faults: list[dict] = []
        self.counters = {"uploads": 0, "creates": 0, "retrieves": 0, "lists": 0, "downloads": 0, "cancels": 0,
                         "downloads_started": 0, "lines_answered": 0, "uploaded_bytes": 0}

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


