"""Shard store on local folders and fsspec URLs: atomic writes, markers, plans, states."""
from __future__ import annotations

import pyarrow as pa
import pytest

from storage.schemas import SchemaError, to_table
from storage.shards import ShardStore, table_hash


def _rows(n=3):
    return [{"prompt_id": f"p{i}", "source": "s", "source_format": "jsonl", "instruction": f"q{i}",
             "correct_answers": [], "incorrect_answers": [], "reference_answer": None, "false_premise": None,
             "task": None, "source_file": "f.jsonl", "source_row": i} for i in range(n)]


@pytest.mark.parametrize("root", ["memory://store-test", "LOCAL"])
def test_write_read_marker_and_states(root, tmp_path):
    store = ShardStore(str(tmp_path / "out") if root == "LOCAL" else root)
    table = to_table(_rows(), "instructions")
    store.write_plan("sample", {"a-00000": "k1", "a-00001": "k2", "a-00002": "k3"})
    ref = store.write_shard("sample", "a-00000", table, "instructions", key="k1")
    store.write_shard("sample", "a-00001", table, "instructions", key="old")
    store.mark_failed("sample", "a-00002", "RuntimeError: boom")
    assert ref.rows == 3 and ref.sha256 == table_hash(table)
    assert store.read_shard(ref).equals(table)
    states = store.shard_states("sample")
    assert {k: v["state"] for k, v in states.items()} == {"a-00000": "done", "a-00001": "stale", "a-00002": "failed"}
    assert states["a-00002"]["error"] == "RuntimeError: boom"
    assert store.incomplete("sample") == ["a-00001", "a-00002"]
    manifest = store.write_manifest({"summary": {"x": 1}})
    assert manifest["stages"]["sample"]["a-00000"]["rows"] == 3
    assert store.read_manifest()["summary"] == {"x": 1}
    leftovers = [p for p in store.fs.find(store.base) if ".tmp-" in p]
    assert leftovers == []


def test_shard_without_marker_is_incomplete(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_plan("sample", {"a": "k"})
    store.write_shard("sample", "a", to_table(_rows(), "instructions"), "instructions", key="k")
    store.invalidate("sample", "a")
    assert store.done("sample", "a") is None
    assert store.incomplete("sample") == ["a"]


def test_failed_marker_cleared_by_a_successful_write(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_plan("sample", {"a": "k"})
    store.mark_failed("sample", "a", "x")
    store.write_shard("sample", "a", to_table(_rows(), "instructions"), "instructions", key="k")
    assert store.shard_states("sample")["a"]["state"] == "done"


def test_content_hash_depends_on_values_only():
    a = to_table(_rows(), "instructions")
    b = pa.concat_tables([a.slice(0, 1), a.slice(1)])
    assert table_hash(a) == table_hash(b)
    assert table_hash(a) != table_hash(to_table(_rows(2), "instructions"))


def test_schema_rejects_malformed_rows_with_column_and_row():
    rows = _rows()
    rows[1]["source_row"] = "seven"
    with pytest.raises(SchemaError, match=r"row 1, column 'source_row'"):
        to_table(rows, "instructions")
    rows = _rows()
    rows[2]["prompt_id"] = None
    with pytest.raises(SchemaError, match=r"column 'prompt_id' is null in row 2"):
        to_table(rows, "instructions")
    with pytest.raises(SchemaError, match="lack columns"):
        to_table([{"prompt_id": "x"}], "instructions")


def test_content_hash_ignores_where_a_slice_came_from():
    big = to_table(_rows(5), "instructions")
    small = to_table(_rows(2), "instructions")
    assert table_hash(big.slice(0, 2)) == table_hash(small)


def test_a_local_store_keeps_logs_beside_the_run_and_a_remote_one_in_a_local_temp_folder(tmp_path):
    import tempfile

    local = ShardStore(str(tmp_path / "out"))
    assert local.is_local() and local.protocol == "file"
    assert local.log_dir() == str(tmp_path / "out" / "logs")
    assert local.url(local.shard_path("sample", "a")) == str(tmp_path / "out" / "sample" / "a.parquet")
    remote = ShardStore("memory://logs-test/run")
    assert not remote.is_local() and remote.protocol == "memory"
    assert remote.log_dir() == f"{tempfile.gettempdir()}/ultrafeedback-logs"
    assert remote.url(remote.shard_path("sample", "a")) == "memory://logs-test/run/sample/a.parquet"
