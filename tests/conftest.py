"""Shared fixtures: paths of the bundled real data and one Prefect test server per session.

The Prefect fixture is opt-in (`prefect_harness`): tests of pure logic never pay for it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import DATA, FIXTURES, SCRIPTED_CONFIG

# The servers' fixtures (judge_server, judge_server_factory, prefect_server, ...) for every test.
pytest_plugins = ["tests.servers.fixtures", "tests.servers.prefect_server"]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def scripted_config() -> str:
    """The scripted run config: instant in-process backends, the bundled real sources."""
    return SCRIPTED_CONFIG


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (SQLite) for flow tests, started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
