"""The sampling stage through Prefect: shards, caching across runs, quota changes, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.cli import status_data
from flows.config import load_config
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tasks.errors import InputError
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def _mtimes(out):
    sample = os.path.join(out, "sample")
    return {f: os.stat(os.path.join(sample, f)).st_mtime_ns for f in os.listdir(sample) if f.endswith(".parquet")}


def test_second_run_rewrites_nothing_and_quota_change_rewrites_only_changed_shards(prefect_harness, tmp_path):
    out = str(tmp_path / "run")
    cfg = load_config(CFG, ["sources.1.quota=10"], output=out)
    first = ultrafeedback(config=cfg, stages=["sample"])
    assert first["stages"]["sample"]["shards"] == {"written": 7, "kept": 0, "cached": 0, "failed": 0}
    before = _mtimes(out)

    second = ultrafeedback(config=cfg, stages=["sample"])
    assert second["stages"]["sample"]["shards"]["written"] == 0
    assert second["stages"]["sample"]["shards"]["cached"] == 7
    assert _mtimes(out) == before

    # sharegpt 10 -> 11 rows with shard_size 4: only its last shard (rows 8-10) changes
    bigger = load_config(CFG, ["sources.1.quota=11"], output=out)
    third = ultrafeedback(config=bigger, stages=["sample"])
    assert third["stages"]["sample"]["shards"] == {"written": 1, "kept": 0, "cached": 6, "failed": 0}
    changed = {f for f, t in _mtimes(out).items() if before.get(f) != t}
    assert changed == {"sharegpt-00002.parquet"}


def test_deleted_shard_is_recomputed_despite_prefect_cache(prefect_harness, tmp_path):
    out = str(tmp_path / "run")
    cfg = load_config(CFG, output=out)
    ultrafeedback(config=cfg, stages=["sample"])
    os.remove(os.path.join(out, "sample", "flan-00000.parquet"))
    again = ultrafeedback(config=cfg, stages=["sample"])
    assert again["stages"]["sample"]["shards"]["written"] == 1
    assert ShardStore(out).incomplete("sample") == []


def test_shards_content_and_status(prefect_harness, tmp_path):
    out = str(tmp_path / "run")
    ultrafeedback(config=load_config(CFG, output=out), stages=["sample"])
    store = ShardStore(out)
    rows = [r for ref in store.refs("sample") for r in store.read_shard(ref).to_pylist()]
    counts = {}
    for r in rows:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    assert counts == {"truthful_qa": 3, "sharegpt": 3, "ultrachat": 3, "evol_instruct": 3, "flan": 3}
    assert len({r["prompt_id"] for r in rows}) == 15
    assert all(r["correct_answers"] for r in rows if r["source"] == "truthful_qa")
    status = status_data(out)["stages"]["sample"]
    assert status["counts"] == {"done": 5} and status["rows"] == 15
    manifest = store.read_manifest()
    assert manifest["summary"]["stages"]["sample"]["sources"]["sharegpt"]["selected"] == 3


def test_corrupted_source_row_fails_before_writing(prefect_harness, tmp_path, data_dir):
    bad = tmp_path / "evol.jsonl"
    lines = (data_dir / "evol_instruct" / "WizardLM_testset.jsonl").read_text().splitlines()
    lines[41] = lines[41][:30]  # cut a record in half
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    cfg = load_config(CFG, [f"sources.3.path={bad}"], output=str(out))
    with pytest.raises(InputError, match=r"evol.jsonl: line 42: invalid JSON"):
        ultrafeedback(config=cfg, stages=["sample"])
    assert not (out / "sample").exists() or not list((out / "sample").glob("*.parquet"))


def test_cli_run_status_and_error(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli"]
    run = subprocess.run(cmd + ["run", "--config", CFG, "--out", str(out), "--stages", "sample"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    status = subprocess.run(cmd + ["status", "--out", str(out), "--json"], capture_output=True, text=True, env=env)
    data = json.loads(status.stdout)
    assert data["stages"]["sample"]["counts"] == {"done": 5}
    bad = subprocess.run(cmd + ["run", "--config", CFG, "--out", str(out), "--set", "sources.2.quota=9999"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert "sources.2.quota: ultrachat asks for 9999 rows" in bad.stderr
    assert "Traceback" not in bad.stderr
