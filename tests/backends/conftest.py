"""Fixtures of the HTTP judge tests: the real local test server and fresh limiters.

Every test here talks to a real server on 127.0.0.1 (tests/servers/openai_server.py); time
is scaled through the server's and the limiter's `window_s` so each test takes seconds.
"""
from __future__ import annotations

import pytest

from tasks.backends.limiter import reset_limiters


@pytest.fixture(autouse=True)
def _fresh_limiters():
    """Limiters are process-wide by design; tests must not inherit each other's state."""
    reset_limiters()
    yield
    reset_limiters()
