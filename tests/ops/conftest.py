"""Fixtures of the operations tests: a real Prefect server per module (for tests marked
`server`) and the OpenAI-protocol test server (`judge_server_factory`). The `dask` marker
(a local Dask cluster runs the flow) is declared here so the marker list in pyproject stays
the project's."""
from __future__ import annotations

from tests.servers.fixtures import judge_server_factory  # noqa: F401  (pytest fixture)
from tests.servers.prefect_server import prefect_server  # noqa: F401  (pytest fixture)


def pytest_configure(config):
    config.addinivalue_line("markers", "dask: runs the flow on a local Dask cluster (prefect-dask)")
