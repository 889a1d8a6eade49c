"""Forced shard failures and backfills through Prefect (temporary API), and the CLI.

The scripted config runs all four stages on in-process backends, so the whole pipeline
takes seconds and its requests can be counted from the stages' summaries.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.backfill import backfill
from flows.cli import status_data
from flows.faults import FAULT_ENV
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tests.deployments.helpers import SCRIPTED, expected_requests, published_tables, scripted, shard_mtimes

FAILED = "sharegpt-00000"


def _artifacts(flow_run_id):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_failed_shard_then_backfill_equals_a_clean_run_and_resends_only_that_shard(prefect_harness, tmp_path,
                                                                                    monkeypatch):
    clean_cfg, cfg = scripted(tmp_path / "clean"), scripted(tmp_path / "broken")
    ultrafeedback(config=clean_cfg)

    monkeypatch.setenv(FAULT_ENV, f"sample:{FAILED}")
    state = ultrafeedback(config=cfg, return_state=True)
    monkeypatch.delenv(FAULT_ENV)
    # the run ends Failed after every other shard finished, and says which shard failed
    assert state.is_failed() and f"1 shard(s) failed (sample:{FAILED})" in state.message
    first = state.result(raise_on_failure=False)
    assert first["failed"] == {"sample": [FAILED]}
    assert first["stages"]["sample"]["shards"] == {"written": 4, "kept": 0, "cached": 0, "failed": 1}
    assert all(first["stages"][s]["shards"]["failed"] == 0 for s in ("generate", "rate", "assemble"))
    store = ShardStore(cfg.output)
    sample = status_data(cfg.output)["stages"]["sample"]["shards"]
    assert sample[FAILED]["state"] == "failed" and "InjectedFault" in sample[FAILED]["error"]
    assert FAILED not in store.plan("generate")  # nothing downstream of the failed shard

    # artifacts on the flow run: a progress bar per stage, the shard table, the summary
    arts = _artifacts(state.state_details.flow_run_id)
    progress = sorted(a.description.split(":")[0] for a in arts if a.type == "progress")
    assert progress == sorted(["sample", "generate", "rate", "assemble"])
    assert all(a.data == 100 for a in arts if a.type == "progress")
    keys = {a.key: a for a in arts if a.key}
    table = json.loads(keys["scripted-shard-states"].data)
    assert {"stage": "sample", "shard": FAILED, "state": "failed"}.items() <= next(
        r for r in table if r["shard"] == FAILED and r["stage"] == "sample").items()
    assert f"`sample:{FAILED}` failed: InjectedFault" in keys["scripted-run-summary"].data

    before = {s: shard_mtimes(cfg.output, s) for s in ("sample", "generate", "rate")}
    result = backfill(output=cfg.output)
    assert result["stages_run"] == ["sample", "generate", "rate", "assemble"]
    assert result["unfinished_before"]["sample"] == [FAILED]
    assert result["backfilled"]["sample"] == [FAILED] and result["still_unfinished"] == {}
    summary = result["summary"]["stages"]
    for stage in ("sample", "generate", "rate", "assemble"):
        c = summary[stage]["shards"]
        assert c["written"] == 1 and c["failed"] == 0, (stage, c)
    rows = store.done("sample", FAILED).rows
    want = expected_requests(cfg, rows)
    assert sum(e["requests"] for e in summary["generate"]["engines"]) == want["generate"]
    assert summary["rate"]["requests_sent_this_run"] == want["rate"]
    for stage, mtimes in before.items():  # every other shard is untouched
        after = shard_mtimes(cfg.output, stage)
        assert {f: t for f, t in after.items() if f != f"{FAILED}.parquet"} == mtimes, stage
    assert store.incomplete("sample") == [] and ShardStore(cfg.output).read_manifest()["summary"]["stages"]

    clean, mine = published_tables(clean_cfg.output), published_tables(cfg.output)
    assert sorted(clean) == sorted(mine) and len(clean) >= 5
    for name in clean:
        assert clean[name].equals(mine[name]), name

    again = backfill(output=cfg.output)
    assert again["stages_run"] == [] and again["summary"] is None


def test_backfill_of_named_shards_leaves_the_others_for_later(prefect_harness, tmp_path, monkeypatch):
    cfg = scripted(tmp_path / "run")
    monkeypatch.setenv(FAULT_ENV, f"sample:{FAILED},sample:flan-00000")
    assert ultrafeedback(config=cfg, stages=["sample"], return_state=True).is_failed()
    monkeypatch.delenv(FAULT_ENV)
    store = ShardStore(cfg.output)
    assert store.incomplete("sample") == ["flan-00000", FAILED]
    done_before = shard_mtimes(cfg.output, "sample")

    result = backfill(output=cfg.output, shards=["flan-00000"])
    assert result["stages_run"] == ["sample"]
    assert result["backfilled"] == {"sample": ["flan-00000"]} and result["still_unfinished"] == {}
    assert result["summary"]["stages"]["sample"]["shards"] == {"written": 1, "kept": 0, "cached": 3, "failed": 0,
                                                               "held": 1}
    states = store.shard_states("sample")
    assert states["flan-00000"]["state"] == "done"
    # held back, not run: it keeps the error of the run that failed it
    assert states[FAILED]["state"] == "failed" and "InjectedFault" in states[FAILED]["error"]
    after = shard_mtimes(cfg.output, "sample")
    assert {f: t for f, t in after.items() if f != "flan-00000.parquet"} == done_before

    result = backfill(output=cfg.output, stages=["sample"])
    assert result["backfilled"] == {"sample": [FAILED]} and store.incomplete("sample") == []


def test_cli_backfill_exit_codes(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "run"
    # the commands talk to the session's test API instead of each starting a temporary one
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), FAULT_ENV: f"sample:{FAILED}"}
    cmd = [sys.executable, "-m", "flows.cli"]
    run = subprocess.run(cmd + ["run", "--config", SCRIPTED, "--out", str(out), "--stages", "sample"],
                         capture_output=True, text=True, env=env, timeout=300)
    # the run keeps the other shards but exits 1 and names the command that finishes it
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"finish the run with: ultrafeedback backfill --out {out}" in run.stderr
    assert status_data(str(out))["stages"]["sample"]["counts"] == {"done": 4, "failed": 1}

    # the fault is still injected: the shard fails again and the command says so
    still = subprocess.run(cmd + ["backfill", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert still.returncode == 1, still.stderr[-2000:]
    assert f"1 shards still unfinished: {{'sample': ['{FAILED}']}}" in still.stderr

    env.pop(FAULT_ENV)
    bad = subprocess.run(cmd + ["backfill", "--out", str(out), "--shards", "nope-00000"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "shards: ['nope-00000'] are not shards of this run" in bad.stderr
    assert "Traceback" not in bad.stderr
    ok = subprocess.run(cmd + ["backfill", "--out", str(out), "--stages", "sample"], capture_output=True, text=True,
                        env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["backfilled"] == {"sample": [FAILED]}
    assert status_data(str(out))["stages"]["sample"]["counts"] == {"done": 5}


@pytest.mark.parametrize("spec", ["sample", "sample:"])
def test_a_malformed_fault_spec_fails_the_cli_before_any_work(tmp_path, spec):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), FAULT_ENV: spec}
    run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", SCRIPTED, "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "UF_FAIL_SHARDS" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()
