"""Pytest fixtures that start the OpenAI-protocol test server on 127.0.0.1.

Inputs: none (each test configures the server through `judge_server_factory`). Outputs: a
started `JudgeServer` (its `.url` ends in /v1), stopped at teardown. Import these into a
conftest.py: `from tests.servers.fixtures import judge_server, judge_server_factory`.
"""
from __future__ import annotations

import json
import urllib.request

import pytest

from tests.servers.openai_server import JudgeServer
from tests.servers.server_state import Fault, Limits


def get_stats(url: str) -> dict:
    """GET /_stats of a server whose base URL is `url` (…/v1)."""
    root = url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/_stats", timeout=5) as resp:
        return json.loads(resp.read())


def post_control(url: str, path: str, payload: dict) -> None:
    root = url.rsplit("/v1", 1)[0]
    req = urllib.request.Request(root + path, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


@pytest.fixture
def judge_server_factory():
    """Call with JudgeServer keyword arguments (limits=Limits(...), faults=[Fault(...)], …)."""
    started: list[JudgeServer] = []

    def make(**kwargs) -> JudgeServer:
        srv = JudgeServer(**kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def judge_server(judge_server_factory) -> JudgeServer:
    """A server with no limits and no faults."""
    return judge_server_factory()


__all__ = ["judge_server", "judge_server_factory", "get_stats", "post_control", "Fault", "Limits", "JudgeServer"]
