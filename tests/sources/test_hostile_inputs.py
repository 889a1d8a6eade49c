"""Hostile source files and configs: a clear error or a counted skip, never a bare traceback."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.config import ConfigError, load_config, validate_config
from tasks.errors import InputError
from tasks.sources.config import SamplingConfig, SourceConfig
from tasks.sources.sampling import select
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG
FORMATS = {
    "truthful_qa": "x.csv", "false_qa": "x.csv", "flan": "x.tsv", "sharegpt": "x.json",
    "ultrachat": "x.jsonl", "evol_instruct": "x.jsonl", "jsonl": "x.jsonl", "csv": "x.csv",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _run(tmp_path, fmt, content: bytes):
    path = tmp_path / FORMATS[fmt]
    path.write_bytes(content)
    src = SourceConfig(name="s", format=fmt, path=str(path), quota="all",
                       instruction_column="q" if fmt in ("jsonl", "csv") else None)
    try:
        sel = select([src], SamplingConfig(), seed=0, shard_size=8)
    except InputError as exc:
        assert path.name in str(exc)  # the message names the file
        return None
    # whatever was accepted is well formed and accounted for
    c = sel.counts["s"]
    assert c["selected"] == len(sel.rows) == c["available"]
    assert all(r["instruction"] and isinstance(r["instruction"], str) for r in sel.rows)
    return sel


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300))
def test_random_bytes(tmp_path, fmt, content):
    _run(tmp_path, fmt, content)


@pytest.mark.parametrize("fmt", ["sharegpt", "ultrachat", "evol_instruct", "jsonl"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, max_size=5), as_array=st.booleans())
def test_wrong_json_types(tmp_path, fmt, records, as_array):
    text = json.dumps(records) if as_array else "\n".join(json.dumps(r) for r in records)
    _run(tmp_path, fmt, text.encode())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=1, max_value=5), dup=st.booleans())
def test_huge_rows_and_duplicate_ids(tmp_path, n, dup):
    rows = [{"q": "same question" if dup else f"question {i}", "id": "1"} for i in range(n)]
    rows.append({"q": "y" * 200_000, "id": "1"})
    content = "\n".join(json.dumps(r) for r in rows).encode()
    sel = _run(tmp_path, "jsonl", content)
    assert sel is not None
    assert sel.counts["s"]["too_long"] == 1
    assert sel.counts["s"]["duplicate"] == (n - 1 if dup else 0)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["seed", "shard_size", "sources.0.quota", "sources.1.format", "sampling.max_chars",
                            "sampling.decontamination.ngram", "generation.k", "name", "sources.0.name",
                            "rating.temperature", "publish"]),
       value=json_values)
def test_config_values_of_any_type(key, value):
    try:
        load_config(CFG, [f"{key}={json.dumps(value)}"])
    except ConfigError as exc:
        assert key.split(".")[0] in str(exc)


@settings(max_examples=40, deadline=None)
@given(raw=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_arbitrary_parameter_dicts(raw):
    with pytest.raises(ConfigError):
        validate_config(raw)


HOSTILE_FILES = {
    "invalid UTF-8": (b'{"Instruction": "fine"}\n{"Instruction": "bad \xff\xfe"}\n', "line 2: invalid UTF-8"),
    "empty file": (b"", "file is empty"),
    "wrong types": (b'{"Instruction": "fine"}\n{"Instruction": ["a", "list"]}\n', "row 2: instruction is list"),
}


@pytest.mark.server
@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_the_cli_names_the_file_and_writes_nothing(prefect_api, tmp_path, case):  # noqa: F811
    """End to end: exit code 2, one line naming the file and row, no traceback, no shard."""
    import subprocess
    import sys
    from pathlib import Path

    content, message = HOSTILE_FILES[case]
    bad = tmp_path / "evol.jsonl"
    bad.write_bytes(content)
    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", CFG, "--out", str(out),
                           "--set", f"sources.3.path={bad}", "--set", "sources.3.quota=1", "--no-progress"],
                          cwd=root, env=prefect_api.env(PYTHONPATH=str(root)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()
    assert any(line.startswith("ultrafeedback: error: ") and str(bad) in line and message in line for line in last)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert not list(out.rglob("*.parquet"))
