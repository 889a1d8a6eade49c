"""Cache-key code versions: a module named by its dotted name hashes as the module itself,
and importing the flow does not import what only the assemble and audit tasks need."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from storage.keys import _source, artifact_key, code_version
from tests.paths import ROOT


def test_a_module_by_name_hashes_as_the_imported_module():
    import tasks.assemble.plots
    import tasks.audit.stats

    assert _source("tasks.audit.stats") == _source(tasks.audit.stats)
    by_name = code_version("tasks.audit.stats", "tasks.assemble.plots")
    assert by_name == code_version(tasks.audit.stats, tasks.assemble.plots)
    assert by_name != code_version("tasks.assemble.plots", "tasks.audit.stats")  # order is part of the key


def test_an_unknown_module_name_is_an_error():
    with pytest.raises(ModuleNotFoundError):
        code_version("tasks.no_such_module")


def test_artifact_keys_are_slugs_of_the_run_name():
    assert artifact_key("My Run (v2)", "run-summary") == "my-run-v2-run-summary"
    assert artifact_key("***", "x") == "ultrafeedback-x"


def test_importing_the_flow_leaves_the_heavy_libraries_to_their_tasks():
    # Every CLI run, worker flow run and Dask worker imports the flow; these took ~2.5 s of CPU.
    code = ("import sys, flows.ultrafeedback, flows.backfill, flows.cli; "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'scipy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
