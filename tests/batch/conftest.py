"""Fixtures of the batch-mode tests: the OpenAI Files + Batches test server, real rating shards.

Every test talks to a real HTTP server on 127.0.0.1 (tests/servers/openai_batch_server.py)
through the official openai SDK.
"""
from __future__ import annotations

import json
import urllib.request

import pyarrow as pa
import pytest

from storage.schemas import to_table
from tests.rating.conftest import ANSWERS, QUESTIONS, completion_row
from tests.servers.openai_batch_server import BatchJudgeServer


@pytest.fixture
def batch_server_factory():
    started: list[BatchJudgeServer] = []

    def make(**kwargs) -> BatchJudgeServer:
        srv = BatchJudgeServer(**kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def batch_server(batch_server_factory) -> BatchJudgeServer:
    return batch_server_factory()


def control(url: str, path: str, payload: dict | None = None) -> dict:
    """POST (payload given) or GET a control route of the server whose base URL is `url`."""
    root = url.rsplit("/v1", 1)[0]
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(root + path, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def shard() -> tuple[pa.Table, pa.Table]:
    """(instructions, completions): three instructions (one from TruthfulQA), four completions each."""
    comps = [completion_row(q["prompt_id"], i, a) for q, answers in zip(QUESTIONS, ANSWERS)
             for i, a in enumerate(answers)]
    return to_table(QUESTIONS, "instructions"), to_table(comps, "completions")
