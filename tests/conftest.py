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


# Parallel runs (pytest-xdist, `-n 2 --dist loadgroup`, as scripts/test.sh runs them): a test
# module stays on one worker, so its module-scoped servers start once; every test that starts
# a CPU vLLM engine shares one group, so two engines never compete for the cores (their start-up
# timeouts assume a core or two each), and that group is handed out first because it is the
# longest. Without xdist the marks do nothing.
HEAVY_FIRST = "vllm"


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = HEAVY_FIRST if item.get_closest_marker("vllm") else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: not item.get_closest_marker("vllm"))  # stable: the rest keep their order
