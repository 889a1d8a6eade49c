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



# Parallel runs (pytest-xdist, `-n 3` as scripts/test.sh runs them): a test module stays on
# one worker, so its module-scoped servers start once, and every module that starts a CPU
# vLLM engine shares one worker, so two engines never compete for the cores (their start-up
# timeouts assume a core or two each); the longest modules go first (LONGEST).
# The scheduler sees only test ids, so the vLLM modules are known by name: a test marked
# `vllm` must live in a file whose name contains "vllm" (collection fails otherwise).
# xdist's own `--dist loadgroup` cannot be used: with pytest 9.2 it no longer groups
# (pytest-xdist issue #1386: it still writes the removed `Node._nodeid`).
VLLM_SCOPE = "vllm"


def xdist_scope(nodeid: str) -> str:
    """The worker-affinity scope of a test id: its module, or "vllm" for the engine modules."""
    path = nodeid.split("::", 1)[0]
    return VLLM_SCOPE if VLLM_SCOPE in path.rsplit("/", 1)[-1] else path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    # xdist hands scopes out by their number of tests unless told not to (its
    # `--loadscope-reorder` is on by default), which put the long server modules, a few tests
    # each, and the vLLM scope at the end of the queue: this order (LONGEST) is the one to keep.
    config.option.loadscopereorder = False

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    stray = [i.nodeid for i in items if i.get_closest_marker("vllm") and xdist_scope(i.nodeid) != VLLM_SCOPE]
    if stray:
        raise pytest.UsageError(f"tests marked vllm outside a *vllm* file (they would run beside another engine): {stray}")
    items.sort(key=lambda item: _rank(xdist_scope(item.nodeid)))  # stable: the rest keep their order


# Longest first (seconds in one process on two quiet cores, `--durations`), so that the last
# modules handed out are short ones and no worker finishes long after the others. Only the
# order depends on this list; a module missing from it runs after these.
LONGEST = [
    VLLM_SCOPE,  # ~350 s
    "tests/storage/test_s3_pipeline.py",  # 121 s
    "tests/deployments/test_server.py",  # 70 s
    "tests/flows/test_backfill_flow.py",  # 53 s
    "tests/faults/test_kill_resume.py",  # 51 s
    "tests/deployments/test_ui_browser.py",  # 51 s
    "tests/faults/test_fault_matrix.py",  # 44 s
    "tests/faults/test_fault_matrix_one_endpoint.py",  # 41 s
    "tests/sources/test_hostile_inputs.py",  # 33 s
    "tests/batch/test_anthropic.py",  # 32 s
    "tests/faults/test_fault_matrix_generation.py",  # 32 s
    "tests/flows/test_sample_flow.py",  # 29 s
    "tests/backends/test_openai_http_judge.py",  # 29 s
    "tests/flows/test_cli_server.py",  # 28 s
    "tests/generation/test_elastic_flow.py",  # 27-53 s under load
    "tests/faults/test_secrets.py",  # 22 s
]


def _rank(scope: str) -> int:
    return LONGEST.index(scope) if scope in LONGEST else len(LONGEST)
