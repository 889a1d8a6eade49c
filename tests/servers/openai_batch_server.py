"""OpenAI Files + Batches on the OpenAI-protocol test server, for batch-mode tests and benches.

Inputs: the endpoints of OpenAI's Batch API as documented (platform.openai.com/docs/api-reference/batch
and /files): POST /v1/files (multipart, purpose=batch), GET /v1/files, GET /v1/files/{id},
GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches (newest first, `after`, `limit`),
GET /v1/batches/{id}, POST /v1/batches/{id}/cancel (also under Azure's /openai/ prefix);
plus the realtime routes of JudgeServer.
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
{"kind": "hold"} (in_progress until /_batch_release), {"kind": "reject"} (fails
validation). Cancel: `cancelling`, then `cancelled` with the first half answered and the
rest absent from both files. `upload_delay_s`, `create_delay_s` and `download_delay_s` keep
a response back after its effect took place, so a kill can land in that window. The state
machine is tests/servers/openai_batch_book.py; this module is its HTTP layer.
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

from tests.servers.openai_batch_book import BatchBook  # noqa: E402
from tests.servers.openai_server import JudgeServer, _Handler  # noqa: E402


class BatchJudgeServer(BatchBook, JudgeServer):
    def __init__(self, port: int = 0, *, polls_per_status: int = 0, max_lines: int = 50_000,
                 max_bytes: int = 200 * 1024 * 1024, upload_delay_s: float = 0.0, create_delay_s: float = 0.0,
                 download_delay_s: float = 0.0, **kwargs):
        super().__init__(port, **kwargs)
        self.RequestHandlerClass = _BatchHandler
        self._init_book(polls_per_status, max_lines, max_bytes)
        self.upload_delay_s, self.create_delay_s, self.download_delay_s = upload_delay_s, create_delay_s, download_delay_s
        self.block = threading.Lock()  # one lock around the batch book


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


class _BatchHandler(_Handler):
    server: BatchJudgeServer

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok and self.path.startswith(("/openai/files", "/openai/batches")):
            self.path = "/v1" + self.path[len("/openai"):]  # Azure OpenAI's paths (?api-version=...)
        return ok

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
